"""What `fit` writes and reads back: the training state (`TrainState`), the resumable checkpoint
(`save_checkpoint`, `resume_state`) and each epoch's files (`save_epoch`: best and last weights, checkpoint,
metrics line). Every file is written atomically; a resumed run continues to the same result (same seed, data
order and RNG streams)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig, config_diff
from ..errors import LeanvisionError
from ..io import append_jsonl, load_state, save_state, save_weights
from .amp import GradientStep
from .optim import fused_optimizer

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"


def fresh_running() -> dict[str, Any]:
    """An epoch's running train totals before its first step."""
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}


@dataclass
class TrainState:
    """Where a run stands: the next epoch and step in it, optimizer steps so far, early-stopping state, the
    per-epoch history and the running totals of the epoch in progress."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_acc: float = -1.0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    running: dict[str, Any] = field(default_factory=fresh_running)


@dataclass
class Trainee:
    """The objects whose state a checkpoint holds besides `TrainState`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    gradient_step: GradientStep
    aug_gen: torch.Generator
    lookahead: Any = None


def save_checkpoint(out: Path, t: Trainee, state: TrainState, cfg: TrainConfig, epoch: int, step: int) -> None:
    """The resumable checkpoint at `epoch`, `step` (the next step to run)."""
    save_state(out / CHECKPOINT, {
        "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
        "scaler": t.gradient_step.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "aug": t.aug_gen.get_state(), "aug_device": t.aug_gen.device.type},
        "epoch": epoch, "step": step, "global_step": state.global_step, "best_acc": state.best_acc,
        "bad_epochs": state.bad_epochs, "history": state.history, "running": state.running,
        "config": config_for_compare(cfg), "lookahead": t.lookahead.state_dict() if t.lookahead is not None else None,
    })


def save_epoch(out: Path, t: Trainee, state: TrainState, cfg: TrainConfig, record: dict[str, Any],
               improved: bool) -> None:
    """The files of a finished epoch: best weights (when `improved`), last weights, checkpoint, metrics line."""
    epoch = record["epoch"]
    if improved:
        save_weights(out / "best.safetensors", t.model.state_dict(), {"epoch": epoch})
    save_weights(out / "last.safetensors", t.model.state_dict(), {"epoch": epoch})
    save_checkpoint(out, t, state, cfg, epoch, 0)
    append_jsonl(out / METRICS, record)


def resume_state(out: Path, t: Trainee, cfg: TrainConfig, aug_seed: int, device: torch.device,
                 main: bool) -> TrainState:
    """Load the checkpoint in `out` into `t` and return its `TrainState`; refuse another config (only `epochs`
    may grow, and the speed options differ)."""
    state = load_state(out / CHECKPOINT)
    saved = {**config_for_compare(TrainConfig()), **state["config"]}  # fields newer than the checkpoint
    if {**saved, "epochs": cfg.epochs} != config_for_compare(cfg):  # --epochs may extend a run
        raise LeanvisionError(f"Cannot resume {out}: its training config differs from the one given "
                              f"({'; '.join(config_diff(saved, config_for_compare(cfg)))}). "
                              "Resume with the same options, or start a new `out`.")
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    for group in t.optimizer.param_groups:  # a CUDA checkpoint's fused=True must not follow it to another device
        if "fused" in group:
            group["fused"] = True if fused_optimizer(type(t.optimizer), device) else None
    t.gradient_step.load_state_dict(state.get("scaler"))
    torch.set_rng_state(state["rng"]["torch"])
    start_epoch, start_step = state["epoch"], state["step"]
    if start_epoch > cfg.epochs or (start_epoch == cfg.epochs and start_step > 0):
        raise LeanvisionError(f"Cannot resume {out} with epochs={cfg.epochs}: it has already trained "
                              f"{start_epoch + (start_step > 0)} epochs. Give a larger `epochs` to extend it, "
                              "or start a new `out`.")
    if start_epoch == cfg.epochs and main:  # finished: the result is only re-evaluated
        print(f"note: nothing to train: {out} has already trained {start_epoch} epochs (give a larger `epochs` "
              "to extend it); its result is re-evaluated.", file=sys.stderr, flush=True)
    restore_generator(t.aug_gen, state["rng"], aug_seed, state["global_step"])
    if t.lookahead is not None:
        t.lookahead.load_state_dict(state.get("lookahead"))
    return TrainState(epoch=start_epoch, step=start_step, global_step=state["global_step"],
                      best_acc=state["best_acc"], bad_epochs=state["bad_epochs"], history=state["history"],
                      running=state["running"])


def restore_generator(generator: torch.Generator, rng: dict[str, Any], seed: int, global_step: int) -> None:
    """Restore the augmentation generator saved in a checkpoint; when the checkpoint comes from another device type
    (a CUDA generator state is 16 bytes, a CPU one 5056), re-seed it deterministically from (seed, step) instead:
    the run continues reproducibly, though not bit-identical to one that never changed device."""
    state = rng["aug"]
    same_type = rng.get("aug_device", generator.device.type) == generator.device.type  # old checkpoints: no type
    if same_type and state.numel() == generator.get_state().numel():
        generator.set_state(state)
    else:
        generator.manual_seed(seed * 1_000_003 + global_step)


def config_for_compare(cfg: TrainConfig) -> dict[str, Any]:
    """`cfg` as compared on resume: without the options a resumed run may change."""
    d = dataclasses.asdict(cfg)
    for key in ("device", "compile", "channels_last", "memory_fraction", "expandable_segments"):
        d.pop(key, None)  # a run may resume on another device, with other speed options
    return d
