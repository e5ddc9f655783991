"""Wall-clock latency and throughput of a zero-argument callable (timm `benchmark.py`, airbench discipline)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated timings of one call, in milliseconds per call."""

    median_ms: float  # the headline number: robust to the odd slow call
    p95_ms: float  # 95th percentile (numpy linear interpolation): tail latency
    mean_ms: float
    min_ms: float  # best case: closest to the hardware's capability
    repeats: int  # timed calls (>= the requested repeats when min_time_s extended the run)
    warmup: int  # untimed calls made first (allocator, caches, lazy init, cudnn autotune)


def measure_latency(
    fn: Callable[[], Any],
    *,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.0,
    sync: Callable[[], None] | None = None,
) -> LatencyStats:
    """Time `fn()` call by call with `time.perf_counter` after `warmup` untimed calls.

    Args:
        fn: the work to time, e.g. `lambda: model(x)`.
        warmup: untimed calls first.
        repeats: timed calls (at least one).
        min_time_s: keep timing past `repeats` until this many seconds of timed calls have elapsed.
        sync: called after each call inside the timed region so asynchronous work is counted, e.g.
            `torch.cuda.synchronize` on a GPU (CUDA kernels return before they finish).

    Example: `measure_latency(lambda: model(x), sync=torch.cuda.synchronize).median_ms`.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(
            f"Invalid timing counts. Expected warmup >= 0 and repeats >= 1. Received: "
            f"warmup={warmup}, repeats={repeats}"
        )
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    times_s: list[float] = []
    elapsed_s = 0.0
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
    )


def measure_throughput(
    fn: Callable[[], Any],
    batch_size: int,
    *,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.0,
    sync: Callable[[], None] | None = None,
) -> dict[str, float | int]:
    """Images per second when `fn()` processes one batch of `batch_size` images, from the median batch time.

    Returns a dict with `images_per_s`, `median_ms_per_batch`, `p95_ms_per_batch`, `batch_size`, `repeats`, `warmup`.
    Example: `measure_throughput(lambda: model(x256), 256)["images_per_s"]`.
    """
    if batch_size < 1:
        raise ValueError(f"Invalid `batch_size`. Expected an integer >= 1. Received: batch_size={batch_size}")
    stats = measure_latency(fn, warmup=warmup, repeats=repeats, min_time_s=min_time_s, sync=sync)
    return {
        "images_per_s": batch_size / (stats.median_ms / 1e3) if stats.median_ms > 0 else float("inf"),
        "median_ms_per_batch": stats.median_ms,
        "p95_ms_per_batch": stats.p95_ms,
        "batch_size": batch_size,
        "repeats": stats.repeats,
        "warmup": stats.warmup,
    }
