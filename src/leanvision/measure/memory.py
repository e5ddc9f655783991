"""Peak memory of one call: exact on CUDA (allocator statistics), approximate on CPU (sampled RSS)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import torch

_STATM = "/proc/self/statm"
_SAMPLE_INTERVAL_S = 0.001


def peak_memory(fn: Callable[[], Any], device: torch.device | str) -> int | None:
    """Extra memory, in bytes, that `fn()` used at its peak above what was in use before it ran.

    On CUDA this is exact for tensors: the caching allocator's `max_memory_allocated` after
    `reset_peak_memory_stats`, minus the bytes allocated before (it excludes the allocator's cache, cuDNN
    workspaces outside it and the CUDA context). Note that it resets the device's peak counter.

    On CPU it is an approximation: the process's resident set size (RSS, from `/proc/self/statm`) is sampled
    about every millisecond by a background thread while `fn` runs, plus once after it returns, and the RSS
    before the call is subtracted. Allocations shorter than a sample interval can be missed, memory freed
    before `fn` and reused inside it is not counted, and other threads of the process are counted too.
    Returns None where it cannot be measured (no `/proc`, e.g. macOS or Windows; MPS).

    Example: `peak_memory(lambda: model(x), torch.device("cpu"))`.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _peak_cuda(fn, device)
    if device.type == "cpu":
        return _peak_cpu_rss(fn)
    return None


def _peak_cuda(fn: Callable[[], Any], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def _read_rss_bytes(page_size: int) -> int:
    with open(_STATM, "rb") as f:
        return int(f.read().split()[1]) * page_size  # fields: size resident shared ... (in pages)


def _peak_cpu_rss(fn: Callable[[], Any]) -> int | None:
    try:
        page_size = os.sysconf("SC_PAGE_SIZE")
        before = _read_rss_bytes(page_size)
    except (OSError, ValueError, AttributeError, IndexError):
        return None
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _read_rss_bytes(page_size))
            stop.wait(_SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, name="leanvision-rss-sampler", daemon=True)
    sampler.start()
    try:
        result = fn()  # kept alive for the final sample: memory still held (or returned) when fn ends counts
    finally:
        stop.set()
        sampler.join()
    peak = max(peak, _read_rss_bytes(page_size))
    del result
    return max(0, peak - before)


def peak_tensor_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensors created by `fn()` and alive at the same time (activations, outputs, workspaces that
    PyTorch allocates as tensors), on any device.

    Unlike the RSS delta this does not depend on what the allocator cached earlier in the process, so variants
    measured one after another are comparable. Tensors that existed before `fn` (weights, inputs) are not counted;
    memory allocated inside fused kernels without a tensor (e.g. oneDNN scratch) is not seen.

    Example: `peak_tensor_memory(lambda: model(x))`.
    """
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    state = {"live": 0, "peak": 0}
    live_ptrs: set[int] = set()

    def release(ptr: int, nbytes: int) -> None:
        if ptr in live_ptrs:
            live_ptrs.discard(ptr)
            state["live"] -= nbytes

    class _Tracker(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and not t.is_meta:
                    storage = t.untyped_storage()
                    ptr, nbytes = storage.data_ptr(), storage.nbytes()
                    if nbytes and ptr not in live_ptrs:  # views and in-place results share a known storage
                        live_ptrs.add(ptr)
                        state["live"] += nbytes
                        state["peak"] = max(state["peak"], state["live"])
                        weakref.finalize(t, release, ptr, nbytes)
            return out

    with _Tracker():
        result = fn()
    del result
    return state["peak"]
