"""The ASGI app of `leanvision serve`: a run directory's model behind HTTP, with dynamic batching and limits.

`create_app(run_dir, runtime="onnxruntime", max_batch_size=64, max_wait_ms=2, ...)` loads the model (any run:
trained, pruned, int8), and returns a FastAPI app. Endpoints: `POST /predict` (multipart files or one raw image
body), `GET /health`, `GET /ready`, `GET /metrics` (Prometheus), `GET /model`, `GET /` (a page), `GET /report` (the
study report, when the run lives in a study folder), `/docs` and `/openapi.json`.

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
