"""Where the training split lives during `fit`: normalized once into float32 on the device when it fits
(`PRENORMALIZE_MAX_BYTES`), else kept as uint8 on the GPU when it fits there, else streamed from the host
(`place_train_split`); and the sample a model's data-dependent init sees (`init_sample`)."""

from __future__ import annotations

import torch

from ..data.core import ImageSet, batch_order
from ..errors import LeanvisionError

PRENORMALIZE_MAX_BYTES = 2 * 1024**3  # normalize the train split once into float32 when it fits in this much
DEVICE_UINT8_MAX_FRACTION = 0.25  # else keep the uint8 split on the GPU when it fits in this share of its memory


def place_train_split(train, normalize, device: torch.device):
    """`train` as the training loop reads it: a `DeviceSplit` when it fits (see the module docstring), else as is."""
    if isinstance(train, ImageSet) and train.images.numel() * 4 <= PRENORMALIZE_MAX_BYTES:
        train = DeviceSplit(train, normalize, device)
    elif isinstance(train, ImageSet) and fits_on_gpu(train.images.numel(), device):
        train = DeviceSplit(train, normalize, device, normalized=False)
    if len(train) == 0:
        raise LeanvisionError("The training split is empty. Expected at least one training image.")
    return train


class DeviceSplit:
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


def fits_on_gpu(numel: int, device: torch.device) -> bool:
    """Whether a uint8 train split of `numel` bytes may live on `device`: CUDA, within a share of its memory."""
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return numel <= DEVICE_UINT8_MAX_FRACTION * total


def init_sample(train, normalize, seed: int, count: int = 5000) -> torch.Tensor:
    """Up to `count` normalized training images (a fixed random subset) for a model's data-dependent init."""
    sample, _ = next(iter(train.batches(count, shuffle=True, generator=torch.Generator().manual_seed(seed))))
    return normalize(sample) if sample.dtype == torch.uint8 else sample
