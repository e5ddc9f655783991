"""`leanvision serve`: a run directory's model over HTTP (FastAPI + uvicorn), with dynamic batching, limits,
Prometheus metrics and a browser page. Needs the `serve` extra: `pip install "leanvision[serve]"`.

Example: `uvicorn.run(create_app("runs/compact"), host="127.0.0.1", port=8000)`.
"""

from __future__ import annotations

from typing import Any


def create_app(run_dir: Any, **kwargs: Any) -> Any:
    """The ASGI app serving `run_dir` (see `leanvision.serve.app.create_app`); imports FastAPI only when called."""
    from .app import create_app as _create_app

    return _create_app(run_dir, **kwargs)


__all__ = ["create_app"]
