"""`leanvision serve` in-process: every endpoint and every refusal, through FastAPI's TestClient or httpx on ASGI."""

import asyncio
import json
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("multipart")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import bomb_png, png_bytes  # noqa: E402

from leanvision.cli import main  # noqa: E402
from leanvision.evaluate import predict_files  # noqa: E402
from leanvision.runs import load_run  # noqa: E402
from leanvision.serve import create_app  # noqa: E402


@pytest.fixture(scope="module", params=["fast", "fastapi"])
def client(serve_run, request):
    """POST /predict through the raw ASGI fast path (what uvicorn serves), or through FastAPI's route: every test
    that uses this client checks both give the same answers, refusals and metrics."""
    app = create_app(serve_run, max_batch_size=16, max_body_kb=256)
    if request.param == "fastapi":
        app.fast_predict = None
    with TestClient(app) as c:
        yield c


def metric(text: str, name: str) -> float:
    """Sum of the samples of `name` (with any labels) in a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_same_predictions(got: list[dict], want: list[dict]):
    """Same probabilities, and the same class at every rank whose probability is not tied with another's."""
    probs = [p["probability"] for p in want]
    np.testing.assert_allclose([p["probability"] for p in got], probs, rtol=1e-4, atol=1e-5)
    for i, p in enumerate(want):
        if sum(abs(q - p["probability"]) < 1e-6 for q in probs) == 1:
            assert got[i]["class"] == p["class"], (got, want)


def assert_error(response, status: int, *fragments: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    for fragment in fragments:
        assert fragment.lower() in body["error"].lower(), body["error"]


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_predict_matches_leanvision_predict_on_any_size_and_mode(serve_run, digits, tmp_path, runtime):
    """Multipart files of other sizes, modes and formats get the same top-k as `predict_files` on the same files."""
    files, paths = [], []
    for i, (mode, size, fmt) in enumerate([("L", None, "PNG"), ("RGB", (57, 40), "PNG"), ("RGBA", (90, 90), "PNG"),
                                           ("RGB", (32, 32), "JPEG"), ("L", (20, 28), "BMP"), ("P", None, "GIF")]):
        data = png_bytes(digits.test.images[i, 0].numpy(), mode, size, fmt)
        path = tmp_path / f"{i}.{fmt.lower()}"
        path.write_bytes(data)
        files.append(("files", (path.name, data, f"image/{fmt.lower()}")))
        paths.append(str(path))
    expected = predict_files(load_run(serve_run), paths, top_k=3)
    with TestClient(create_app(serve_run, runtime=runtime)) as client:
        response = client.post("/predict", params={"top_k": 3}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["runtime"] == runtime and body["precision"] == "fp32" and body["server_ms"] > 0
    assert [r["file"] for r in body["results"]] == [p.split("/")[-1] for p in paths]
    for got, want in zip(body["results"], expected):
        assert_same_predictions(got["predictions"], want["predictions"])
        assert got["batch_size"] == 6 and got["model_ms"] > 0 and got["queue_ms"] >= 0


def test_raw_body_and_top_k(client, digits):
    correct = 0
    for i in range(20):
        data = png_bytes(digits.test.images[i, 0].numpy())
        response = client.post("/predict", content=data, headers={"content-type": "image/png"})
        assert response.status_code == 200
        (result,) = response.json()["results"]
        assert result["file"] == "body" and len(result["predictions"]) == 1  # the server's default --top-k 1
        correct += result["predictions"][0]["class"] == digits.classes[int(digits.test.labels[i])]
    assert correct >= 17  # a ~95% model on 20 test digits
    raw = client.post("/predict", params={"top_k": 99}, content=data,
                      headers={"content-type": "application/octet-stream"})
    probs = [p["probability"] for p in raw.json()["results"][0]["predictions"]]
    assert len(probs) == 10 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)


def test_int8_run_is_served_like_predict(int8_serve_run, digits, tmp_path):
    paths = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png_bytes(digits.test.images[i, 0].numpy(), "RGB", (40, 40)))
        paths.append(str(path))
    expected = predict_files(load_run(int8_serve_run), paths, top_k=2)
    with TestClient(create_app(int8_serve_run)) as client:
        card = client.get("/model").json()
        response = client.post("/predict?top_k=2", files=[("files", open(p, "rb")) for p in paths])
    assert card["precision"] == "int8" and card["file"] == "model.onnx" and card["techniques"]
    assert response.status_code == 200
    for got, want in zip(response.json()["results"], expected):
        assert_same_predictions(got["predictions"], want["predictions"])


