"""The ASGI app of `leanvision serve`: a run directory's model behind HTTP, with dynamic batching and limits.

`create_app(run_dir, runtime="onnxruntime", max_batch_size=64, max_wait_ms=2, ...)` loads the model (any run:
trained, pruned, int8), and returns a FastAPI app. Endpoints: `POST /predict` (multipart files or one raw image
body), `GET /health`, `GET /ready`, `GET /metrics` (Prometheus), `GET /model`, `GET /` (a page), `GET /report` (the
study report, when the run lives in a study folder), `/docs` and `/openapi.json`.

Images are decoded with the training pipeline's own conversion (`data.images.convert_image`) and normalized by
`data.normalizer`, exactly as `leanvision predict` does. Every untrusted input is bounded before it costs memory:
the body (Content-Length checked first, then bytes counted while streaming), the file formats PIL may open, and the
pixel count read from the image header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import convert_image
from ..data.normalize import normalizer
from ..errors import LeanvisionError, first_line
from ..io import read_json
from ..measure import count_macs, file_bytes
from ..registry import did_you_mean
from ..rundir import is_onnx, load_run
from ..runtimes import RUNTIMES, get_runtime
from .batching import Answer, Batcher, BatcherClosed

try:
    import prometheus_client
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, Response
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised by the CLI test that hides the extra
    raise LeanvisionError(f'`leanvision serve` needs its extra ({e.name} is missing). Install it with: '
                          'pip install "leanvision[serve]"') from None

#: File formats PIL may open for a request (those of `data.images.IMAGE_EXTENSIONS`); nothing else is parsed.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
#: Bodies above this size are decoded in a worker thread, so a large image does not stall the event loop; at most
#: `DECODE_SLOTS` such decodes run at once, which bounds the memory of decoded pixels (up to --max-pixels each).
INLINE_DECODE_BYTES = 32 * 1024
DECODE_SLOTS = max(2, os.cpu_count() or 1)
#: A lone image is computed on the event loop (no thread hand-off) when the model's batch-1 call takes less than this
#: (measured at start-up, including the hand-off, so the real call is shorter still).
INLINE_MAX_S = 0.001
ENDPOINTS = ("/predict", "/model", "/health", "/ready", "/metrics", "/", "/report")


@dataclass(frozen=True)
class ServeConfig:
    runtime: str = "onnxruntime"  # inference runtime (leanvision.runtimes.RUNTIMES)
    max_batch_size: int = 64  # images per runtime call at most
    max_wait_ms: float = 2.0  # a queued image waits at most this long for others
    max_body_kb: int = 2048  # request bodies above this are refused with 413
    max_concurrency: int = 256  # /predict requests in progress at once; more get 503
    max_pixels: int = 16_000_000  # width x height of one image at most (decompression bomb guard)
    max_files: int = 64  # images in one request at most
    top_k: int = 1  # predictions per image when the request does not say

    def check(self) -> ServeConfig:
        for name in ("max_batch_size", "max_body_kb", "max_concurrency", "max_pixels", "max_files", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LeanvisionError(f"Invalid {name}={value!r}. Expected an integer >= 1.")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 10_000:
            raise LeanvisionError(f"Invalid max_wait_ms={self.max_wait_ms!r}. Expected a number of milliseconds "
                                  "from 0 to 10000.")
        return self


class ApiError(Exception):
    """An error answered as `{"error": "<one line>"}` with `status`."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}


# ---- response schemas (documentation and the fuzz test's oracle; responses are serialized directly) ----

class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, in one line")


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    probability: float


class ImageResult(BaseModel):
    file: str = Field(description="the multipart file name, or 'body' for a raw image body")
    predictions: list[Prediction]
    batch_size: int = Field(description="images in the runtime call that computed this one")
    model_ms: float = Field(description="wall time of that runtime call, ms")
    queue_ms: float = Field(description="time this image waited for its batch, ms")


class PredictResponse(BaseModel):
    results: list[ImageResult]
    server_ms: float = Field(description="time in the server from the request's start to the response, ms")
    runtime: str
    precision: str


class ModelCard(BaseModel):
    name: str
    run: str
    dataset: str | None
    classes: list[str]
    input_shape: list[int]
    params: int
    macs: int | None
    file: str
    file_bytes: int
    runtime: str
    precision: str
    providers: list[str]
    threads: int
    accuracy: float | None
    accuracy_images: int | None
    techniques: list[str]
    study_report: str | None
    max_batch_size: int
    max_wait_ms: float
    max_body_bytes: int
    max_files: int
    top_k: int


