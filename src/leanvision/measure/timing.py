"""Wall-clock latency and throughput of a zero-argument callable (timm `benchmark.py`, airbench discipline).

`measure_latency` is the one timing loop of leanvision: the study, `leanvision optimize` and `leanvision bench` all
time through it (via `speed.measure_runtime`, `speed.speed_b1_b256`), with medians after warm-up and, given the
`device`, a device synchronization after every call (CUDA, MPS, XLA; none on the CPU).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..device import synchronize


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated timings of one call, in milliseconds per call."""

    median_ms: float  # the headline number: robust to the odd slow call
    p95_ms: float  # 95th percentile (numpy linear interpolation): tail latency
    mean_ms: float
    min_ms: float  # best case: closest to the hardware's capability
    repeats: int  # timed calls (>= the requested repeats when min_time_s extended the run)
    warmup: int  # untimed calls made first (allocator, caches, lazy init, cudnn autotune)
    first_call_ms: float | None = None  # the first warm-up call alone (compilation, lazy init); None without warm-up


def device_sync(device: torch.device | str | None) -> Callable[[], None] | None:
    """The wait-for-queued-work function for timing on `device`: `device.synchronize` on CUDA, MPS and XLA, None on
    the CPU (and for None). Example: `measure_latency(fn, sync=device_sync("cuda"))`."""
    if device is None or torch.device(device).type == "cpu":
        return None
    device = torch.device(device)
    return lambda: synchronize(device)


def measure_latency(
    fn: Callable[[], Any],
    *,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.0,
    sync: Callable[[], None] | None = None,
    device: torch.device | str | None = None,
    window: Callable[[], AbstractContextManager[Any]] | None = None,
) -> LatencyStats:
    """Time `fn()` call by call with `time.perf_counter` after `warmup` untimed calls.

    Args:
        fn: the work to time, e.g. `lambda: model(x)`.
        warmup: untimed calls first.
        repeats: timed calls (at least one).
        min_time_s: keep timing past `repeats` until this many seconds of timed calls have elapsed.
        sync: called after each call inside the timed region so asynchronous work is counted, e.g.
            `torch.cuda.synchronize` on a GPU (CUDA kernels return before they finish).
        device: where `fn` runs; when `sync` is None, `device_sync(device)` is used (the usual way to call this).
        window: a context-manager factory entered around the timed calls only (after warm-up and a sync), e.g. an
            energy counter read at its start and end.

    Example: `measure_latency(lambda: model(x), device="cuda").median_ms`.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(
            f"Invalid timing counts. Expected warmup >= 0 and repeats >= 1. Received: "
            f"warmup={warmup}, repeats={repeats}"
        )
    sync = sync if sync is not None else device_sync(device)
    first_call_ms = None
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        if i == 0:
            first_call_ms = (time.perf_counter() - start) * 1e3
    times_s: list[float] = []
    elapsed_s = 0.0
    with window() if window is not None else contextlib.nullcontext():
        while len(times_s) < repeats or elapsed_s < min_time_s:
            start = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times_s.append(time.perf_counter() - start)
            elapsed_s += times_s[-1]
    ms = np.asarray(times_s) * 1e3
    return LatencyStats(
        median_ms=float(np.median(ms)),
        p95_ms=float(np.percentile(ms, 95)),
        mean_ms=float(ms.mean()),
        min_ms=float(ms.min()),
        repeats=len(times_s),
        warmup=warmup,
        first_call_ms=first_call_ms,
    )


def measure_throughput(
    fn: Callable[[], Any],
    batch_size: int,
    *,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.0,
    sync: Callable[[], None] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float | int]:
    """Images per second when `fn()` processes one batch of `batch_size` images, from the median batch time.

    Returns a dict with `images_per_s`, `median_ms_per_batch`, `p95_ms_per_batch`, `batch_size`, `repeats`, `warmup`.
    Example: `measure_throughput(lambda: model(x256), 256)["images_per_s"]`.
    """
    if batch_size < 1:
        raise ValueError(f"Invalid `batch_size`. Expected an integer >= 1. Received: batch_size={batch_size}")
    stats = measure_latency(fn, warmup=warmup, repeats=repeats, min_time_s=min_time_s, sync=sync, device=device)
    return {
        "images_per_s": batch_size / (stats.median_ms / 1e3) if stats.median_ms > 0 else float("inf"),
        "median_ms_per_batch": stats.median_ms,
        "p95_ms_per_batch": stats.p95_ms,
        "batch_size": batch_size,
        "repeats": stats.repeats,
        "warmup": stats.warmup,
    }
