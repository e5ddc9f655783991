"""Atomic file writes and pickle-free (safetensors + JSON) storage of weights and training state.

Nothing here ever unpickles: weights are safetensors, everything else is JSON, so a run directory downloaded from
someone else is safe to load.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import LeanvisionError


def _umask() -> int:
    try:  # Linux: read it without touching it (no window in which another thread sees another umask)
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)  # elsewhere reading the umask means setting it; put it straight back
        os.umask(mask)
        return mask


def temp_file(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A temporary file beside `path` with the permissions a plain `open(path, "w")` would give (0o666 & ~umask).

    `mkstemp` creates files owner-only (0o600); the final file must not keep that.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json_lines(path: str | os.PathLike) -> list[Any]:
    """A .jsonl file (metrics.jsonl): one JSON value per non-empty line."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LeanvisionError(f"Missing file {path}. Expected a leanvision run directory containing it.") from None
    except json.JSONDecodeError as e:
        raise LeanvisionError(f"Corrupt JSON in {path} ({e.msg} at line {e.lineno}). Re-create the run.") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line; rewrites the file atomically so a crash never leaves a torn line."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + (json.dumps(record, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save a flat tensor dict as safetensors, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors re-creates the file owner-only
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise LeanvisionError(f"Missing weights file {path}. Expected a leanvision run directory containing it.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LeanvisionError(f"Corrupt weights file {path} ({e}). Re-create the run.") from None


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (e.g. an optimizer state_dict) into tensors and a JSON-able skeleton.

    Tensors are replaced by `{"__tensor__": key}` placeholders; `unflatten_state` reverses it.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj
            return {"__tensor__": key}
        if isinstance(obj, dict):
            pairs = [[walk(k, f"{key}.k{i}"), walk(v, f"{key}.{i}")] for i, (k, v) in enumerate(obj.items())]
            return {"__dict__": pairs}
        if isinstance(obj, (list, tuple)):
            items = [walk(v, f"{key}.{i}") for i, v in enumerate(obj)]
            return {"__tuple__": items} if isinstance(obj, tuple) else items
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"Cannot store {type(obj).__name__} at {key} without pickle")

    return tensors, walk(state, prefix or "s")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_state(path: str | os.PathLike, state: Any) -> None:
    """Save an arbitrary nested state (tensors + JSON-able leaves) as ONE safetensors file, atomically.

    The JSON skeleton lives in the safetensors metadata, so tensors and structure can never get out of step.
    """
    tensors, skeleton = flatten_state(state)
    save_weights(path, tensors, metadata={"leanvision_state": json.dumps(skeleton)})


def load_state(path: str | os.PathLike) -> Any:
    from safetensors import safe_open

    path = Path(path)
    tensors = load_weights(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "leanvision_state" not in meta:
        raise LeanvisionError(f"{path} is not a leanvision checkpoint (no state metadata). Re-create the run.")
    return unflatten_state(json.loads(meta["leanvision_state"]), tensors)
