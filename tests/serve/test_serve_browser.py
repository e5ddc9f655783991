"""The page in a real headless Chromium (Debian's `chromium`, driven by Playwright; no browser is downloaded): it
shows the model card, uploads a test image, and shows the right label. A screenshot is saved as a test artifact."""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
playwright_api = pytest.importorskip("playwright.sync_api")

from serve_helpers import png_bytes  # noqa: E402

from leanvision.evaluate import predict_files  # noqa: E402
from leanvision.runs import load_run  # noqa: E402
from leanvision.serve import create_app  # noqa: E402

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and Path(p).is_file()), None)


@pytest.fixture(scope="module")
def live_server(serve_run):
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(serve_run, warmup=0), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True  # the same graceful path as SIGTERM
    thread.join(30)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (/usr/bin/chromium); on Debian: apt-get install "
                                             "chromium (.ci/run installs it)")
def test_page_uploads_an_image_and_shows_the_label(live_server, serve_run, digits, tmp_path):
    index = next(i for i in range(len(digits.test.labels)) if int(digits.test.labels[i]) == 7)
    image = tmp_path / "seven.png"
    image.write_bytes(png_bytes(digits.test.images[index, 0].numpy(), "RGB", (140, 140)))  # another size and mode
    (expected,) = predict_files(load_run(serve_run), [str(image)], top_k=1)
    label = expected["predictions"][0]["class"]
    assert label == "7"  # the model knows this digit, so the page must show the true label
    shot = tmp_path / "serve_page.png"
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 960, "height": 720})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(live_server + "/")
            page.wait_for_selector("#card-list dt")
            assert "compact (fp32, onnxruntime)" in page.inner_text("#subtitle")
            assert "33,338" in page.inner_text("#card-list")
            assert page.get_attribute("#report-link", "href") == "/report"
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#results tbody tr .label", timeout=20_000)
            assert page.get_attribute("#results tbody tr .label", "data-label") == label
            assert "seven.png" in page.inner_text("#results tbody tr")
            assert "server" in page.inner_text("#status") and " ms" in page.inner_text("#status")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert all(url.startswith(live_server) or url.startswith("blob:") for url in requests)  # nothing external
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")
