"""`leanvision serve`: a run directory's model over HTTP (FastAPI + uvicorn), with dynamic batching, limits,
Prometheus metrics and a browser page. Needs the `serve` extra: `pip install "leanvision[serve]"`.

Example: `uvicorn.run(create_app("runs/compact"), host="127.0.0.1", port=8000)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def create_app(run_dir: Any, *, runtime: str = "onnxruntime", max_batch_size: int = 64,
               max_wait_ms: float = 2.0, max_body_kb: int = 2048, max_concurrency: int = 256,
               max_pixels: int = 16_000_000, max_files: int = 64, top_k: int = 1, warmup: int = 3,
               threads: int | None = None) -> Any:
    """The web app (ASGI, FastAPI) that serves the model of `run_dir`; run it with uvicorn.

    Args:
        run_dir: a run directory written by `leanvision train` or `leanvision optimize`, or its `Run`.
        runtime: onnxruntime | torch | onnxruntime-streams (an int8 run always uses onnxruntime).
        max_batch_size: images per runtime call at most; concurrent requests are batched up to this.
        max_wait_ms: an image waits at most this long for others to join its batch.
        max_body_kb: larger request bodies get 413.
        max_concurrency: requests in progress at most; more get 503.
        max_pixels: larger images get 413 (decompression-bomb guard).
        max_files: images per request at most.
        top_k: predictions per image unless the request's `?top_k=` says otherwise.
        warmup: untimed calls per batch size at start-up, so first requests are not slow.
        threads: inference threads for this process; None keeps torch's current setting.

    The model loads now, so a bad run directory fails here; `/ready` answers 200 once it is warmed up. Endpoints:
    POST /predict, /model, /health, /ready, /metrics, a browser page at /, /docs and /openapi.json.

    Example: `uvicorn.run(create_app("runs/compact", max_batch_size=64), host="127.0.0.1", port=8000)`.
    """
    from ..errors import LeanvisionError
    from .app import create_app as _create_app

    if hasattr(run_dir, "path") and hasattr(run_dir, "meta"):  # a leanvision Run (leanvision.load_run, train)
        run_dir = run_dir.path
    if not isinstance(run_dir, (str, Path)):
        raise LeanvisionError(f"Invalid run_dir={run_dir!r}. Expected a run directory (a path) or a leanvision Run.")

    return _create_app(run_dir, runtime=runtime, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                       max_body_kb=max_body_kb, max_concurrency=max_concurrency, max_pixels=max_pixels,
                       max_files=max_files, top_k=top_k, warmup=warmup, threads=threads)


serve_app = create_app  # the name `import leanvision` exports: leanvision.serve_app(run_dir, ...)

__all__ = ["create_app", "serve_app"]
