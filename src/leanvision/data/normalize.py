"""`normalizer`: uint8 image batches to the float batches a model takes, (x/255 - mean) / std per channel, on the
device; the one definition used by training, evaluation, compression, export, bench and the server."""

from __future__ import annotations

import torch


def normalizer(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    """Return `f(uint8 batch) -> float batch` computing (x/255 - mean) / std per channel on `device`."""
    scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32, device=device))).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    shift = (mean_t / torch.tensor(std, dtype=torch.float32, device=device)).view(1, -1, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, non_blocking=True).float().mul_(scale).sub_(shift)

    return normalize
