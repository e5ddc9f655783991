"""The training loop: `fit(model, dataset, config, out_dir)`, one screen of epochs and steps around the pieces
that live next to it: `ranks` (torchrun data parallelism), `amp` (the optimizer step with loss scaling, XLA step
cut), `checkpoint` (state, resume, each epoch's files), `progress` (bar, epoch lines, metrics record), `stopping`
(Ctrl-C, divergence), `placement` (where the train split lives), `optim` and `augment`.

Data stays in memory as uint8 tensors and is batched by tensor indexing (no per-image Python work); normalization
and augmentation run on whole batches on the training device. Every epoch writes, atomically: a metrics line, the
last and best weights (safetensors) and a resumable checkpoint. Ctrl-C saves a mid-epoch checkpoint; `resume=True`
continues to the same final result (same seed, same data order, same RNG streams). A NaN/inf loss stops the run and
keeps the last good checkpoint.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..compile import compile_for_training
from ..config import TrainConfig
from ..data.normalize import normalizer
from ..device import autocast, check_autocast, prepare_input, prepare_model, setup_train_device
from ..lookahead import Lookahead
from ..loss_tracker import LossTracker
from ..models import regularization_loss
from ..runtimes.eager import predict_logits
from .amp import GradientStep
from .augment import augment_batch, resolve_augment
from .checkpoint import Trainee, TrainState, fresh_running, resume_state, save_checkpoint, save_epoch
from .optim import learning_rate_at, make_optimizer, set_learning_rate
from .placement import init_sample, place_train_split
from .progress import Progress, epoch_record
from .ranks import ranks_for
from .stopping import interrupted, should_interrupt, stop_if_diverged

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fit(model: nn.Module, dataset, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
        progress: bool = True, on_epoch_end: Callable[[dict[str, Any], nn.Module], None] | None = None,
        loss_fn: LossFn | None = None, epoch_lines: bool | None = None) -> list[dict[str, Any]]:
    """Train `model` on `dataset.train`, validating on `dataset.val` each epoch; returns the per-epoch history.

    Writes into `out_dir`: metrics.jsonl, last.safetensors, best.safetensors (best validation accuracy) and
    checkpoint.safetensors. `on_epoch_end(record, model)` runs after each epoch's files are written (its time is
    not in `epoch_time_s`). `loss_fn(logits, labels, inputs)` replaces the cross-entropy (with label smoothing)
    data loss, e.g. for distillation; per-layer L1/L2 penalties are still added. `progress` shows a live bar;
    `epoch_lines` (default: `progress`) prints one summary line per epoch to stderr, with or without the bar.

    Example: `history = fit(create_model("compact"), load_dataset("digits"), TrainConfig(epochs=2), "runs/a")`.
    """
    run = _Run(model, dataset, cfg, Path(out_dir), resume, loss_fn)
    main = run.ranks.main  # only rank 0 writes files
    state = resume_state(run.out, run.trainee, cfg, run.aug_seed, run.device, main) if resume else TrainState()
    bar = Progress(enabled=progress and main, total_epochs=cfg.epochs, steps_per_epoch=run.steps_per_epoch,
                   lines=(progress if epoch_lines is None else epoch_lines) and main)
    with run.ranks.sigint() as sigint, bar:
        for epoch in range(state.epoch, cfg.epochs):
            learning_rate = run.train_epoch(state, epoch, bar, sigint)
            totals = run.ranks.end_epoch(model, state.running)
            val = run.ranks.reduce_val(run.evaluate(), run.val_split)
            record = epoch_record(epoch, totals, val, learning_rate, state.running["time"])
            if run.compile_time_s is not None:  # compiled before the first epoch of this call, not in epoch_time_s
                record["compile_time_s"], run.compile_time_s = run.compile_time_s, None
            state.history.append(record)
            bar.end_epoch(record)
            score = record["val_accuracy"] if record["val_accuracy"] is not None else record["train_accuracy"]
            improved = score > state.best_acc
            state.best_acc, state.bad_epochs = (score, 0) if improved else (state.best_acc, state.bad_epochs + 1)
            state.epoch, state.step = epoch + 1, 0
            if main:
                save_epoch(run.out, run.trainee, state, cfg, record, improved)
            if on_epoch_end is not None and main:
                on_epoch_end(record, model)
                model.train()
            if cfg.early_stopping and state.bad_epochs >= cfg.early_stopping:
                bar.note(f"early stopping: no better validation accuracy for {state.bad_epochs} epochs")
                break
    distributed.barrier()  # torchrun: rank 0's files are complete before any rank goes on
    return state.history


class _Run:
    """Everything `fit` builds before its first step (device, data placement, optimizer, compiled step, RNG
    streams), and one epoch of steps (`train_epoch`)."""

    def __init__(self, model: nn.Module, dataset, cfg: TrainConfig, out: Path, resume: bool, loss_fn: LossFn | None):
        out.mkdir(parents=True, exist_ok=True)
        self.model, self.dataset, self.cfg, self.out, self.loss_fn = model, dataset, cfg, out, loss_fn
        self.device = device = setup_train_device(cfg)  # CUDA allocator/cuDNN, TPU via XLA; this rank's GPU
        prepare_model(model, device, channels_last=cfg.channels_last)
        self.ranks = ranks_for(model, device, cfg.batch_size)
        self.augment = resolve_augment(cfg, dataset.input_shape[0])
        self.normalize = normalizer(dataset.mean, dataset.std, device)
        check_autocast(device, cfg.precision)  # MPS/XLA: bf16 autocast depends on the torch and OS version
        optimizer = make_optimizer(model, cfg, device)
        self.aug_seed = cfg.seed + 17 + 7919 * self.ranks.rank  # each rank its own augmentation stream
        aug_gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(self.aug_seed)
        self.train = place_train_split(dataset.train, self.normalize, device)
        remainder = len(self.train) % cfg.batch_size  # BatchNorm cannot train on a batch of one (per rank)
        self.drop_last = 0 < remainder < 2 * self.ranks.world_size and len(self.train) > remainder
        self.steps_per_epoch = self.train.num_batches(cfg.batch_size, drop_last=self.drop_last)
        self.net, self.compile_time_s = self.ranks.net, None
        if cfg.compile:  # compile now, timed apart, one static graph per batch shape (the last may be smaller)
            sizes = [min(cfg.batch_size, len(self.train))] + ([remainder] if remainder and not self.drop_last else [])
            shapes = [(self.ranks.local_size(s), *dataset.input_shape) for s in sizes]
            self.net, self.compile_time_s = compile_for_training(self.net, device, shapes,
                                                                 lambda: autocast(device, cfg.precision),
                                                                 channels_last=cfg.channels_last)
            if self.ranks.main:  # say it now: compilation can take longer than the training itself
                print(f"torch.compile: training step compiled in {self.compile_time_s:.1f} s ({len(set(shapes))} "
                      "batch shape(s); not counted in epoch times)", file=sys.stderr, flush=True)
        self.val_split = self.ranks.shard_split(dataset.val)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.regularized = any(hasattr(m, "kernel_regularizer") for m in model.modules())
        lookahead = Lookahead(model, self.total_steps) if cfg.lookahead else None
        if not resume and hasattr(model, "init_from_data"):  # whitenet's whitening filters from patches (once)
            model.init_from_data(init_sample(self.train, self.normalize, cfg.seed))
        self.trainee = Trainee(model, optimizer, GradientStep(optimizer, device, cfg.precision), aug_gen, lookahead)

    def train_epoch(self, state: TrainState, epoch: int, bar: Progress, sigint: dict) -> float:
        """Run epoch `epoch` from step `state.step` into `state.running`; returns its last learning rate."""
        cfg, t, ranks = self.cfg, self.trainee, self.ranks
        if state.step == 0:
            state.running = fresh_running()
        running = state.running
        self.model.train()
        order = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # same order after a resume
        bar.start_epoch(epoch, state.step)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        losses = LossTracker(self.device, ranks.loss_check_every)  # no per-step sync on CUDA/XLA
        tick = time.perf_counter()
        batches = ranks.shard(self.train.batches(cfg.batch_size, shuffle=True, generator=order,
                                                 drop_last=self.drop_last, start_batch=state.step))
        learning_rate = learning_rate_at(max(0, state.global_step - 1), self.total_steps, self.steps_per_epoch, cfg)
        for xb, yb in batches:
            learning_rate = learning_rate_at(state.global_step, self.total_steps, self.steps_per_epoch, cfg)
            set_learning_rate(t.optimizer, learning_rate)
            logits, y, loss = self.forward(xb, yb)
            t.gradient_step.step(ranks.weighted(loss, len(yb)))
            loss_value = losses.add(loss, len(yb))  # after the step: on XLA a read then costs no extra graph
            if losses.read_last:  # every step on CPU, every 50 on CUDA/XLA and under torchrun: same on all ranks
                stop_if_diverged(loss_value, ranks, self.device, epoch, state.step, learning_rate, self.out)
            running["loss_sum"] = losses.drain_into(running["loss_sum"])  # float64, same however it is read
            correct += (logits.detach().argmax(1) == y).sum()
            state.step += 1
            state.global_step += 1
            if t.lookahead is not None:
                t.lookahead.after_step(state.global_step)
            running["seen"] += len(yb)
            bar.advance(loss, correct, running, time.perf_counter() - tick + running["time"])
            if should_interrupt(sigint, state.global_step):
                self._close_epoch(running, losses, correct, tick, epoch, state.step, learning_rate)
                if ranks.main:
                    save_checkpoint(self.out, t, state, cfg, epoch, state.step)
                raise interrupted(epoch, state.step, self.out)
        self._close_epoch(running, losses, correct, tick, epoch, state.step, learning_rate)
        return learning_rate

    def forward(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalize and augment a batch, run the training forward under autocast; returns (logits, labels, loss)."""
        cfg = self.cfg
        x = self.normalize(xb) if xb.dtype == torch.uint8 else xb
        x = augment_batch(x, self.augment, self.trainee.aug_gen) if self.augment != "none" else x
        x = prepare_input(x, cfg.channels_last)
        y = yb.to(self.device, non_blocking=True)
        with autocast(self.device, cfg.precision):
            logits = self.net(x)
        if self.loss_fn is None:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        else:
            loss = self.loss_fn(logits.float(), y, x)
        if self.regularized:
            loss = loss + regularization_loss(self.model)
        return logits, y, loss

    def _close_epoch(self, running: dict[str, Any], losses: LossTracker, correct: torch.Tensor, tick: float,
                     epoch: int, step: int, learning_rate: float) -> None:
        """Read the epoch's pending losses (CUDA/XLA: the last steps are read here) and counts into `running`."""
        running["loss_sum"] = losses.flush_into(running["loss_sum"])
        stop_if_diverged(running["loss_sum"], self.ranks, self.device, epoch, step - 1, learning_rate, self.out)
        running["correct"] += int(correct.item())
        running["time"] += time.perf_counter() - tick

    def evaluate(self) -> dict[str, float]:
        """Validation loss and accuracy (this rank's shard), or {} without a validation split."""
        split = self.val_split
        if split is None or len(split) == 0:
            return {}
        ds = self.dataset
        logits, labels = predict_logits(self.model, split, ds.mean, ds.std, self.device, precision=self.cfg.precision)
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return {"loss": F.cross_entropy(logits, labels).item(), "accuracy": accuracy}
