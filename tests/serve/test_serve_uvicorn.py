"""`leanvision serve` as a real uvicorn process on 127.0.0.1: concurrent requests are batched and all answered
correctly; oversized bodies are refused over the wire; SIGTERM shuts down cleanly. Bounded: 96 requests, 60 s."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from serve_helpers import png_bytes  # noqa: E402

from leanvision.evaluate import predict_files  # noqa: E402
from leanvision.runs import load_run  # noqa: E402

REQUESTS, THREADS = 96, 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


@pytest.fixture(scope="module")
def server(serve_run, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    env = {**os.environ, "LEANVISION_OFFLINE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "leanvision", "serve", str(serve_run), "--port", str(port),
                                 "--max-wait-ms", "20", "--max-body-kb", "64"], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/ready")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not become ready: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_concurrent_requests_are_batched_and_all_correct(server, serve_run, digits, tmp_path):
    proc, port, _ = server
    images, paths = [], []
    for i in range(REQUESTS):
        data = png_bytes(digits.test.images[i, 0].numpy())
        path = tmp_path / f"{i}.png"
        path.write_bytes(data)
        images.append(data)
        paths.append(str(path))
    expected = [r["predictions"][0]["class"] for r in predict_files(load_run(serve_run), paths, top_k=1)]

    def worker(indices):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # keep-alive, one per thread
        try:
            return [(i, *request(port, "POST", "/predict", images[i], {"Content-Type": "image/png"}, conn))
                    for i in indices]
        finally:
            conn.close()

    with ThreadPoolExecutor(THREADS) as pool:
        chunks = [list(range(t, REQUESTS, THREADS)) for t in range(THREADS)]
        answers = [a for chunk in pool.map(worker, chunks) for a in chunk]
    assert len(answers) == REQUESTS
    batch_sizes = []
    for i, status, body in answers:
        assert status == 200, body
        (result,) = json.loads(body)["results"]
        assert result["predictions"][0]["class"] == expected[i]
        batch_sizes.append(result["batch_size"])
    status, text = request(port, "GET", "/metrics")
    metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.decode().splitlines()
               if line.startswith("leanvision_batch_size_")}
    calls, images_done = metrics["leanvision_batch_size_count"], metrics["leanvision_batch_size_sum"]
    assert images_done >= REQUESTS and calls < images_done  # some runtime calls held more than one image
    assert metrics['leanvision_batch_size_bucket{le="1.0"}'] < calls
    assert max(batch_sizes) > 1


def test_oversized_body_refused_over_the_wire(server):
    _, port, _ = server
    status, body = request(port, "POST", "/predict", b"\x00" * (65 * 1024), {"Content-Type": "image/png"})
    assert status == 413 and "over the limit" in json.loads(body)["error"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # announces 1 GB, sends nothing more
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 1000000000\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413")
    assert request(port, "GET", "/health")[0] == 200  # still up


def test_sigterm_shuts_down_cleanly(server):
    proc, port, log = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    text = log.read_text()
    assert "serving compact (fp32, onnxruntime, " in text and "Application shutdown complete" in text
    assert "Traceback" not in text