def test_model_card_health_ready_page_report_docs(client, serve_run):
    card = client.get("/model").json()
    result = json.loads((serve_run / "result.json").read_text())
    assert card["name"] == "compact" and card["classes"] == [str(i) for i in range(10)]
    assert card["input_shape"] == [1, 28, 28] and card["params"] == 33_338 and card["macs"] == 2_371_456
    assert card["file"] == "best.safetensors" and card["file_bytes"] == (serve_run / "best.safetensors").stat().st_size
    assert card["accuracy"] == result["test_accuracy"] and card["accuracy_images"] == result["test_total"]
    assert card["runtime"] == "onnxruntime" and card["precision"] == "fp32" and card["max_batch_size"] == 16
    assert card["study_report"] == "/report"
    report = client.get("/report")
    assert report.status_code == 200 and "study report (test)" in report.text
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/predict" in page.text and "http://" not in page.text and "https://" not in page.text  # works offline
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/model", "/health", "/ready", "/metrics"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_no_report_outside_a_study(int8_serve_run):
    with TestClient(create_app(int8_serve_run)) as client:
        assert client.get("/model").json()["study_report"] is None
        assert_error(client.get("/report"), 404, "study")


def test_metrics_count_requests_errors_batches_and_latency(client, digits):
    before = client.get("/metrics").text
    data = png_bytes(digits.test.images[0, 0].numpy())
    client.post("/predict", files=[("files", ("a.png", data, "image/png"))] * 5)
    client.post("/predict", content=b"not an image", headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert metric(text, "leanvision_images_total") - metric(before, "leanvision_images_total") == 5
    assert metric(text, "leanvision_batch_size_sum") - metric(before, "leanvision_batch_size_sum") == 5
    assert 'leanvision_errors_total{reason="not_an_image"}' in text
    assert 'leanvision_requests_total{endpoint="/predict",status="422"}' in text
    for name in ("leanvision_queue_seconds_count", "leanvision_inference_seconds_count",
                 "leanvision_request_latency_seconds_count"):
        assert metric(text, name) > metric(before, name), name


@pytest.mark.parametrize("content, ctype, status, fragment", [
    (b"", "image/png", 422, "empty"),
    (b"hello, not an image", "image/png", 422, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", 422, "not an image"),  # a PNG signature, nothing valid after
    (b"{}", "application/json", 415, "content-type"),
    (b"abc", "", 415, "content-type"),
    (b"--x\r\nbroken", "multipart/form-data; boundary=x", 422, "no file"),
    (b"--x\r\nbroken", "multipart/form-data", 400, "multipart"),  # no boundary
    (b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\ntext\r\n--x--\r\n", "multipart/form-data; boundary=x",
     422, "no file"),
])
def test_bad_bodies_are_one_line_4xx(client, content, ctype, status, fragment):
    headers = {"content-type": ctype} if ctype else {}
    assert_error(client.post("/predict", content=content, headers=headers), status, fragment)


def test_truncated_image_and_bad_parameters(client, digits):
    data = png_bytes(digits.test.images[0, 0].numpy(), size=(200, 200))
    assert_error(client.post("/predict", content=data[: len(data) // 2], headers={"content-type": "image/png"}),
                 422, "cannot be decoded")
    assert_error(client.post("/predict?top_k=0", content=data, headers={"content-type": "image/png"}), 422, "top_k")
    assert_error(client.post("/predict?top_k=x", content=data, headers={"content-type": "image/png"}), 422, "top_k")
    assert_error(client.post("/predict", content=data, headers={"content-type": "image/png", "content-length": "x1"}),
                 400, "content-length")
    assert_error(client.get("/predict"), 405)
    assert_error(client.get("/nowhere"), 404)


def test_too_many_files_and_a_model_error_are_answered_per_request(serve_run, digits):
    good = png_bytes(digits.test.images[0, 0].numpy())
    with TestClient(create_app(serve_run, max_files=3, warmup=0)) as client:
        assert_error(client.post("/predict", files=[("files", ("a.png", good, "image/png"))] * 4), 413, "at most 3")
        infer = client.app.state.batcher.infer

        def broken(images):  # a runtime error (torch raises RuntimeError) on a marked image only
            if (images[:, 0, 0, 0] == 77).any():
                raise RuntimeError("the runtime broke")
            return infer(images)

        client.app.state.batcher.infer = broken
        marked = digits.test.images[0, 0].numpy().copy()
        marked[0, 0] = 77
        assert_error(client.post("/predict", content=png_bytes(marked), headers={"content-type": "image/png"}),
                     500, "the runtime broke")
        assert client.post("/predict", content=good, headers={"content-type": "image/png"}).status_code == 200
        assert client.get("/ready").status_code == 200


def test_one_bad_file_fails_its_request_only(client, digits):
    good = png_bytes(digits.test.images[0, 0].numpy())
    response = client.post("/predict", files=[("files", ("ok.png", good, "image/png")),
                                              ("files", ("bad.png", b"GIF89a junk", "image/png"))])
    assert_error(response, 422, "bad.png")
    assert client.post("/predict", content=good, headers={"content-type": "image/png"}).status_code == 200


def asgi_post(app, headers: dict[str, str], chunks: int, chunk_bytes: int = 65536) -> tuple[int, dict, int]:
    """POST /predict straight to the ASGI app, the body streamed in `chunks` pieces; returns (status, JSON body,
    pieces the app asked for)."""
    asked, sent = [0], []

    async def receive():
        if asked[0] >= chunks:
            return {"type": "http.disconnect"}
        asked[0] += 1
        return {"type": "http.request", "body": b"\x00" * chunk_bytes, "more_body": asked[0] < chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), asked[0]


def test_oversized_body_refused_before_it_is_read(client):
    """64 MB offered in 64 kB pieces to a 256 kB limit: without Content-Length the app stops right after the limit;
    with it, before reading anything."""
    app, limit = client.app, 256 * 1024
    status, body, asked = asgi_post(app, {"content-type": "image/png"}, chunks=1000)
    assert status == 413 and "over the limit" in body["error"]
    assert asked == limit // 65536 + 1
    status, body, asked = asgi_post(app, {"content-type": "image/png", "content-length": str(1000 * 65536)}, 1000)
    assert status == 413 and "65,536,000 bytes" in body["error"]
    assert asked == 0
    assert_error(client.post("/predict", files=[("files", ("big.png", b"\x00" * (limit + 1), "image/png"))]), 413)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns at open for 144 MP
@pytest.mark.parametrize("size", [(5000, 5000), (12000, 12000), (20000, 20000)])
def test_decompression_bombs_refused_without_decoding(client, monkeypatch, size):
    """25 MP (over the 16 MP limit), 144 MP (over Pillow's warning limit) and 400 MP (over Pillow's error limit)
    PNGs of a few kB: refused from the header; no pixel is decoded, so no memory is allocated for them."""
    from PIL import ImageFile

    loads = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or original(self))
    data = bomb_png(*size)
    assert len(data) < 256 * 1024
    response = client.post("/predict", content=data, headers={"content-type": "image/png"})
    assert_error(response, 413, "pixels" if size[0] < 20000 else "decompression bomb")
    assert loads == []


def _run(coro):
    return asyncio.run(coro)


async def _lifespan_client(app):
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve")


def test_overload_gets_503_quickly_and_shutdown_drains_in_flight(serve_run, digits):
    """With --max-concurrency 1 and the model held busy, a second request gets 503 + Retry-After at once; shutting
    down while the first is in flight still answers it (200), and /ready turns 503 during the drain."""
    app = create_app(serve_run, max_concurrency=1, warmup=0)
    gate, entered = threading.Event(), threading.Event()
    infer = app.state.batcher.infer

    def held(images):
        entered.set()
        gate.wait(30)
        return infer(images)

    data = png_bytes(digits.test.images[0, 0].numpy())
    headers = {"content-type": "image/png"}

    async def run():
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        app.state.batcher.infer = held
        app.state.batcher.inline = False  # held on the model thread, so the event loop keeps answering
        client = await _lifespan_client(app)
        first = asyncio.create_task(client.post("/predict", content=data, headers=headers))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        second = await client.post("/predict", content=data, headers=headers)
        shutdown = asyncio.create_task(ctx.__aexit__(None, None, None))
        await asyncio.sleep(0.05)
        ready = await client.get("/ready")
        assert not shutdown.done()  # draining: waits for the request in flight
        gate.set()
        await shutdown
        return second, ready, await first

    second, ready, first = _run(run())
    assert_error(second, 503, "max-concurrency")
    assert second.headers["retry-after"] == "1"
    assert ready.status_code == 503
    assert first.status_code == 200 and len(first.json()["results"]) == 1


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(serve_run, digits):
    app = create_app(serve_run, max_batch_size=64, max_wait_ms=50, warmup=0)
    images = [png_bytes(digits.test.images[i, 0].numpy()) for i in range(24)]
    bad = {5, 17}

    async def run():
        async with app.router.lifespan_context(app):
            client = await _lifespan_client(app)
            return await asyncio.gather(*[client.post("/predict", content=b"junk" if i in bad else data,
                                                      headers={"content-type": "image/png"})
                                          for i, data in enumerate(images)])

    responses = _run(run())
    sizes = []
    for i, response in enumerate(responses):
        if i in bad:
            assert_error(response, 422, "not an image")
            continue
        assert response.status_code == 200
        (result,) = response.json()["results"]
        sizes.append(result["batch_size"])
    assert max(sizes) > 1  # requests that arrived together shared runtime calls


def test_cli_serve_bad_input_is_one_line(serve_run, tmp_path, capsys, monkeypatch):
    import socket
    import sys

    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", str(serve_run), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "already in use" in err
    assert main(["serve", str(serve_run), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err
    assert main(["serve", str(serve_run), "--runtime", "nope", "--port", "0"]) == 2
    assert "Unknown --runtime" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the serve extra is not installed
    assert main(["serve", str(serve_run)]) == 2
    assert 'pip install "leanvision[serve]"' in capsys.readouterr().err


def test_corrupted_images_of_every_format_never_give_a_5xx(client, digits):
    """Seeded byte flips and truncations of real PNG, JPEG, BMP, GIF and WebP files: a 200 or a one-line 4xx each."""
    rng = np.random.default_rng(0)
    statuses = set()
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP"):
        data = bytearray(png_bytes(digits.test.images[0, 0].numpy(), "RGB", (48, 40), fmt))
        for trial in range(12):
            broken = bytearray(data)
            for i in rng.integers(0, len(broken), size=int(rng.integers(1, 8))):
                broken[i] = int(rng.integers(0, 256))
            if trial % 3 == 0:
                broken = broken[: int(rng.integers(1, len(broken)))]
            response = client.post("/predict", files=[("files", (f"x.{fmt.lower()}", bytes(broken), "image/png"))])
            statuses.add(response.status_code)
            assert response.status_code in (200, 413, 422), (fmt, trial, response.text)
            if response.status_code != 200:
                assert list(response.json()) == ["error"]
    assert 422 in statuses


def test_animated_gif_uses_its_first_frame_like_predict(client, serve_run, digits, tmp_path):
    from PIL import Image

    frames = [Image.fromarray(digits.test.images[i, 0].numpy()) for i in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(tmp_path / "first.png")
    expected, first = predict_files(load_run(serve_run), [str(path), str(tmp_path / "first.png")], top_k=3)
    response = client.post("/predict?top_k=3", content=path.read_bytes(), headers={"content-type": "image/gif"})
    assert response.status_code == 200
    assert_same_predictions(response.json()["results"][0]["predictions"], expected["predictions"])
    assert_same_predictions(expected["predictions"], first["predictions"])  # the first frame, as a still image
