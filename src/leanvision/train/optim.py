"""The optimizer (`make_optimizer`, parameter groups, fused kernels on CUDA) and the learning-rate schedule
(`learning_rate_at`, `set_learning_rate`)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig


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


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Set every parameter group's learning rate to `learning_rate` times the group's `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate * group.get("lr_scale", 1.0)
