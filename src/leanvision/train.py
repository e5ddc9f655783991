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
from .compile import compile_for_training
from .config import TrainConfig
from .data.core import ImageSet, batch_order
from .device import check_autocast, prepare_input, prepare_model, setup_train_device, step_done
from .errors import LeanvisionError, TrainingDiverged, TrainingInterrupted
from .io import append_jsonl, load_state, save_state, save_weights
from .lookahead import Lookahead
from .loss_tracker import LAZY_LOSS_CHECK_EVERY, LossTracker
from .models import regularization_loss

CHECKPOINT = "checkpoint.safetensors"
PRENORMALIZE_MAX_BYTES = 2 * 1024**3  # normalize the train split once into float32 when it fits in this much
DEVICE_UINT8_MAX_FRACTION = 0.25  # else keep the uint8 split on the GPU when it fits in this share of its memory
METRICS = "metrics.jsonl"


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer of `cfg`; on CUDA the fused implementation (one kernel per step, and no host sync in
    GradScaler's step for fp16), elsewhere PyTorch's default."""
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}.get(cfg.optimizer, torch.optim.AdamW)
    kwargs: dict[str, Any] = dict(lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        kwargs.update(momentum=cfg.momentum, nesterov=cfg.nesterov)
    if fused_optimizer(cls, device):
        kwargs["fused"] = True
    return cls(param_groups(model, cfg), **kwargs)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters in one group, or two when `norm_lr_scale` != 1: BatchNorm parameters get that
    multiple of the learning rate and weight decay divided by it (the same decay per step). Each group's `lr_scale`
    is applied to the scheduled learning rate."""
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                for p in m.parameters(recurse=False)} if cfg.norm_lr_scale != 1.0 else set()
    norm = [p for p in model.parameters() if p.requires_grad and id(p) in norm_ids]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in norm_ids]
    scale = cfg.norm_lr_scale
    groups = [{"params": rest, "lr_scale": 1.0}]
    if norm:
        groups.append({"params": norm, "lr_scale": scale, "lr": cfg.learning_rate * scale,
                       "weight_decay": cfg.weight_decay / scale})
    return groups


def fused_optimizer(cls: type, device: torch.device | None) -> bool:
    """Whether `cls` is built with `fused=True` on `device`: CUDA only, where this torch has the argument."""
    import inspect

    return device is not None and device.type == "cuda" and "fused" in inspect.signature(cls.__init__).parameters


def learning_rate_at(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    onecycle follows Smith & Topin (2018) as PyTorch's OneCycleLR does: linear warm-up from lr/25 to lr over the first
    25% (or `warmup_epochs`), then cosine annealing to lr/1e4. Momentum is not cycled. triangle is airbench's:
    linear from lr/5 to lr over the first 23% (or `warmup_epochs`), then linear to 0.07 lr at the end.
    """
    lr = cfg.learning_rate
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "triangle":
        peak = warmup or max(1, int(0.23 * total_steps))
        if step < peak:
            return lr * (0.2 + 0.8 * step / peak)
        return lr * (1 + (0.07 - 1) * min(1.0, (step - peak) / max(1, total_steps - peak)))
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
    """Batch-level augmentation of normalized images (B, C, H, W): random crop with zero padding and/or h-flip;
    translate-flip shifts by up to 2 px with mirrored borders (airbench's augmentation for short schedules)."""
    if mode in ("crop", "crop-flip", "translate-flip"):
        b, c, h, w = x.shape
        pad = 2 if mode == "translate-flip" else pad
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if mode == "translate-flip" else "constant")
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        x = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2).contiguous()
    if mode in ("flip", "crop-flip", "translate-flip"):
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
    """An in-memory train split on the training device, batched exactly like ImageSet (same order for the same
    generator): normalized once into float32 (no step pays for uint8 -> float conversion), or, with
    `normalized=False`, kept as uint8 (normalized per batch on the device). The epoch's permutation is copied to
    the device once, so no batch waits for a host copy."""

    def __init__(self, split: ImageSet, normalize, device: torch.device, normalized: bool = True):
        self.images = normalize(split.images) if normalized else split.images.to(device)
        self.labels = split.labels.to(device)
        self.num_batches = split.num_batches

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, start_batch: int = 0):
        for idx in batch_order(len(self), batch_size, shuffle, generator, drop_last, start_batch, self.images.device):
            yield self.images[idx], self.labels[idx]


