"""`leanvision bench`: one table of runtime x precision x batch size for a trained run, to choose the hardware.

Each row holds latency (median and p95 per batch), throughput, the accuracy on the run's test split computed
through that same runtime and precision, the first call's time apart (compilation, lazy initialisation, cuDNN
autotuning), energy per image where a counter is readable (NVML, RAPL), and the cost per million images when a
price per hour is given: `price_per_hour / 3600 / images_per_s * 1e6` (energy: a number, or None with the reason
in `energy_note`). Unavailable runtimes are rows with a `status` saying why when every runtime was asked for
(`all`), and an error when one is asked for by name. A runtime x precision pair that cannot run (onnxruntime in
bf16, fp16 on a CPU) is an `unsupported: ...` row, or an
error when nothing asked for could be measured.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import BenchConfig
from ..data.normalize import normalizer
from ..device import setup_device
from ..errors import LeanvisionError, first_line
from ..measure.speed import images_per_s, time_batches
from ..results import Result
from ..rundir import Run, load_run
from ..runtimes import RUNTIMES, Runtime, get_runtime, predict_batches
from .energy import MIN_WINDOW_S, NOT_MEASURABLE, EnergyMeter, energy_meter

ROW_KEYS = (
    "runtime", "precision", "device", "threads", "batch_size", "status", "latency_median_ms", "latency_p95_ms",
    "latency_unit", "images_per_s", "throughput_unit", "accuracy", "accuracy_split", "accuracy_images",
    "first_call_ms", "compile_time_s", "energy_per_image_j", "energy_unit", "energy_source", "energy_note",
    "cost_per_million_images_usd", "price_per_hour_usd", "repeats", "warmup", "providers", "streams",
)


@dataclass(kw_only=True)
class BenchRow(Result):
    """One `bench` row: a runtime x precision x batch size on a device, with `status` "ok" or why it was not
    measured. Latency in ms per batch (median, p95 of `repeats` calls after `warmup`), throughput in images/s,
    accuracy through this runtime and precision, energy in J/image (None with `energy_note` when not measurable),
    cost in USD per million images (with a price)."""

    runtime: str
    precision: str
    device: str
    threads: int | None = None
    batch_size: int | None = None
    status: str
    latency_median_ms: float | None = None
    latency_p95_ms: float | None = None
    images_per_s: float | None = None
    accuracy: float | None = None
    first_call_ms: float | None = None
    energy_per_image_j: float | None = None
    cost_per_million_images_usd: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def bench_run(run_dir: str | Path | Run, config: BenchConfig = BenchConfig(), data_dir: str | None = None,
              weights: str = "best", model: nn.Module | None = None) -> list[dict[str, Any]]:
    """Measure a trained run on every requested runtime, precision and batch size; returns the rows.

    `run_dir`: a run directory or a loaded `runs.Run`; `model`: the module instance for a run directory trained from
    your own nn.Module.

    Every row has all of `ROW_KEYS` (None where not applicable). Example:
    `rows = bench_run("runs/compact", BenchConfig(runtimes=("torch", "onnxruntime"), batch_sizes=(1,)))`.
    """
    for name in config.runtimes:
        if name != "all":
            RUNTIMES.get(name)  # an unknown name: one line with a close match, before any work
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = setup_device(config.device)  # the same cuDNN autotune setting whatever ran before in this process
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir, weights=weights, model=model)
    dataset = run.load_dataset(data_dir)
    split_name, split = dataset.evaluation_split
    images = normalizer(dataset.mean, dataset.std, torch.device("cpu"))(split.images)
    labels = split.labels
    explicit = "all" not in config.runtimes
    names = list(config.runtimes) if explicit else RUNTIMES.names()
    meter = energy_meter(device)
    rows: list[dict[str, Any]] = []
    unsupported: LeanvisionError | None = None
    for name in names:
        runtime = get_runtime(name)
        ok, reason = runtime.is_available()
        if not ok:
            if explicit:
                raise LeanvisionError(f"Runtime {name!r} is not available here: {reason}")
            rows += [_row(name, p, device, config, status=f"unavailable: {reason}") for p in config.precisions]
            continue
        for precision in config.precisions:
            try:
                rows += _bench_one(runtime, run, precision, device, images, labels, split_name, config, meter)
            except Exception as e:  # noqa: BLE001 - with `all`, one runtime failing is a row, not the end
                if explicit and not isinstance(e, LeanvisionError):
                    raise
                unsupported = unsupported or (e if isinstance(e, LeanvisionError) else None)
                word = "unsupported" if isinstance(e, LeanvisionError) else "failed"
                prefix = "" if isinstance(e, LeanvisionError) else f"{type(e).__name__}: "
                rows.append(_row(name, precision, device, config, status=f"{word}: {prefix}{first_line(e)}"))
    if explicit and unsupported is not None and not any(r["status"] == "ok" for r in rows):
        raise unsupported  # nothing that was asked for by name could be measured
    return rows


def _bench_one(runtime: Runtime, run, precision: str, device: torch.device, images: torch.Tensor,
               labels: torch.Tensor, split_name: str, config: BenchConfig, meter: EnergyMeter) -> list[dict]:
    if precision not in runtime.precisions:
        raise LeanvisionError(f"Runtime {runtime.name!r} supports {', '.join(runtime.precisions)} only. "
                              f"Received: precision={precision!r}. Drop it from `precision`.")
    shape = run.input_shape
    generator = torch.Generator().manual_seed(0)
    predict = runtime.prepare(run.model, torch.randn((2, *shape), generator=generator), precision=precision,
                              device=device)
    joules: list[float] = []  # the energy of each batch size's timed window, when a counter is readable
    rows = []
    for x, stats in time_batches(predict, shape, config.batch_sizes, device=device, host_input=runtime.host_input,
                                 warmup=config.warmup + 1, repeats=config.repeats,  # + 1: the first call, timed apart
                                 min_time_s=MIN_WINDOW_S if meter.available else 0.0, generator=generator,
                                 window=(lambda: _energy_window(meter, joules)) if meter.available else None):
        batch_size = len(x)
        energy = joules.pop() if joules else None
        speed = images_per_s(batch_size, stats)
        compile_times = getattr(predict, "compile_times_s", None)
        row = _row(runtime.name, precision, device, config, status="ok", batch_size=batch_size)
        if run.is_onnx:  # an int8 run: say what really ran
            mode = (run.meta.get("quantization") or {}).get("mode", "int8")  # int8 | int8-dynamic | qat
            row["precision"] = str(mode)
        row.update(
            latency_median_ms=stats.median_ms, latency_p95_ms=stats.p95_ms, images_per_s=speed,
            first_call_ms=stats.first_call_ms, repeats=stats.repeats,
            compile_time_s=compile_times.get(tuple(x.shape)) if compile_times is not None else None,
            energy_per_image_j=energy / (stats.repeats * batch_size) if energy is not None else None,
            energy_source=meter.source or None,
            energy_note=meter.reason if energy is not None else f"{NOT_MEASURABLE}: {meter.reason}",
            providers=list(getattr(predict, "providers", [])) or None, streams=getattr(predict, "streams", None),
        )
        if config.price_per_hour is not None:
            row["cost_per_million_images_usd"] = config.price_per_hour / 3600 / speed * 1e6
        rows.append(row)
    logits = predict_batches(predict, images, batch_size=config.accuracy_batch_size)  # same runtime and precision
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    for row in rows:
        row.update(accuracy=accuracy, accuracy_split=split_name, accuracy_images=len(labels))
    return rows


@contextmanager
def _energy_window(meter: EnergyMeter, out: list[float]) -> Iterator[None]:
    """Append the joules `meter` counted while the block ran to `out`."""
    start = meter.read_joules()
    yield
    out.append(meter.read_joules() - start)


def _row(runtime: str, precision: str, device: torch.device, config: BenchConfig, *, status: str,
         batch_size: int | None = None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(runtime=runtime, precision=precision, device=str(device), threads=torch.get_num_threads(),
               batch_size=batch_size, status=status, latency_unit="ms/batch", throughput_unit="images/s",
               energy_unit="J/image", price_per_hour_usd=config.price_per_hour, warmup=config.warmup)
    return row
