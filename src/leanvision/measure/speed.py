"""Speed of a model through an inference runtime: the per-batch-size timing shared by the study, `leanvision
optimize` and `leanvision bench`, all on `timing.measure_latency` (medians after warm-up, device-synchronized).

`time_batches` times a prepared `predict` at several batch sizes (bench's rows, `measure_runtime`'s records);
`speed_b1_b256` is the two-number summary the study and `optimize` report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from ..errors import LeanvisionError
from ..runtimes import Predict, get_runtime
from .timing import LatencyStats, measure_latency


def time_batches(
    predict: Predict,
    input_shape: tuple[int, int, int],
    batch_sizes: Sequence[int],
    *,
    device: torch.device,
    host_input: bool = False,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.0,
    generator: torch.Generator | None = None,
    window: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Iterator[tuple[torch.Tensor, LatencyStats]]:
    """For each batch size: seeded random inputs `(batch_size, C, H, W)` (from `generator`, default seed 0) on
    `device` (on the CPU when `host_input`), timed by `measure_latency` with `device`'s synchronization; yields the
    input and its `LatencyStats` (`first_call_ms`: the first warm-up call alone)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    input_device = torch.device("cpu") if host_input else device
    for batch_size in batch_sizes:
        x = torch.randn((batch_size, *input_shape), generator=generator).to(input_device)
        yield x, measure_latency(lambda: predict(x), warmup=warmup, repeats=repeats, min_time_s=min_time_s,
                                 device=device, window=window)


def images_per_s(batch_size: int, stats: LatencyStats) -> float:
    """Throughput from the median time of one batch."""
    return batch_size / (stats.median_ms / 1e3) if stats.median_ms > 0 else float("inf")


def measure_runtime(
    model: nn.Module,
    runtime_name: str,
    input_shape: tuple[int, int, int],
    *,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    batch_sizes: Sequence[int] = (1, 256),
    warmup: int = 10,
    repeats: int = 50,
) -> list[dict[str, Any]]:
    """Latency and throughput of `model` through one runtime, one record per batch size.

    Inputs are seeded random images `(batch_size, C, H, W)` placed on `device` (on the CPU for runtimes that read
    host memory); device work is synchronized after each call. Each record has `runtime`, `precision`, `device`,
    `batch_size`, `threads`, `latency_median_ms`, `latency_p95_ms`, `latency_mean_ms`, `latency_min_ms`,
    `images_per_s` (from the median), `repeats`, `warmup`, `latency_unit` ("ms/batch"), `throughput_unit`
    ("images/s"), and `providers` when the runtime reports them.

    Example: `measure_runtime(model, "onnxruntime", (3, 32, 32), batch_sizes=(1, 256))`.
    """
    runtime = get_runtime(runtime_name)
    ok, reason = runtime.is_available()
    if not ok:
        raise LeanvisionError(f"Runtime {runtime_name!r} is not available here: {reason}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)  # private RNG: the global torch seed is left alone
    example = torch.randn((2, *input_shape), generator=generator)
    predict = runtime.prepare(model, example, precision=precision, device=device)
    records = []
    for x, stats in time_batches(predict, input_shape, batch_sizes, device=device, host_input=runtime.host_input,
                                 warmup=warmup, repeats=repeats, generator=generator):
        batch_size = len(x)
        record = {
            "runtime": runtime_name,
            "precision": precision,
            "device": str(device),
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            "latency_median_ms": stats.median_ms,
            "latency_p95_ms": stats.p95_ms,
            "latency_mean_ms": stats.mean_ms,
            "latency_min_ms": stats.min_ms,
            "images_per_s": images_per_s(batch_size, stats),
            "repeats": stats.repeats,
            "warmup": stats.warmup,
            "latency_unit": "ms/batch",
            "throughput_unit": "images/s",
        }
        if hasattr(predict, "providers"):
            record["providers"] = list(predict.providers)
        if hasattr(predict, "streams"):
            record["streams"] = predict.streams
        records.append(record)
    return records


def speed_b1_b256(predict: Predict, input_shape: tuple[int, int, int], repeats: int = 50,
                  device: torch.device | str = "cpu") -> dict[str, float]:
    """Batch-1 latency (median, p95) and batch-256 throughput of `predict` on seeded random CPU inputs, the two speeds
    the study and `leanvision optimize` report: `latency_b1_median_ms`, `latency_b1_p95_ms`,
    `throughput_images_per_s` (from the median batch-256 call; `max(5, repeats // 5)` calls after 2 warm-ups).
    `device`: where `predict` computes, synchronized after each call.

    Example: `speed_b1_b256(get_runtime("onnxruntime").prepare(model, x), (1, 28, 28))`.
    """
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn((1, *input_shape), generator=generator)
    x256 = torch.randn((256, *input_shape), generator=generator)
    latency = measure_latency(lambda: predict(x1), warmup=10, repeats=repeats, device=device)
    batch = measure_latency(lambda: predict(x256), warmup=2, repeats=max(5, repeats // 5), device=device)
    return {"latency_b1_median_ms": latency.median_ms, "latency_b1_p95_ms": latency.p95_ms,
            "throughput_images_per_s": 256 / (batch.median_ms / 1e3)}
