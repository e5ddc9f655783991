"""Batch-level augmentation on the training device (`augment_batch`) and the `auto` choice (`resolve_augment`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import TrainConfig


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


def resolve_augment(cfg: TrainConfig, channels: int) -> str:
    """The augmentation `cfg.augment` names; `auto`: crop-flip for colour images, none for grayscale."""
    if cfg.augment != "auto":
        return cfg.augment
    return "crop-flip" if channels == 3 else "none"