def autocast(device: torch.device, precision: str):
    """Autocast context for `precision` (fp32: none). fp16 autocast is CUDA-only here (slow or missing on CPU)."""
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise LeanvisionError(f"precision fp16 needs a CUDA device (got {device}). Use precision='bf16' on CPU.")
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
        epoch_lines: bool | None = None) -> list[dict[str, Any]]:
    """Train `model` on `dataset.train`, validating on `dataset.val` each epoch; returns the per-epoch history.

    Writes into `out_dir`: metrics.jsonl, last.safetensors, best.safetensors (best validation accuracy) and
    checkpoint.safetensors. `interrupt_at_step` simulates Ctrl-C after that many optimizer steps (for tests).
    `on_epoch_end(record, model)` runs after each epoch's files are written (its time is not in `epoch_time_s`).
    `loss_fn(logits, labels, inputs)` replaces the cross-entropy (with label smoothing) data loss, e.g. for
    distillation; per-layer L1/L2 penalties are still added. `progress` shows a live bar; `epoch_lines` (default:
    `progress`) prints one summary line per epoch to stderr, with or without the bar.

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
    check_autocast(device, cfg.precision)  # MPS/XLA: bf16 autocast depends on the torch and OS version
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None
    aug_seed = cfg.seed + 17 + (7919 * dp.rank if dp is not None else 0)  # each rank its own augmentation stream
    aug_gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(aug_seed)
    train = dataset.train
    if isinstance(train, ImageSet) and train.images.numel() * 4 <= PRENORMALIZE_MAX_BYTES:
        train = _NormalizedSplit(train, normalize, device)
    elif isinstance(train, ImageSet) and _fits_on_gpu(train.images.numel(), device):
        train = _NormalizedSplit(train, normalize, device, normalized=False)
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
    lookahead = Lookahead(model, total_steps) if cfg.lookahead else None
    if not resume and hasattr(model, "init_from_data"):  # whitenet's whitening filters from patches (once per model)
        model.init_from_data(_init_sample(train, normalize, cfg.seed))

    history: list[dict[str, Any]] = []
    start_epoch, start_step, global_step = 0, 0, 0
    best_acc, bad_epochs = -1.0, 0
    running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
    if resume:
        state = load_state(out / CHECKPOINT)
        saved = {**_config_for_compare(TrainConfig()), **state["config"]}  # fields newer than the checkpoint
        if {**saved, "epochs": cfg.epochs} != _config_for_compare(cfg):  # --epochs may extend a run
            from .config import config_diff

            raise LeanvisionError(f"Cannot resume {out}: its training config differs from the one given "
                                  f"({'; '.join(config_diff(saved, _config_for_compare(cfg)))}). "
                                  "Resume with the same options, or start a new `out`.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a CUDA checkpoint's fused=True must not follow it to another device
            if "fused" in group:
                group["fused"] = True if fused_optimizer(type(optimizer), device) else None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, start_step, global_step = state["epoch"], state["step"], state["global_step"]
        if start_epoch > cfg.epochs or (start_epoch == cfg.epochs and start_step > 0):
            raise LeanvisionError(f"Cannot resume {out} with epochs={cfg.epochs}: it has already trained "
                                  f"{start_epoch + (start_step > 0)} epochs. Give a larger `epochs` to extend it, "
                                  "or start a new `out`.")
        if start_epoch == cfg.epochs and main:  # finished: the result is only re-evaluated
            print(f"note: nothing to train: {out} has already trained {start_epoch} epochs (give a larger `epochs` "
                  "to extend it); its result is re-evaluated.", file=sys.stderr, flush=True)
        _restore_generator(aug_gen, state["rng"], aug_seed, global_step)
        best_acc, bad_epochs = state["best_acc"], state["bad_epochs"]
        if lookahead is not None:
            lookahead.load_state_dict(state.get("lookahead"))
        history, running = state["history"], state["running"]

    def checkpoint(epoch: int, step: int) -> None:
        save_state(out / CHECKPOINT, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"torch": torch.get_rng_state(), "aug": aug_gen.get_state(), "aug_device": aug_gen.device.type},
            "epoch": epoch, "step": step, "global_step": global_step, "best_acc": best_acc,
            "bad_epochs": bad_epochs, "history": history, "running": running, "config": _config_for_compare(cfg),
            "lookahead": lookahead.state_dict() if lookahead is not None else None,
        })

    bar = _Progress(enabled=progress and main, total_epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                    lines=(progress if epoch_lines is None else epoch_lines) and main)
    flag = _sigint_flag() if dp is None else nullcontext({"hit": False})  # torchrun: Ctrl-C stops all ranks
    with flag as sigint, bar:
        for epoch in range(start_epoch, cfg.epochs):
            if epoch > start_epoch or start_step == 0:
                running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
            model.train()
            order = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # same order after a resume
            bar.start_epoch(epoch, start_step if epoch == start_epoch else 0)
            correct = torch.zeros((), dtype=torch.long, device=device)
            losses = LossTracker(device, LAZY_LOSS_CHECK_EVERY if dp is not None else None)  # no per-step sync
            tick = time.perf_counter()
            batches = train.batches(cfg.batch_size, shuffle=True, generator=order, drop_last=drop_last,
                                    start_batch=start_step if epoch == start_epoch else 0)
            batches = dp.shard(batches) if dp is not None else batches  # this rank's slice of each global batch
            step = start_step if epoch == start_epoch else 0
            learning_rate = learning_rate_at(max(0, global_step - 1), total_steps, steps_per_epoch, cfg)
            for xb, yb in batches:
                learning_rate = learning_rate_at(global_step, total_steps, steps_per_epoch, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate * group.get("lr_scale", 1.0)
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
                optimizer.zero_grad(set_to_none=True)
                weighted = loss * dp.loss_weight(len(yb)) if dp is not None else loss  # DDP averages over ranks
                if scaler is not None:
                    scaler.scale(weighted).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    weighted.backward()
                    optimizer.step()
                step_done(device)  # XLA: run the traced step now
                loss_value = losses.add(loss, len(yb))  # after the step: on XLA a read then costs no extra graph
                if losses.read_last:  # every step on CPU, every 50 on CUDA/XLA and under torchrun: same on all ranks
                    _stop_if_diverged(loss_value, dp, device, epoch, step, learning_rate, out)
                running["loss_sum"] = losses.drain_into(running["loss_sum"])  # float64, same however it is read
                correct += (logits.detach().argmax(1) == y).sum()
                step += 1
                global_step += 1
                if lookahead is not None:
                    lookahead.after_step(global_step)
                running["seen"] += len(yb)
                bar.advance(loss, correct, running, time.perf_counter() - tick + running["time"])
                if sigint["hit"] or (interrupt_at_step is not None and global_step == interrupt_at_step):
                    running["loss_sum"] = losses.flush_into(running["loss_sum"])
                    _stop_if_diverged(running["loss_sum"], dp, device, epoch, step - 1, learning_rate, out)
                    running["correct"] += int(correct.item())
                    running["time"] += time.perf_counter() - tick
                    if main:
                        checkpoint(epoch, step)
                    raise TrainingInterrupted(
                        f"Interrupted at epoch {epoch + 1}, step {step}; checkpoint saved in {out}. "
                        "Run the same command with `resume` to continue."
                    )
            running["loss_sum"] = losses.flush_into(running["loss_sum"])  # CUDA/XLA: the last steps are read here
            _stop_if_diverged(running["loss_sum"], dp, device, epoch, step - 1, learning_rate, out)
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


def _stop_if_diverged(value: float, dp, device: torch.device, epoch: int, step: int, learning_rate: float,
                      out: Path) -> None:
    """Raise `TrainingDiverged` when `value` (a loss or loss sum) is NaN/inf; under torchrun on every rank as soon as
    one rank sees it (an all-reduce of the flag), so no rank is left waiting in the next gradient all-reduce."""
    mine = not math.isfinite(value)
    anyone = distributed.any_rank(mine, device) if dp is not None else mine  # every rank joins the all-reduce
    if anyone:
        last_good = f"the last good checkpoint (epoch {epoch}) is kept" if epoch else "nothing was saved"
        value, where = (value, "") if mine else (float("nan"), " on another rank")
        raise TrainingDiverged(
            f"Loss became {value}{where} at epoch {epoch + 1}, step {step + 1} (lr={learning_rate:.3g}); "
            f"{last_good} in {out}. Lower `learning_rate`, or use precision='fp32'."
        )


def _init_sample(train, normalize, seed: int, count: int = 5000) -> torch.Tensor:
    """Up to `count` normalized training images (a fixed random subset) for a model's data-dependent init."""
    sample, _ = next(iter(train.batches(count, shuffle=True, generator=torch.Generator().manual_seed(seed))))
    return normalize(sample) if sample.dtype == torch.uint8 else sample


