"""The ASGI app of `leanvision serve`: a run directory's model behind HTTP, with dynamic batching and limits.

`create_app(run_dir, runtime="onnxruntime", max_batch_size=64, max_wait_ms=2, ...)` loads the model (any run:
trained, pruned, int8), and returns a FastAPI app (`ServeApp`: POST /predict is answered by a raw ASGI handler in
front of FastAPI's routing, sharing `answer` with the documented FastAPI route). Endpoints: `POST /predict`
(multipart files or one raw image body), `GET /health`, `GET /ready`, `GET /metrics` (Prometheus), `GET /model`,
`GET /` (a page), `GET /report` (the study report, when the run lives in a study folder), `/docs` and
`/openapi.json`.

Its pieces: `inputs` bounds every untrusted input before it costs memory (body, multipart files, image formats,
pixel count) and decodes images as `leanvision predict` does; `model` loads the run; `metrics` counts for
Prometheus; `schemas` holds the limits (`ServeConfig`), `ApiError` and the response schemas; `batching` the queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LeanvisionError, first_line
from .batching import Answer, Batcher, BatcherClosed
from .inputs import decode_image, image_parts
from .metrics import CountRequests, Metrics
from .model import load_model, study_report
from .schemas import ERRORS, ApiError, ErrorBody, Health, ModelCard, PredictResponse, ServeConfig

try:
    import prometheus_client
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import QueryParams
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised by the CLI test that hides the extra
    raise LeanvisionError(f'`leanvision serve` needs its extra ({e.name} is missing). Install it with: '
                          'pip install "leanvision[serve]"') from None

#: Bodies above this size are decoded in a worker thread, so a large image does not stall the event loop; at most
#: `DECODE_SLOTS` such decodes run at once, which bounds the memory of decoded pixels (up to --max-pixels each).
INLINE_DECODE_BYTES = 32 * 1024
DECODE_SLOTS = max(2, os.cpu_count() or 1)
#: A lone image is computed on the event loop (no thread hand-off) when the model's batch-1 call takes less than this
#: (measured at start-up, including the hand-off, so the real call is shorter still).
INLINE_MAX_S = 0.001


_encoder = json.JSONEncoder(separators=(",", ":"))  # json.dumps with `separators` builds an encoder per call


def _encode(obj: Any) -> bytes:
    return _encoder.encode(obj).encode()


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(obj), status_code=status, media_type="application/json", headers=headers)


def _top(probs: np.ndarray, k: int) -> tuple[list[float], list[int]]:
    """The `k` largest probabilities of one image and their class indices, largest first (ties: the lower class
    index first), the top-k of `leanvision predict`; numpy on one row costs a few microseconds where torch's topk
    costs tens."""
    if k == 1:
        i = int(probs.argmax())
        return [float(probs[i])], [i]
    ix = np.argsort(-probs, kind="stable")[:k]
    return probs[ix].tolist(), ix.tolist()


class ServeApp(FastAPI):
    """The FastAPI app of `create_app`, with `POST /predict` answered in front of FastAPI (`fast_predict`, set by
    `create_app`): a raw ASGI handler that calls the same `answer` as the FastAPI route, without Starlette's
    middleware stack, routing, Request object and Response class, which cost more than decoding a small image. Every
    other path and method, and any request under a root path, goes through FastAPI (/docs, /openapi.json, which still
    documents /predict from its route, /metrics, /model, ...). Set `fast_predict = None` to route /predict through
    FastAPI too (the tests compare both)."""

    fast_predict: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (self.fast_predict is not None and scope["type"] == "http" and scope["path"] == "/predict"
                and scope["method"] == "POST" and not scope.get("root_path")):
            await self.fast_predict(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(run_dir: str | Path, *, runtime: str = "onnxruntime", max_batch_size: int = 64,
               max_wait_ms: float = 2.0, max_body_kb: int = 2048, max_concurrency: int = 256,
               max_pixels: int = 16_000_000, max_files: int = 64, top_k: int = 1, warmup: int = 3,
               threads: int | None = None) -> ServeApp:
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
    metrics.in_flight.set_function(lambda: state["in_flight"])  # read at scrape time: no lock per request
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

    app = ServeApp(title="leanvision serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
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
    async def predict(request: Request):  # the route documents /predict; `answer` does the work
        status, body, headers = await answer(request.scope, request.receive)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def refuse(e: ApiError) -> tuple[int, bytes, dict[str, str]]:
        metrics.errors.labels(e.reason).inc()
        return e.status, _encode({"error": e.message}), e.headers

    async def answer(scope: dict, receive: Any) -> tuple[int, bytes, dict[str, str]]:
        """POST /predict from its ASGI scope and receive, for the FastAPI route and the fast path alike: (status,
        JSON body, extra headers). top_k is parsed here: FastAPI's parameter handling cost ~40% of a request."""
        start = time.perf_counter()
        top_k = QueryParams(scope["query_string"]).get("top_k") if scope.get("query_string") else None
        if top_k is not None:
            if not top_k.isdigit() or not 1 <= int(top_k) <= 10_000:
                return refuse(ApiError(422, f"Invalid top_k {top_k[:20]!r}: expected an integer from 1 to 10000.",
                                       "bad_request"))
            top_k = int(top_k)
        if state["in_flight"] >= config.max_concurrency:
            return refuse(ApiError(503, f"Overloaded: {config.max_concurrency} requests in progress "
                                        "(--max-concurrency). Retry shortly.", "overloaded", {"Retry-After": "1"}))
        if not batcher.running:
            return refuse(ApiError(503, "Not ready: the model is loading or the server is shutting down.",
                                   "not_ready", {"Retry-After": "1"}))
        state["in_flight"] += 1
        batcher.incoming += 1
        queued = False
        try:
            parts = await image_parts(scope, receive, config)
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
            # one image (the usual request) awaits its future directly: gather wraps it in one more future
            answers: list[Answer] = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
        except ApiError as e:
            return refuse(e)
        except BatcherClosed as e:  # the batcher stopped (shutdown) between the check and the submit
            return refuse(ApiError(503, f"Not ready: {e}.", "not_ready", {"Retry-After": "1"}))
        except Exception as e:  # noqa: BLE001 - the runtime failed on this request's image: this request alone fails
            metrics.errors.labels("model_error").inc()
            return 500, _encode({"error": f"The model failed on this image ({type(e).__name__}: "
                                          f"{first_line(e, limit=160)})."}), {}
        finally:
            if not queued:
                batcher.incoming -= 1
            state["in_flight"] -= 1
        k = min(top_k or config.top_k, len(classes))
        results = []
        for (name, _), answer_ in zip(parts, answers):
            values, indices = _top(answer_.probs, k)
            results.append({"file": name, "predictions": [{"class": classes[i], "probability": v}
                                                          for v, i in zip(values, indices)],
                            "batch_size": answer_.batch_size, "model_ms": round(answer_.model_ms, 4),
                            "queue_ms": round(answer_.queue_ms, 4)})
        return 200, _encode({"results": results, "server_ms": round((time.perf_counter() - start) * 1e3, 4),
                             "runtime": runtime, "precision": precision}), {}

    classes, precision = model.classes, model.card["precision"]
    predict_requests = {}  # status -> the child of metrics.requests for /predict (labels() costs a lock and a lookup)
    predict_latency = metrics.latency.labels("/predict")
    json_header = (b"content-type", b"application/json")

    async def fast_predict(scope: dict, receive: Any, send: Any) -> None:
        """POST /predict as raw ASGI: `answer`, one response start and one body message, counted in the metrics as
        `CountRequests` counts the requests that go through FastAPI."""
        start, status = time.perf_counter(), 500
        try:
            status, body, extra = await answer(scope, receive)
            headers = [json_header, (b"content-length", str(len(body)).encode())]
            if extra:
                headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            counter = predict_requests.get(status)
            if counter is None:
                counter = predict_requests[status] = metrics.requests.labels("/predict", str(status))
            counter.inc()
            predict_latency.observe(time.perf_counter() - start)

    app.fast_predict = fast_predict

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