class Health(BaseModel):
    status: str


ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in (
    (400, "malformed request"), (413, "body or image too large"), (415, "unsupported content type"),
    (422, "not an image, empty, or invalid parameters"), (503, "overloaded or not ready; retry later"),
    (500, "the model failed on this image"))}


# ---- the model ----

@dataclass
class LoadedModel:
    infer: Any  # uint8 (N, C, H, W) numpy -> float32 probabilities (N, K) numpy
    card: dict[str, Any]
    classes: list[str]
    input_shape: tuple[int, int, int]
    report: Path | None


def study_report(run_dir: Path) -> Path | None:
    """The study report of a run that lives in a study folder (`<study>/variants/<name>/seed<k>[-optimized]`)."""
    run_dir = run_dir.resolve()
    if len(run_dir.parents) >= 3 and run_dir.parent.parent.name == "variants":
        report = run_dir.parents[2] / "report.html"
        if report.is_file():
            return report
    return None


def load_model(run_dir: str | Path, runtime: str = "onnxruntime") -> LoadedModel:
    """Load a run and wrap it for serving: `infer` applies the training normalization, the runtime and softmax."""
    path = Path(run_dir)
    if not (path / "model.json").is_file():
        raise LeanvisionError(f"Run directory {path} not found (no model.json). Expected a folder written by "
                              "`leanvision train` or `leanvision optimize`.")
    if runtime not in RUNTIMES.names():
        raise LeanvisionError(f"Unknown runtime={runtime!r}.{did_you_mean(runtime, RUNTIMES.names())} Expected one "
                              f"of: {', '.join(RUNTIMES.names())}.")
    engine = get_runtime(runtime)
    ok, reason = engine.is_available()
    if not ok:
        raise LeanvisionError(f"Runtime {runtime!r} is not available here: {reason}")
    run = load_run(path)
    shape = run.input_shape
    onnx_file = run.model.onnx_path if is_onnx(run.model) else None
    if onnx_file is not None and not engine.onnx_models:
        raise LeanvisionError(f"{path} holds an int8 ONNX model, which runtime {runtime!r} cannot run. "
                              "Use runtime='onnxruntime'.")
    predict = engine.prepare(run.model, torch.zeros((1, *shape)), precision="fp32", device="cpu")
    normalize = normalizer(run.meta["mean"], run.meta["std"], torch.device("cpu"))

    def infer(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = predict(normalize(torch.from_numpy(images)))
            return torch.softmax(logits.float(), dim=1).numpy()

    result = read_json(path / "result.json") if (path / "result.json").is_file() else {}
    weights = Path(onnx_file) if onnx_file is not None else path / "best.safetensors"
    macs = run.meta.get("macs")
    if macs is None and onnx_file is None:
        macs = count_macs(run.model, shape)
    report = study_report(path)
    card = {
        "name": run.meta.get("model") or "spec", "run": "/".join(path.resolve().parts[-2 if report else -1:]),
        "dataset": (run.meta.get("dataset") or {}).get("name"), "classes": list(run.meta["classes"]),
        "input_shape": list(shape), "params": int(run.meta["num_params"]), "macs": macs,
        "file": weights.name, "file_bytes": file_bytes(weights), "runtime": runtime,
        "precision": "int8" if onnx_file is not None else "fp32",
        "providers": list(getattr(predict, "providers", ["torch-cpu"])), "threads": torch.get_num_threads(),
        "accuracy": result.get("test_accuracy"), "accuracy_images": result.get("test_total"),
        "techniques": list(run.meta.get("techniques") or []), "study_report": "/report" if report else None,
    }
    return LoadedModel(infer, card, list(run.meta["classes"]), shape, report)


# ---- request handling ----

def decode_image(data: bytes, name: str, size_hw: tuple[int, int], channels: int, max_pixels: int) -> np.ndarray:
    """Decode one untrusted image to uint8 (C, H, W) with the training conversion; `ApiError` 4xx when it is not a
    readable image or has more than `max_pixels` pixels (checked from the header, before decoding)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(422, f"{name} is empty (0 bytes). Send a PNG, JPEG, BMP, GIF or WebP image.", "empty")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ApiError(413, f"{name} is {w}x{h} pixels ({w * h:,}); at most {max_pixels:,} pixels are "
                                    "accepted. Send a smaller image.", "too_many_pixels")
            return convert_image(img, size_hw, channels)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ApiError(413, f"{name} refused as a decompression bomb ({first_line(e, limit=120)}). "
                            "Send a smaller image.", "too_many_pixels") from None
    except UnidentifiedImageError:
        raise ApiError(422, f"{name} is not an image PIL can read ({len(data):,} bytes). Send a PNG, JPEG, BMP, GIF "
                            "or WebP image.", "not_an_image") from None
    except Exception as e:  # noqa: BLE001 - corrupt data makes PIL's plugins raise many types (OSError, struct.error,
        # IndexError, SyntaxError, ...): all of them mean "not a valid image", a 4xx, never a 5xx
        text = first_line(e, limit=120)
        raise ApiError(422, f"{name} cannot be decoded ({type(e).__name__}: {text}). Send a valid PNG, JPEG, BMP, "
                            "GIF or WebP image.", "not_an_image") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes (Content-Length first,
    then the bytes received, so a lying or absent Content-Length cannot make the server hold more than `limit`)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, f"Invalid Content-Length {length[:40]!r}: expected a number of bytes.", "bad_request")
        if int(length) > limit:
            raise ApiError(413, f"Request body of {int(length):,} bytes is over the limit of {limit:,} bytes "
                                "(--max-body-kb). Send smaller or fewer images.", "too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"Request body is over the limit of {limit:,} bytes (--max-body-kb). Send smaller "
                                "or fewer images.", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_parts(request: Request, config: ServeConfig) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request: multipart files, or the whole body for image/* or
    application/octet-stream."""
    from starlette.requests import Request as StarletteRequest

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = ctype == "multipart/form-data"
    if not (multipart or ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise ApiError(415, f"Content-Type {ctype or '(none)'!r} is not accepted. Send multipart/form-data files, "
                            "or one image as image/png, image/jpeg, ... or application/octet-stream.",
                       "bad_content_type")
    body = await read_body(request, config.max_body_kb * 1024)
    if not multipart:
        return [("body", body)]
    sent = False

    async def replay() -> dict[str, Any]:  # the body, already bounded, handed to Starlette's multipart parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, replay).form(max_files=config.max_files, max_fields=100)
    except (StarletteHTTPException, ValueError, KeyError, AssertionError) as e:  # malformed multipart
        detail = getattr(e, "detail", None) or str(e) or type(e).__name__
        if "too many files" in str(detail).lower():
            raise ApiError(413, f"Too many files in one request; at most {config.max_files} are accepted. Split "
                                "the request.", "too_many_files") from None
        raise ApiError(400, f"Malformed multipart body ({' '.join(str(detail).split())[:120]}). Send files as "
                            "multipart/form-data, e.g. curl -F files=@image.png.", "bad_request") from None
    try:
        parts = []
        for _, value in form.multi_items():
            if not isinstance(value, str):  # the client's file name, echoed in answers: one line, bounded
                name = " ".join((value.filename or "").split())[:100] or f"file {len(parts) + 1}"
                parts.append((name, await value.read()))
    finally:
        await form.close()
    if not parts:
        raise ApiError(422, "The multipart body holds no file. Send one or more image files, e.g. curl -F "
                            "files=@image.png.", "no_file")
    return parts


class Metrics:
    """Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self, max_batch_size: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("leanvision_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("leanvision_errors", "Refused or failed /predict requests by reason", ["reason"],
                              registry=r)
        self.latency = Histogram("leanvision_request_latency_seconds", "Time from request start to response",
                                 ["endpoint"], registry=r, buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5,
                                                                    1, 2, 5))
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch_size})
        self.batch_size = Histogram("leanvision_batch_size", "Images per runtime call", registry=r,
                                    buckets=[s for s in sizes if s <= max_batch_size])
        self.queue = Histogram("leanvision_queue_seconds", "Time an image waited for its runtime call", registry=r,
                               buckets=(.0001, .0005, .001, .002, .005, .01, .02, .05, .1, .5, 1))
        self.inference = Histogram("leanvision_inference_seconds", "Wall time of one runtime call", registry=r,
                                   buckets=(.0001, .0005, .001, .002, .005, .01, .02, .05, .1, .5, 1))
        self.images = Counter("leanvision_images", "Images classified", registry=r)
        self.in_flight = Gauge("leanvision_in_flight_requests", "/predict requests in progress", registry=r)

    def observe_batch(self, size: int, model_s: float, queue_s: list[float]) -> None:
        self.batch_size.observe(size)
        self.inference.observe(model_s)
        self.images.inc(size)
        for q in queue_s:
            self.queue.observe(q)


class CountRequests:
    """Pure ASGI middleware (no per-request task or stream, unlike `@app.middleware`): counts every HTTP request by
    endpoint and status and observes its latency."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status_code=status, media_type="application/json",
                    headers=headers)


def _error(e: ApiError) -> Response:
    return _json({"error": e.message}, e.status, e.headers)


def create_app(run_dir: str | Path, *, runtime: str = "onnxruntime", max_batch_size: int = 64,
               max_wait_ms: float = 2.0, max_body_kb: int = 2048, max_concurrency: int = 256,
               max_pixels: int = 16_000_000, max_files: int = 64, top_k: int = 1, warmup: int = 3,
               threads: int | None = None) -> FastAPI:
    """The ASGI app serving `run_dir`. The model is loaded now (errors surface before any server starts); the
    batcher starts and the model is warmed up in the app's lifespan (so `/ready` is 200 once it can answer).
    `threads` sets torch's thread count for this process (ONNX Runtime's intra-op threads follow it); None keeps it.

    Example: `uvicorn.run(create_app("runs/compact", max_batch_size=64), host="127.0.0.1", port=8000)`.
    """
    config = ServeConfig(runtime, max_batch_size, max_wait_ms, max_body_kb, max_concurrency, max_pixels, max_files,
                         top_k).check()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LeanvisionError(f"Invalid threads={threads!r}. Expected an integer >= 1.")
        torch.set_num_threads(threads)
    model = load_model(run_dir, runtime)
    metrics = Metrics(config.max_batch_size)
    batcher = Batcher(model.infer, config.max_batch_size, config.max_wait_ms, observe=metrics.observe_batch)
    c, h, w = model.input_shape
    state = {"ready": False, "in_flight": 0}
    decode_slots = asyncio.Semaphore(DECODE_SLOTS)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        zeros = np.zeros((1, c, h, w), np.uint8)
        for n in (1, config.max_batch_size):  # first calls allocate; they should not land on a user's request
            for _ in range(warmup):
                await run_in_threadpool(model.infer, np.repeat(zeros, n, axis=0))
        times = []
        for _ in range(5):  # batch-1 call time: a fast model answers a lone request on the event loop
            tick = time.perf_counter()
            await run_in_threadpool(model.infer, zeros)
            times.append(time.perf_counter() - tick)
        batcher.inline = sorted(times)[2] < INLINE_MAX_S
        batcher.start()
        state["ready"] = True
        try:
            yield
        finally:  # uvicorn has stopped accepting and let in-flight requests finish; drain what is still queued
            state["ready"] = False
            await batcher.close()

    app = FastAPI(title="leanvision serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Image classification with {model.card['name']} ({model.card['precision']}, "
                              f"{runtime}) from run {model.card['run']}. POST images to /predict.")
    app.state.config, app.state.model, app.state.batcher, app.state.metrics = config, model, batcher, metrics

    app.add_middleware(CountRequests, metrics=metrics)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        return _json({"error": " ".join(str(e.detail).split())}, e.status_code, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _json({"error": f"Invalid {where or 'request'}: {first.get('msg', 'invalid value')}."}, 422)

    top_k_doc = "predictions per image (default: the server's --top-k; capped at the number of classes)"
    body_doc = {"parameters": [{"name": "top_k", "in": "query", "required": False, "description": top_k_doc,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 10_000}}],
                "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in
           ("image/png", "image/jpeg", "application/octet-stream")}}}}

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=body_doc,
              summary="Classify one or several images",
              description="Multipart files (any field name), or one image as the raw body. Images of any size and "
                          "mode are converted and resized exactly as the training images were.")
    async def predict(request: Request):  # top_k parsed here: FastAPI's parameter handling cost ~40% of a request
        start = time.perf_counter()
        top_k = request.query_params.get("top_k")
        if top_k is not None:
            if not top_k.isdigit() or not 1 <= int(top_k) <= 10_000:
                metrics.errors.labels("bad_request").inc()
                return _error(ApiError(422, f"Invalid top_k {top_k[:20]!r}: expected an integer from 1 to 10000.",
                                       "bad_request"))
            top_k = int(top_k)
        if state["in_flight"] >= config.max_concurrency:
            metrics.errors.labels("overloaded").inc()
            return _error(ApiError(503, f"Overloaded: {config.max_concurrency} requests in progress "
                                        "(--max-concurrency). Retry shortly.", "overloaded", {"Retry-After": "1"}))
        if not batcher.running:
            metrics.errors.labels("not_ready").inc()
            return _error(ApiError(503, "Not ready: the model is loading or the server is shutting down.",
                                   "not_ready", {"Retry-After": "1"}))
        state["in_flight"] += 1
        metrics.in_flight.inc()
        batcher.incoming += 1
        queued = False
        try:
            parts = await image_parts(request, config)
            images = []
            for name, data in parts:
                if len(data) > INLINE_DECODE_BYTES:
                    async with decode_slots:
                        images.append(await run_in_threadpool(decode_image, data, name, (h, w), c,
                                                              config.max_pixels))
                else:
                    images.append(decode_image(data, name, (h, w), c, config.max_pixels))
            futures = [batcher.submit(image) for image in images]
            batcher.incoming -= 1
            queued = True
            answers: list[Answer] = await asyncio.gather(*futures)
        except ApiError as e:
            metrics.errors.labels(e.reason).inc()
            return _error(e)
        except BatcherClosed as e:  # the batcher stopped (shutdown) between the check and the submit
            metrics.errors.labels("not_ready").inc()
            return _error(ApiError(503, f"Not ready: {e}.", "not_ready", {"Retry-After": "1"}))
        except Exception as e:  # noqa: BLE001 - the runtime failed on this request's image: this request alone fails
            metrics.errors.labels("model_error").inc()
            return _json({"error": f"The model failed on this image ({type(e).__name__}: "
                                   f"{first_line(e, limit=160)})."}, 500)
        finally:
            if not queued:
                batcher.incoming -= 1
            state["in_flight"] -= 1
            metrics.in_flight.dec()
        k = min(top_k or config.top_k, len(model.classes))
        values, indices = torch.from_numpy(np.stack([a.probs for a in answers])).topk(k, dim=1)  # as `predict`
        results = []
        for (name, _), answer, vs, ix in zip(parts, answers, values.tolist(), indices.tolist()):
            results.append({"file": name, "predictions": [{"class": model.classes[i], "probability": v}
                                                          for v, i in zip(vs, ix)],
                            "batch_size": answer.batch_size, "model_ms": round(answer.model_ms, 4),
                            "queue_ms": round(answer.queue_ms, 4)})
        return _json({"results": results, "server_ms": round((time.perf_counter() - start) * 1e3, 4),
                      "runtime": runtime, "precision": model.card["precision"]})

    @app.get("/health", response_model=Health, summary="Liveness: the process answers")
    async def health():
        return _json({"status": "ok"})

    @app.get("/ready", response_model=Health, responses={503: ERRORS[503]},
             summary="Readiness: the model is loaded, warmed up and the batcher runs")
    async def ready():
        if state["ready"] and batcher.running:
            return _json({"status": "ready"})
        return _json({"error": "not ready"}, 503, {"Retry-After": "1"})

    @app.get("/model", response_model=ModelCard, summary="The model card: classes, size, compute, accuracy")
    async def model_card():
        return _json({**model.card, "max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms,
                      "max_body_bytes": config.max_body_kb * 1024, "max_files": config.max_files,
                      "top_k": config.top_k})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus_metrics():
        return Response(prometheus_client.generate_latest(metrics.registry),
                        media_type=prometheus_client.CONTENT_TYPE_LATEST)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:  # FastAPI's Swagger UI needs a CDN; this page works offline
        from .docs import docs_page

        return HTMLResponse(docs_page(app.openapi()))

    @app.get("/", response_class=HTMLResponse, summary="A page to classify images in the browser")
    async def page():
        return HTMLResponse(_page_html())

    @app.get("/report", response_class=HTMLResponse, responses={404: {"model": ErrorBody}},
             summary="The study report of the study this run came from")
    async def report():
        if model.report is None or not model.report.is_file():
            return _json({"error": "This run does not come from a study folder; there is no report."}, 404)
        return FileResponse(model.report, media_type="text/html")

    return app


def _page_html() -> str:
    from importlib.resources import files

    return files("leanvision.serve").joinpath("page.html").read_text(encoding="utf-8")


# ---- several worker processes (uvicorn imports the app from a string) ----

ENV_CONFIG = "LEANVISION_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` worker processes: the arguments of `create_app` as JSON in
    $LEANVISION_SERVE_CONFIG."""
    kwargs = json.loads(os.environ[ENV_CONFIG])
    return create_app(kwargs.pop("run_dir"), **kwargs)


def default_threads(workers: int = 1) -> int:
    """Inference threads per worker process when not given: the CPU cores less one (left to the event loop: HTTP,
    decoding, batching), shared among the workers; at least 1."""
    return max(1, ((os.cpu_count() or 1) - 1) // max(1, workers))


def config_env(run_dir: str | Path, **kwargs: Any) -> str:
    return json.dumps({"run_dir": str(run_dir), **kwargs})


__all__ = ["ServeConfig", "create_app", "load_model", "decode_image", "study_report", "app_from_env", "config_env"]
