"""POST /predict through the raw ASGI fast path of a real uvicorn server (httptools, uvloop when installed) answers
exactly as FastAPI's route does (the same app with `fast_predict = None`, through TestClient): the same statuses,
headers, error texts, predictions and metrics, for raw bodies, multipart files and every kind of refusal. The
other endpoints still go through FastAPI, and /openapi.json still documents /predict."""

import http.client
import json
import socket
import threading
import time

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import bomb_png, png_bytes  # noqa: E402

from leanvision.serve import create_app  # noqa: E402

SETTINGS = dict(warmup=0, max_body_kb=64, max_files=3, top_k=2)
TIMINGS = ("server_ms", "model_ms", "queue_ms", "batch_size")  # differ from one call to the next


def multipart(files: list[tuple[str, bytes]], boundary: str = "fastpathtest") -> tuple[bytes, str]:
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def servers(serve_run):
    """(port of a uvicorn server whose /predict goes through the fast path, a list counting fast-path calls,
    a TestClient of the same app with the fast path off)."""
    import uvicorn

    app = create_app(serve_run, **SETTINGS)
    calls, fast = [], app.fast_predict

    async def counted(scope, receive, send):
        calls.append(scope["path"])
        await fast(scope, receive, send)

    app.fast_predict = counted
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           http="auto"))  # httptools when installed (the test extra has it)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    reference = create_app(serve_run, **SETTINGS)
    reference.fast_predict = None
    try:
        with TestClient(reference) as client:
            yield port, calls, client
    finally:
        server.should_exit = True
        thread.join(30)


def wire(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def comparable(body: bytes) -> tuple[dict, list[float]]:
    """The JSON answer without the timings and probabilities, and the probabilities (compared with a tolerance:
    runtime calls of other batch sizes may differ in the last bits)."""
    answer, probs = json.loads(body), []
    for key in TIMINGS:
        answer.pop(key, None)
    for result in answer.get("results", []):
        for key in TIMINGS:
            result.pop(key, None)
        for p in result["predictions"]:
            probs.append(p.pop("probability"))
    return answer, probs


def cases(digits) -> list[tuple[str, str, bytes, dict[str, str]]]:
    png = [png_bytes(digits.test.images[i, 0].numpy()) for i in range(4)]
    files, files_type = multipart([("a.png", png[0]), ("b b.png", png[1]), ("c.png", png[2])])
    four, four_type = multipart([(f"{i}.png", p) for i, p in enumerate(png)])
    bad_file, bad_file_type = multipart([("ok.png", png[0]), ("bad.png", b"GIF89a junk")])
    return [
        ("raw png", "/predict", png[0], {"Content-Type": "image/png"}),
        ("raw octet-stream, top_k 3", "/predict?top_k=3", png[1], {"Content-Type": "application/octet-stream"}),
        ("raw RGB JPEG of another size", "/predict?top_k=1",
         png_bytes(digits.test.images[5, 0].numpy(), "RGB", (40, 33), "JPEG"), {"Content-Type": "image/jpeg"}),
        ("multipart, 3 files", "/predict", files, {"Content-Type": files_type}),
        ("multipart, top_k twice (the last wins)", "/predict?top_k=1&top_k=4", files, {"Content-Type": files_type}),
        ("415", "/predict", b"{}", {"Content-Type": "application/json"}),
        ("415 no content type", "/predict", b"abc", {}),
        ("422 not an image", "/predict", b"hello", {"Content-Type": "image/png"}),
        ("422 empty", "/predict", b"", {"Content-Type": "image/png"}),
        ("422 bad top_k", "/predict?top_k=0", png[0], {"Content-Type": "image/png"}),
        ("422 top_k not a number", "/predict?top_k=x1", png[0], {"Content-Type": "image/png"}),
        ("422 one bad file", "/predict", bad_file, {"Content-Type": bad_file_type}),
        ("413 body", "/predict", b"\x00" * (65 * 1024), {"Content-Type": "image/png"}),
        ("413 too many files", "/predict", four, {"Content-Type": four_type}),
        ("413 pixels", "/predict", bomb_png(5000, 5000), {"Content-Type": "image/png"}),
        ("400 multipart without boundary", "/predict", b"--x\r\nbroken", {"Content-Type": "multipart/form-data"}),
        ("422 multipart without file", "/predict", b"--x\r\nbroken",
         {"Content-Type": "multipart/form-data; boundary=x"}),
    ]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_fast_path_answers_as_the_fastapi_route(servers, digits):
    port, calls, client = servers
    before = len(calls)
    for label, path, body, headers in cases(digits):
        status, got_headers, got = wire(port, "POST", path, body, headers)
        want = client.post(path, content=body, headers=headers)
        assert status == want.status_code, (label, got, want.text)
        assert got_headers["content-type"] == want.headers["content-type"] == "application/json", label
        assert got_headers.get("retry-after") == want.headers.get("retry-after"), label
        (got_answer, got_probs), (want_answer, want_probs) = comparable(got), comparable(want.content)
        assert got_answer == want_answer, label
        assert got_probs == pytest.approx(want_probs, abs=1e-5), label
        if status != 200:
            assert list(json.loads(got)) == ["error"] and "\n" not in json.loads(got)["error"], label
    assert len(calls) - before == len(cases(digits))  # every one of them took the fast path


def test_metrics_count_the_fast_path_as_the_route(servers, digits):
    """After the same requests, the two apps' request and error counters agree (metrics are per app)."""
    port, calls, client = servers

    def counters(text: str) -> dict[str, float]:
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(("leanvision_errors_total", 'leanvision_requests_total{endpoint="/predict"',
                                    "leanvision_images_total", 'leanvision_request_latency_seconds_count'
                                                               '{endpoint="/predict"'))}

    png = png_bytes(digits.test.images[0, 0].numpy())
    for body in (png, b"junk", png):
        wire(port, "POST", "/predict", body, {"Content-Type": "image/png"})
        client.post("/predict", content=body, headers={"Content-Type": "image/png"})
    fast = counters(wire(port, "GET", "/metrics")[2].decode())
    route = counters(client.get("/metrics").text)
    assert fast == route
    assert fast['leanvision_requests_total{endpoint="/predict",status="200"}'] >= 2
    assert fast['leanvision_errors_total{reason="not_an_image"}'] >= 1


def test_other_endpoints_go_through_fastapi(servers):
    port, calls, _ = servers
    before = len(calls)
    status, _, body = wire(port, "GET", "/openapi.json")
    spec = json.loads(body)["paths"]["/predict"]["post"]
    assert status == 200 and {"multipart/form-data", "image/png"} <= set(spec["requestBody"]["content"])
    assert spec["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PredictResponse")
    assert wire(port, "GET", "/docs")[0] == 200 and wire(port, "GET", "/model")[0] == 200
    status, _, body = wire(port, "GET", "/predict")
    assert status == 405 and list(json.loads(body)) == ["error"]  # FastAPI's answer to another method
    assert wire(port, "POST", "/predict/", b"x", {"Content-Type": "image/png"})[0] in (307, 404, 405)
    assert len(calls) == before
