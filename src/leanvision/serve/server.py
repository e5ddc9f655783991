"""Running the app under uvicorn: `serve(run_dir, host, port, workers, **create_app_kwargs)` (the CLI's `serve`).

uvicorn handles SIGINT/SIGTERM gracefully: it stops accepting connections, lets in-flight requests finish (up to
`GRACEFUL_S`), then runs the app's lifespan shutdown, which drains the batcher's queue.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any

from ..errors import LeanvisionError

GRACEFUL_S = 30  # seconds in-flight requests get to finish after SIGTERM / Ctrl-C


def _uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise LeanvisionError('`leanvision serve` needs its extra (uvicorn is missing). Install it with: '
                              'pip install "leanvision[serve]"') from None
    return uvicorn


def check_port(host: str, port: int) -> None:
    """Raise a one-line `LeanvisionError` when `host:port` cannot be bound (in use, bad address, privileged)."""
    if not 0 <= port <= 65535:
        raise LeanvisionError(f"Invalid port={port}. Expected 0-65535 (0: any free port).")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT does not count as used
    try:
        sock.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise LeanvisionError(f"Port {port} on {host} is already in use. Stop the other server or pass another "
                                  "`port`.") from None
        raise LeanvisionError(f"Cannot listen on {host}:{port} ({e.strerror or e}). Pass another `host` or `port`.") \
            from None
    except socket.gaierror as e:
        raise LeanvisionError(f"Invalid host={host!r} ({e}). Expected an address such as 127.0.0.1.") from None
    finally:
        sock.close()


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info", **app_kwargs: Any) -> None:
    """Serve `run_dir` until interrupted. `workers > 1` starts that many processes, each with its own model, batcher
    and metrics (a scrape of /metrics sees the worker that answers it). Inference threads per process: `threads`,
    else `default_threads(workers)` (the cores less one, shared among the workers)."""
    uvicorn = _uvicorn()
    # the app imports torch, fastapi and the model's runtime: only when serving (CLI start-up speed)
    from .app import ENV_CONFIG, ServeConfig, config_env, create_app, default_threads

    if workers < 1:
        raise LeanvisionError(f"Invalid workers={workers}. Expected an integer >= 1.")
    if app_kwargs.get("threads") is None:
        app_kwargs["threads"] = default_threads(workers)
    ServeConfig(**{k: v for k, v in app_kwargs.items() if k in ServeConfig.__dataclass_fields__}).check()
    check_port(host, port)
    # "auto": uvloop and the httptools parser when installed (both in the serve extra), asyncio and h11 otherwise;
    # no access log (no log line formatted and written per request)
    options = dict(host=host, port=port, access_log=False, log_level=log_level, lifespan="on", loop="auto",
                   http="auto", timeout_graceful_shutdown=GRACEFUL_S)
    if workers == 1:
        app = create_app(run_dir, **app_kwargs)
        card = app.state.model.card
        threads = f"{card['threads']} inference thread{'s' if card['threads'] != 1 else ''}"
        print(f"serving {card['name']} ({card['precision']}, {card['runtime']}, {threads}) "
              f"from {run_dir} on {f'http://{host}:{port}/' if port else 'a free port (uvicorn names it below)'} "
              "(page /, API docs /docs, metrics /metrics)", flush=True)
        _run_until_stopped(uvicorn.Server(uvicorn.Config(app, **options)).run)
        return
    from .app import load_model

    load_model(run_dir, app_kwargs.get("runtime", "onnxruntime"))  # fail here, once, on a bad run or runtime
    os.environ[ENV_CONFIG] = config_env(run_dir, **app_kwargs)
    print(f"serving {run_dir} with {workers} worker processes on http://{host}:{port}/", flush=True)
    _run_until_stopped(lambda: uvicorn.run("leanvision.serve.app:app_from_env", factory=True, workers=workers,
                                           **options))


class _Stopped(Exception):
    """SIGTERM, re-raised by uvicorn after its graceful shutdown."""


def _run_until_stopped(run) -> None:
    """Run the server; after uvicorn's graceful shutdown on Ctrl-C or SIGTERM (which it re-raises once done),
    return normally, so the command exits 0 with no traceback."""
    import signal
    import threading

    def stopped(signum, frame):
        raise _Stopped

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stopped) if main else None
    try:
        run()
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    print("leanvision serve: stopped", flush=True)
