"""The training loop: `fit(model, dataset, config, out_dir)`.

Data stays in memory as uint8 tensors and is batched by tensor indexing (no per-image Python work); normalization
and augmentation run on whole batches on the training device. Every epoch writes, atomically: a metrics line, the
last and best weights (safetensors) and a resumable checkpoint. Ctrl-C saves a mid-epoch checkpoint; `resume=True`
continues to the same final result (same seed, same data order, same RNG streams). A NaN/inf loss stops the run and
keeps the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .accel.compile import compile_for_training
from .accel.devices import LossTracker, prepare_input, prepare_model, setup_train_device, step_done
from .config import TrainConfig
from .data.core import ImageSet, batch_order
from .errors import LeanvisionError, TrainingDiverged
from .io import append_jsonl, load_state, save_state, save_weights
from .models import regularization_loss

CHECKPOINT = "checkpoint.safetensors"
PRENORMALIZE_MAX_BYTES = 2 * 1024**3  # normalize the train split once into float32 when it fits in this much
METRICS = "metrics.jsonl"


class TrainingInterrupted(LeanvisionError):
    """Ctrl-C during training; a resumable checkpoint was saved."""


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def learning_rate_at(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    onecycle follows Smith & Topin (2018) as PyTorch's OneCycleLR does: linear warm-up from lr/25 to lr over the first
    25% (or `warmup_epochs`), then cosine annealing to lr/1e4. Momentum is not cycled.
    """
    lr = cfg.learning_rate
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        warmup = warmup or max(1, int(0.25 * total_steps))
        if step < warmup:
            return lr / 25 + (lr - lr / 25) * step / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return lr / 1e4 + (lr - lr / 1e4) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if step < warmup:
        return lr * (step + 1) / warmup
    if cfg.schedule == "cosine":
        t = (step - warmup) / max(1, total_steps - warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return lr  # constant, or warmup (constant after warm-up)


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batch-level augmentation of normalized images (B, C, H, W): random crop with zero padding and/or h-flip."""
    if mode in ("crop", "crop-flip"):
        b, c, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        x = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2).contiguous()
    if mode in ("flip", "crop-flip"):
        flip = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def normalizer(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    """Return `f(uint8 batch) -> float batch` computing (x/255 - mean) / std per channel on `device`."""
    scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32, device=device))).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    shift = (mean_t / torch.tensor(std, dtype=torch.float32, device=device)).view(1, -1, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, non_blocking=True).float().mul_(scale).sub_(shift)

    return normalize


class _NormalizedSplit:
    """An in-memory train split normalized once into float32 on the training device, batched exactly like ImageSet
    (same order for the same generator), so no step pays for uint8 -> float conversion."""

    def __init__(self, split: ImageSet, normalize, device: torch.device):
        self.images, self.labels = normalize(split.images), split.labels.to(device)
        self.num_batches = split.num_batches

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, start_batch: int = 0):
        for idx in batch_order(len(self), batch_size, shuffle, generator, drop_last, start_batch):
            idx = idx.to(self.images.device) if isinstance(idx, torch.Tensor) else idx
            yield self.images[idx], self.labels[idx]


def autocast(device: torch.device, precision: str):
    """Autocast context for `precision` (fp32: none). fp16 autocast is CUDA-only here (slow or missing on CPU)."""
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise LeanvisionError(f"precision fp16 needs a CUDA device (got {device}). Use --precision bf16 on CPU.")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(model: nn.Module, split, mean, std, device: torch.device, *, batch_size: int = 1000,
                   precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and labels (N,) of a whole split, in eval mode, on CPU."""
    normalize = normalizer(mean, std, device)
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    with autocast(device, precision):
        for xb, yb in split.batches(batch_size):
            outputs.append(model(normalize(xb)).float().cpu())
            labels.append(yb)
    model.train(was_training)
    if not outputs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(outputs), torch.cat(labels)


def _evaluate(model, split, mean, std, device, precision) -> dict[str, float]:
    if split is None or len(split) == 0:
        return {}
    logits, labels = predict_logits(model, split, mean, std, device, precision=precision)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return {"loss": F.cross_entropy(logits, labels).item(), "accuracy": accuracy}


@contextmanager
def _sigint_flag():
    """Turn the first Ctrl-C into a flag checked between steps; a second Ctrl-C interrupts immediately."""
    state = {"hit": False}

    def handler(signum, frame):
        if state["hit"]:
            raise KeyboardInterrupt
        state["hit"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def _resolve_augment(cfg: TrainConfig, channels: int) -> str:
    if cfg.augment != "auto":
        return cfg.augment
    return "crop-flip" if channels == 3 else "none"


def fit(model: nn.Module, dataset, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
        progress: bool = True, interrupt_at_step: int | None = None,
        on_epoch_end: Callable[[dict[str, Any], nn.Module], None] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        ) -> list[dict[str, Any]]:
    """Train `model` on `dataset.train`, validating on `dataset.val` each epoch; returns the per-epoch history.

    Writes into `out_dir`: metrics.jsonl, last.safetensors, best.safetensors (best validation accuracy) and
    checkpoint.safetensors. `interrupt_at_step` simulates Ctrl-C after that many optimizer steps (for tests).
    `on_epoch_end(record, model)` runs after each epoch's files are written (its time is not in `epoch_time_s`).
    `loss_fn(logits, labels, inputs)` replaces the cross-entropy (with label smoothing) data loss, e.g. for
    distillation; per-layer L1/L2 penalties are still added.

    Example: `history = fit(create_model("compact"), load_dataset("digits"), TrainConfig(epochs=2), "runs/a")`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = setup_train_device(cfg)  # CUDA allocator/cuDNN options, TPU via XLA; this rank's GPU under torchrun
    prepare_model(model, device, channels_last=cfg.channels_last)
    # -- data parallelism (torchrun, see distributed.py): `net` runs the training forward, `model` holds the weights
    dp = distributed.DataParallel(model, device, cfg.batch_size) if distributed.active() else None
    net, main = (dp.ddp, dp.rank == 0) if dp is not None else (model, True)  # only rank 0 writes files
    # -- end data parallelism
    augment = _resolve_augment(cfg, dataset.input_shape[0])
    normalize = normalizer(dataset.mean, dataset.std, device)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None
    aug_seed = cfg.seed + 17 + (7919 * dp.rank if dp is not None else 0)  # each rank its own augmentation stream
    aug_gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(aug_seed)
    train = dataset.train
    if isinstance(train, ImageSet) and train.images.numel() * 4 <= PRENORMALIZE_MAX_BYTES:
        train = _NormalizedSplit(train, normalize, device)
    if len(train) == 0:
        raise LeanvisionError("The training split is empty. Expected at least one training image.")
    remainder = len(train) % cfg.batch_size  # BatchNorm cannot train on a batch of one (per rank under torchrun)
    drop_last = 0 < remainder < 2 * (dp.world_size if dp is not None else 1) and len(train) > remainder
    steps_per_epoch = train.num_batches(cfg.batch_size, drop_last=drop_last)
    compile_time_s = None
    if cfg.compile:  # compile now, timed apart, one static graph per batch shape (the last batch may be smaller)
        sizes = [min(cfg.batch_size, len(train))] + ([remainder] if remainder and not drop_last else [])
        shapes = [((dp.local_size(s) if dp is not None else s), *dataset.input_shape) for s in sizes]
        net, compile_time_s = compile_for_training(net, device, shapes, lambda: autocast(device, cfg.precision),
                                                   channels_last=cfg.channels_last)
        if main:  # say it now: compilation can take longer than the training itself
            print(f"torch.compile: training step compiled in {compile_time_s:.1f} s ({len(set(shapes))} batch "
                  "shape(s); not counted in epoch times)", file=sys.stderr, flush=True)
    val_split = dp.shard_split(dataset.val) if dp is not None else dataset.val
    total_steps = steps_per_epoch * cfg.epochs
    regularized = any(hasattr(m, "kernel_regularizer") for m in model.modules())

    history: list[dict[str, Any]] = []
    start_epoch, start_step, global_step = 0, 0, 0
    best_acc, bad_epochs = -1.0, 0
    running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
    if resume:
        state = load_state(out / CHECKPOINT)
        if {**state["config"], "epochs": cfg.epochs} != _config_for_compare(cfg):  # --epochs may extend a run
            from .config import config_diff

            raise LeanvisionError(f"Cannot resume {out}: its training config differs from the one given "
                                  f"({'; '.join(config_diff(state['config'], _config_for_compare(cfg)))}). "
                                  "Resume with the same options, or start a new --out.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        aug_gen.set_state(state["rng"]["aug"])
        start_epoch, start_step, global_step = state["epoch"], state["step"], state["global_step"]
        best_acc, bad_epochs = state["best_acc"], state["bad_epochs"]
        history, running = state["history"], state["running"]

    def checkpoint(epoch: int, step: int) -> None:
        save_state(out / CHECKPOINT, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"torch": torch.get_rng_state(), "aug": aug_gen.get_state()},
            "epoch": epoch, "step": step, "global_step": global_step, "best_acc": best_acc,
            "bad_epochs": bad_epochs, "history": history, "running": running, "config": _config_for_compare(cfg),
        })

    bar = _Progress(enabled=progress and main, total_epochs=cfg.epochs, steps_per_epoch=steps_per_epoch)
    flag = _sigint_flag() if dp is None else nullcontext({"hit": False})  # torchrun: Ctrl-C stops all ranks
    with flag as sigint, bar:
        for epoch in range(start_epoch, cfg.epochs):
            if epoch > start_epoch or start_step == 0:
                running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
            model.train()
            order = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # same order after a resume
            bar.start_epoch(epoch, start_step if epoch == start_epoch else 0)
            correct = torch.zeros((), dtype=torch.long, device=device)
            losses = LossTracker(device)  # reads the loss every step, every 50 on XLA (no per-step host sync)
            tick = time.perf_counter()
            batches = train.batches(cfg.batch_size, shuffle=True, generator=order, drop_last=drop_last,
                                    start_batch=start_step if epoch == start_epoch else 0)
            batches = dp.shard(batches) if dp is not None else batches  # this rank's slice of each global batch
            step = start_step if epoch == start_epoch else 0
            learning_rate = learning_rate_at(max(0, global_step - 1), total_steps, steps_per_epoch, cfg)
            for xb, yb in batches:
                learning_rate = learning_rate_at(global_step, total_steps, steps_per_epoch, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate
                x = normalize(xb) if xb.dtype == torch.uint8 else xb
                x = augment_batch(x, augment, aug_gen) if augment != "none" else x
                x = prepare_input(x, cfg.channels_last)
                y = yb.to(device, non_blocking=True)
                with autocast(device, cfg.precision):
                    logits = net(x)
                if loss_fn is None:
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                else:
                    loss = loss_fn(logits.float(), y, x)
                if regularized:
                    loss = loss + regularization_loss(model)
                loss_value = losses.add(loss, len(yb))
                if not math.isfinite(loss_value):
                    last_good = f"the last good checkpoint (epoch {epoch}) is kept" if epoch else "nothing was saved"
                    raise TrainingDiverged(
                        f"Loss became {loss_value} at epoch {epoch + 1}, step {step + 1} (lr={learning_rate:.3g}); "
                        f"{last_good} in {out}. Lower --lr, or use --precision fp32."
                    )
                optimizer.zero_grad(set_to_none=True)
                if dp is not None:
                    loss = loss * dp.loss_weight(len(yb))  # DDP averages gradients over ranks
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                step_done(device)  # XLA: run the traced step now
                running["loss_sum"] += losses.pop()  # python float64, same sum however the epoch is split
                correct += (logits.detach().argmax(1) == y).sum()
                step += 1
                global_step += 1
                running["seen"] += len(yb)
                bar.advance(loss_value, correct, running, time.perf_counter() - tick + running["time"])
                if sigint["hit"] or (interrupt_at_step is not None and global_step == interrupt_at_step):
                    running["loss_sum"] += losses.flush()
                    running["correct"] += int(correct.item())
                    running["time"] += time.perf_counter() - tick
                    if main:
                        checkpoint(epoch, step)
                    raise TrainingInterrupted(
                        f"Interrupted at epoch {epoch + 1}, step {step}; checkpoint saved in {out}. "
                        "Run the same command with --resume to continue."
                    )
            running["loss_sum"] += losses.flush()
            if not math.isfinite(running["loss_sum"]):  # XLA: the last steps' losses are only read here
                raise TrainingDiverged(f"Loss became {running['loss_sum']} in epoch {epoch + 1}; the last good "
                                       f"checkpoint is kept in {out}. Lower --lr, or use --precision fp32.")
            running["correct"] += int(correct.item())
            running["time"] += time.perf_counter() - tick
            totals = running
            if dp is not None:  # every rank gets rank 0's BatchNorm statistics; train metrics summed over ranks
                dp.sync_buffers(model)
                totals = dp.reduce_running(running)
            val = _evaluate(model, val_split, dataset.mean, dataset.std, device, cfg.precision)
            if dp is not None:  # each rank validated its shard
                val = dp.reduce_means(val, len(val_split) if val_split is not None else 0)
            record = {
                "epoch": epoch + 1,
                "train_loss": totals["loss_sum"] / max(1, totals["seen"]),
                "train_accuracy": totals["correct"] / max(1, totals["seen"]),
                "val_loss": val.get("loss"),
                "val_accuracy": val.get("accuracy"),
                "learning_rate": learning_rate,
                "epoch_time_s": running["time"],
                "train_images_per_s": totals["seen"] / max(running["time"], 1e-9),
            }
            if compile_time_s is not None:  # compiled before the first epoch of this call, not in epoch_time_s
                record["compile_time_s"], compile_time_s = compile_time_s, None
            history.append(record)
            bar.end_epoch(record)
            score = record["val_accuracy"] if record["val_accuracy"] is not None else record["train_accuracy"]
            improved = score > best_acc
            if improved:
                best_acc, bad_epochs = score, 0
                if main:
                    save_weights(out / "best.safetensors", model.state_dict(), {"epoch": epoch + 1})
            else:
                bad_epochs += 1
            start_step = 0
            if main:
                save_weights(out / "last.safetensors", model.state_dict(), {"epoch": epoch + 1})
                checkpoint(epoch + 1, 0)
                append_jsonl(out / METRICS, record)
            if on_epoch_end is not None and main:
                on_epoch_end(record, model)
                model.train()
            if cfg.early_stopping and bad_epochs >= cfg.early_stopping:
                bar.note(f"early stopping: no better validation accuracy for {bad_epochs} epochs")
                break
    distributed.barrier()  # torchrun: rank 0's files are complete before any rank goes on
    return history


def _config_for_compare(cfg: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for key in ("device", "compile", "channels_last", "memory_fraction", "expandable_segments"):
        d.pop(key, None)  # a run may resume on another device, with other speed options
    return d


class _Progress:
    """Live progress bar (rich) with loss, accuracy and images/s; prints one summary line per epoch."""

    def __init__(self, enabled: bool, total_epochs: int, steps_per_epoch: int):
        self.enabled, self.total_epochs, self.steps_per_epoch = enabled, total_epochs, steps_per_epoch
        self.progress = None
        self.task = None
        self._last = 0.0

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=True,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, done: int) -> None:
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch + 1}/{self.total_epochs}", total=self.steps_per_epoch,
                                               completed=done, info="")

    def advance(self, loss: float, correct: torch.Tensor, running: dict[str, Any], elapsed: float) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self._last > 0.25:  # reading the accuracy syncs the device: only a few times per second
            self._last = now
            seen = running["seen"]
            accuracy = (running["correct"] + int(correct.item())) / max(1, seen)
            info = f"loss {loss:.4f}  acc {accuracy:.4f}  {seen / max(elapsed, 1e-9):,.0f} img/s"
            self.progress.update(self.task, advance=1, info=info)
        else:
            self.progress.update(self.task, advance=1)

    def end_epoch(self, r: dict[str, Any]) -> None:
        if not self.enabled:
            return
        val = f"val_acc {r['val_accuracy']:.4f}  " if r["val_accuracy"] is not None else ""
        line = (f"epoch {r['epoch']}/{self.total_epochs}  loss {r['train_loss']:.4f}  acc {r['train_accuracy']:.4f}  "
                f"{val}{r['epoch_time_s']:.1f} s  {r['train_images_per_s']:,.0f} img/s")
        self.note(line)

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