def _fits_on_gpu(numel: int, device: torch.device) -> bool:
    """Whether a uint8 train split of `numel` bytes may live on `device`: CUDA, within a share of its memory."""
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return numel <= DEVICE_UINT8_MAX_FRACTION * total


def _restore_generator(generator: torch.Generator, rng: dict[str, Any], seed: int, global_step: int) -> None:
    """Restore the augmentation generator saved in a checkpoint; when the checkpoint comes from another device type
    (a CUDA generator state is 16 bytes, a CPU one 5056), re-seed it deterministically from (seed, step) instead:
    the run continues reproducibly, though not bit-identical to one that never changed device."""
    state = rng["aug"]
    same_type = rng.get("aug_device", generator.device.type) == generator.device.type  # old checkpoints: no type
    if same_type and state.numel() == generator.get_state().numel():
        generator.set_state(state)
    else:
        generator.manual_seed(seed * 1_000_003 + global_step)


def _config_for_compare(cfg: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for key in ("device", "compile", "channels_last", "memory_fraction", "expandable_segments"):
        d.pop(key, None)  # a run may resume on another device, with other speed options
    return d


class _Progress:
    """Live progress bar (rich) with loss, accuracy and images/s; prints one summary line per epoch."""

    def __init__(self, enabled: bool, total_epochs: int, steps_per_epoch: int, lines: bool | None = None):
        self.enabled, self.total_epochs, self.steps_per_epoch = enabled, total_epochs, steps_per_epoch
        self.lines = enabled if lines is None else lines  # per-epoch lines also without the live bar
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

    def advance(self, loss: torch.Tensor, correct: torch.Tensor, running: dict[str, Any], elapsed: float) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self._last > 0.25:  # reading the accuracy syncs the device: only a few times per second
            self._last = now
            seen = running["seen"]
            accuracy = (running["correct"] + int(correct.item())) / max(1, seen)
            info = f"loss {float(loss.detach()):.4f}  acc {accuracy:.2%}  {seen / max(elapsed, 1e-9):,.0f} img/s"
            self.progress.update(self.task, advance=1, info=info)
        else:
            self.progress.update(self.task, advance=1)

    def end_epoch(self, r: dict[str, Any]) -> None:
        if not self.lines:
            return
        val = f"val_acc {r['val_accuracy']:.2%}  " if r["val_accuracy"] is not None else ""
        line = (f"epoch {r['epoch']}/{self.total_epochs}  loss {r['train_loss']:.4f}  acc {r['train_accuracy']:.2%}  "
                f"{val}{r['epoch_time_s']:.1f} s  {r['train_images_per_s']:,.0f} img/s")
        self.note(line)

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        elif self.lines:
            import sys

            print(text, file=sys.stderr, flush=True)
