"""A cache of decoded folder images, so a second run over the same files starts training within seconds.

Decoding 60,000 JPEGs (CIFAR-10 as a folder) costs tens of seconds on two cores every run; the decoded uint8 arrays
are 180 MB. `decode_files_cached` and `probe_files_cached` keep them in the user cache directory
(`$LEANVISION_CACHE_DIR`, else `$XDG_CACHE_HOME/leanvision/decoded`, else `~/.cache/leanvision/decoded`).

Never stale, never mismatched:
    - The key is a SHA-256 over a format version, the target size and channels, and every file's absolute path, byte
      size and modification time (ns). Any added, removed, renamed, resized or touched file gives another key.
    - Entries are safetensors files (no pickle) written atomically; their metadata repeats the key, the shape and a
      BLAKE2b digest of the stored bytes. An entry whose metadata, shapes or digest disagree is refused with a
      warning and rebuilt.
    - Only folders of at least `MIN_FILES` files are cached (small folders decode faster than a cache round trip).
      `LEANVISION_NO_CACHE=1` turns the cache off. At most `MAX_BYTES` are kept: the least recently used entries go.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..errors import first_line
from ..io import atomic_write_bytes, atomic_write_text
from .images import decode_files, probe_files

#: Bump when the decoding rules (images.convert_image) or the entry layout change: old entries are then never read.
CACHE_VERSION = 1
#: Folders with fewer files than this are decoded without the cache.
MIN_FILES = 1000
#: Upper bound on the cache directory's size; least recently used entries are removed beyond it.
MAX_BYTES = 8 * 1024**3


def cache_dir() -> Path:
    """Where decoded folders are cached (see the module docstring)."""
    env = os.environ.get("LEANVISION_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base).expanduser() / "leanvision" / "decoded").resolve()


def enabled(n_files: int) -> bool:
    return n_files >= MIN_FILES and os.environ.get("LEANVISION_NO_CACHE", "") in ("", "0")


def files_key(paths: Sequence[str], *parts: object) -> str:
    """SHA-256 of the format version, `parts`, and each file's absolute path, size and mtime (raises if one is gone)."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, *parts]).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _digest(*arrays: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(a.contiguous().numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


def _refuse(path: Path, reason: str) -> None:
    warnings.warn(f"decoded-image cache entry {path} refused ({reason}): decoding the files again", stacklevel=3)
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a read-only or broken cache folder: the entry is ignored, not trusted
        pass


def _read_entry(path: Path, key: str, n: int, shape: tuple[int, int, int]
                ) -> tuple[torch.Tensor, np.ndarray, list[str]] | None:
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != key:
            _refuse(path, "its key does not match the files")
            return None
        tensors = load_file(str(path))
        images, ok = tensors["images"], tensors["ok"]
        if tuple(images.shape) != (n, *shape) or images.dtype != torch.uint8 or tuple(ok.shape) != (n,):
            _refuse(path, f"shape {tuple(images.shape)} instead of {(n, *shape)}")
            return None
        if _digest(images, ok) != meta.get("digest"):
            _refuse(path, "its contents do not match their checksum")
            return None
        errors = [""] * n
        for i, text in json.loads(meta.get("errors", "{}")).items():
            errors[int(i)] = str(text)
    except Exception as e:  # a truncated or foreign file: never trusted, always rebuilt
        _refuse(path, first_line(e, with_type=True, limit=160))
        return None
    os.utime(path)  # recently used: kept longest
    return images, ok.numpy().astype(bool), errors


def _trim(directory: Path) -> None:
    entries = [p for p in directory.iterdir() if p.suffix in (".safetensors", ".json")]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for p in entries:
        total += p.stat().st_size
        if total > MAX_BYTES:
            p.unlink(missing_ok=True)


def decode_files_cached(paths: Sequence[str], size_hw: tuple[int, int], channels: int
                        ) -> tuple[torch.Tensor, np.ndarray, list[str], str]:
    """`images.decode_files` through the cache; the last item says what happened ("hit", "stored" or "off")."""
    paths = [str(p) for p in paths]
    if not enabled(len(paths)):
        return (*decode_files(paths, size_hw, channels), "off")
    key = files_key(paths, "decode", list(size_hw), channels)
    path = cache_dir() / f"{key[:32]}.safetensors"
    entry = _read_entry(path, key, len(paths), (channels, *size_hw))
    if entry is not None:
        return (*entry, "hit")
    images, ok, errors = decode_files(paths, size_hw, channels)
    ok_t = torch.from_numpy(ok.astype(np.uint8))
    meta = {"key": key, "digest": _digest(images, ok_t), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "errors": json.dumps({str(i): e for i, e in enumerate(errors) if e}), "version": str(CACHE_VERSION)}
    try:
        atomic_write_bytes(path, save({"images": images, "ok": ok_t}, metadata=meta))
        _trim(path.parent)
    except OSError as e:  # a full or read-only disk costs the next run time, not this one its data
        warnings.warn(f"could not write the decoded-image cache to {path} ({e.strerror or e}); set "
                      "LEANVISION_CACHE_DIR to a writable folder to reuse decoded images", stacklevel=2)
        return images, ok, errors, "off"
    return images, ok, errors, "stored"


def probe_files_cached(paths: Sequence[str]) -> list[tuple[tuple[int, int, str] | None, str]]:
    """`images.probe_files` (size and mode from each header) through the cache, keyed like the decoded arrays."""
    paths = [str(p) for p in paths]
    if not enabled(len(paths)):
        return probe_files(paths)
    key = files_key(paths, "probe")
    path = cache_dir() / f"{key[:32]}.probe.json"
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == key and len(stored["infos"]) == len(paths):
            os.utime(path)
            return [((int(i[0]), int(i[1]), str(i[2])) if i else None, str(e)) for i, e in stored["infos"]]
        _refuse(path, "its key does not match the files")
    except (FileNotFoundError, NotADirectoryError, PermissionError):  # no entry, or a cache folder we cannot read
        pass
    except Exception as e:
        _refuse(path, f"{type(e).__name__}")
    infos = probe_files(paths)
    try:
        atomic_write_text(path, json.dumps({"key": key, "infos": infos}))
    except OSError:
        pass
    return infos
