"""One search trial: build the sampled net, train it epoch by epoch with early stopping across trials, compress it,
and measure it; selection sees validation accuracy only (the trial's dataset has no test split at all).

Multi-fidelity (Optuna does not prune multi-objective trials itself): a trial trains its whole schedule in one
`train_run` call under the machine lock's shared side, which it yields between epochs. At every rung (epochs 1, 2,
4, ... below its full schedule) it records (validation accuracy, cost) as the user attribute `rung_<epoch>`, where
the cost is what the other objective is known to grow with before any timing: MACs for latency/throughput/macs, the
parameter count for size. If at least `stop_after` other trials that reached the same rung dominate it there
(accuracy >= and cost <= , one of them strictly), it stops: its state is PRUNED, so samplers ignore it and the
budget goes to the next trial. A trial whose uncompressed fp32 model is already over `max_size_kb` and has no
compression to shrink it stops before training. This is successive halving on epochs with a Pareto rule instead of
a quantile; `benchmarks/search.py` compares it with random sampling without stopping.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import deps
from .space import conv_spec, sample

OBJECTIVES = {"accuracy": "maximize", "latency": "minimize", "throughput": "maximize", "size": "minimize",
              "macs": "minimize"}


class TrialStopped(Exception):
    """Raised inside a trial to stop it early (recorded as PRUNED with the reason)."""


def rungs(epochs: int) -> list[int]:
    out, e = [], 1
    while e < epochs:
        out.append(e)
        e *= 2
    return out


def dominators(trials: list[Any], number: int, key: str, accuracy: float, cost: float) -> int:
    count = 0
    for t in trials:
        point = t.user_attrs.get(key)
        if t.number == number or point is None:
            continue
        a, c = point
        if a >= accuracy and c <= cost and (a > accuracy or c < cost):
            count += 1
    return count


class Measurer:
    """Times a model on one runtime at batch 1 (and 256 for throughput) with `threads` threads, under the lock."""

    def __init__(self, runtime: str, threads: int, lock: deps.MachineLock, repeats: int = 50):
        self.runtime, self.threads, self.lock, self.repeats = runtime, threads, lock, repeats

    def predictor(self, model: Any, input_shape: tuple[int, int, int]) -> Any:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # the ORT session takes its thread count from torch's
        try:
            return deps.get_runtime(self.runtime).prepare(model, torch.zeros((2, *input_shape)))
        finally:
            torch.set_num_threads(previous)

    def time(self, predict: Any, input_shape: tuple[int, int, int], *, batch: int = 1, repeats: int | None = None,
             warmup: int = 10) -> float:
        """Median milliseconds per call of `predict` on a seeded random batch (call under `lock.measuring()`)."""
        x = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(0))
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return deps.measure_latency(lambda: predict(x), warmup=warmup, repeats=repeats or self.repeats).median_ms
        finally:
            torch.set_num_threads(previous)


@dataclasses.dataclass
class TrialContext:
    """What every trial of one worker shares: the search dataset (no test split), space, settings."""

    dataset: Any  # leanvision Dataset with test=None
    space: dict[str, Any]
    objectives: tuple[str, ...]
    out: Path
    measurer: Measurer
    lock: deps.MachineLock
    max_size_kb: float | None = None
    stop_after: int = 3
    fingerprint: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_trial(trial: Any, ctx: TrialContext) -> list[float]:
    """Train, compress and measure one sampled model; returns the objective values. Sets user attributes:
    `run_dir` (the final run), `val_accuracy`, `latency_ms`, `size_kb`, `macs`, `params`, `measured` (runtime,
    threads, machine fingerprint) and `rung_<e>` points; raises TrialStopped to stop early."""
    ds = ctx.dataset
    shape = tuple(ds.input_shape)
    arch, train, compress = sample(ctx.space, trial)
    spec = conv_spec(arch, num_classes=ds.num_classes, input_shape=shape)
    model = deps.create_model(spec, num_classes=ds.num_classes, in_chans=shape[0], img_size=shape[1:])
    params = sum(p.numel() for p in model.parameters())
    macs = deps.count_macs(model, shape)
    cost = params if "size" in ctx.objectives and not {"latency", "throughput", "macs"} & set(ctx.objectives) \
        else macs
    trial.set_user_attr("arch", arch)
    trial.set_user_attr("compress", compress)
    trial.set_user_attr("fp32_params", params)
    compressed = compress["prune_ratio"] > 0 or compress["int8"]
    if ctx.max_size_kb is not None and not compressed and params * 4 / 1024 > ctx.max_size_kb:
        raise TrialStopped(f"fp32 model is {params * 4 / 1024:.1f} kB > max_size_kb={ctx.max_size_kb} and has no "
                           "compression step")
    run_dir = ctx.out / "trials" / f"trial-{trial.number:04d}"
    if run_dir.exists():  # a trial number is never reused; leftovers are from a killed process
        shutil.rmtree(run_dir)
    epochs = int(train["epochs"])
    cfg = deps.RunConfig(model="search-convnet", data=deps.DataConfig(dataset=ds.name),
                         train=deps.TrainConfig(**train_options(train)))
    check = set(rungs(epochs))

    def on_epoch(epoch: int, record: dict[str, Any], hold: Any) -> None:
        hold.pause()  # a measurement waiting on this machine runs between two epochs
        if epoch not in check:
            return
        val = float(record.get("val_accuracy") or 0.0)
        key = f"rung_{epoch}"
        trial.set_user_attr(key, [val, cost])
        beaten_by = dominators(trial.study.get_trials(deepcopy=False), trial.number, key, val, cost)
        if ctx.stop_after and beaten_by >= ctx.stop_after:
            trial.set_user_attr("run_dir", str(run_dir))
            raise TrialStopped(f"dominated at epoch {epoch} (val {val:.4f}, cost {cost:,}) by {beaten_by} trials")

    with ctx.lock.training() as hold:
        watch = EpochWatch(run_dir / "metrics.jsonl", cfg.train.label_smoothing, lambda e, r: on_epoch(e, r, hold))
        result = deps.train_run(cfg, run_dir, progress=False, dataset=ds, model=model, loss_fn=watch)
    final_dir = run_dir
    if compressed:
        final_dir = run_dir.parent / f"{run_dir.name}-compressed"
        chain = deps.build_chain(prune=compress["prune_ratio"] or None, quantize="int8" if compress["int8"] else None,
                                 finetune_epochs=1)
        with ctx.lock.training():  # fine-tuning trains
            optimized = deps.optimize_run(run_dir, chain, final_dir, dataset=ds, progress=False, overwrite=True,
                                          repeats=1)
        val_accuracy = optimized["test_accuracy"]  # the evaluation split of a dataset without test: validation
        macs = optimized["macs"]
    else:
        val_accuracy = result["best_val_accuracy"]
    run = deps.load_run(final_dir)
    size_kb = model_bytes(final_dir) / 1024
    predict = ctx.measurer.predictor(run.model, shape)
    with ctx.lock.measuring():
        latency_ms = ctx.measurer.time(predict, shape)
        throughput = (256 / (ctx.measurer.time(predict, shape, batch=256, repeats=5, warmup=2) / 1e3)
                      if "throughput" in ctx.objectives else None)
    trial.set_user_attr("run_dir", str(final_dir))
    trial.set_user_attr("measured", {"runtime": ctx.measurer.runtime, "batch_size": 1, "dtype": "int8" if
                                     compress["int8"] else "fp32", "threads": ctx.measurer.threads,
                                     "machine": ctx.fingerprint.get("id"), "repeats": ctx.measurer.repeats})
    values = {"accuracy": val_accuracy, "latency": latency_ms, "throughput": throughput, "size": size_kb,
              "macs": float(macs)}
    trial.set_user_attr("val_accuracy", val_accuracy)
    trial.set_user_attr("latency_ms", latency_ms)
    trial.set_user_attr("size_kb", size_kb)
    trial.set_user_attr("macs", int(macs))
    trial.set_user_attr("params", int(run.meta.get("num_params") or params))
    if throughput is not None:
        trial.set_user_attr("throughput_images_per_s", throughput)
    return [float(values[o]) for o in ctx.objectives]


def train_options(train: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled training knobs as `TrainConfig` options on the CPU: `precision: auto` as the `fast` recipe
    resolves it (bf16 autocast with channels-last where the CPU has bf16 instructions), SGD with Nesterov momentum
    0.9 (the `fast` recipe's)."""
    options = {**train, "device": "cpu"}
    if options.get("precision") == "auto":
        options["precision"] = deps.fast_precision("cpu")
    options["channels_last"] = options.get("precision") == "bf16" and deps.fast_channels_last("cpu")
    if options.get("optimizer") == "sgd":
        options.update(momentum=0.9, nesterov=True)
    return options


class EpochWatch:
    """The trainer's loss function for a trial: cross-entropy with label smoothing, as the trainer's own, which also
    notices when an epoch's line lands in metrics.jsonl (one `stat` per step) and calls `on_epoch(epoch, record)`
    at the first step after it; an exception raised there stops the training (the run keeps its best weights)."""

    def __init__(self, path: Path, label_smoothing: float, on_epoch: Any):
        self.path, self.label_smoothing, self.on_epoch = path, label_smoothing, on_epoch
        self.size, self.seen = -1, 0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size != self.size:
            self.size = size
            lines = self.path.read_text().splitlines() if size else []
            if len(lines) > self.seen:
                self.seen = len(lines)
                self.on_epoch(self.seen, json.loads(lines[-1]))
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


def model_bytes(run_dir: Path) -> int:
    for name in ("model.onnx", "best.safetensors", "weights.safetensors"):
        if (run_dir / name).exists():
            return (run_dir / name).stat().st_size
    return sum(p.stat().st_size for p in run_dir.glob("*.safetensors"))
