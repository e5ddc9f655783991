"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images), upsampled to 28x28 by default.

Needs no network and no data directory, which makes it the dataset of tests, examples and smoke runs. The 0..16
pixel values are scaled to 0..255 and resized with PIL bilinear, so the 28x28 MNIST reference models apply as is.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .core import DATASETS, Dataset, DatasetSpec, ImageSet, finalize, size_to_source, split_test
from .images import adapt_array, check_channels

DEFAULT_SIZE = (28, 28)


def _location() -> Path:
    return Path(str(resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))


def load_digits(root: Path | None = None, *, image_size: tuple[int, int] | None, channels: int | None,
                val_fraction: float, seed: int, strict: bool = False, download: bool = False) -> Dataset:
    """Load `digits`: a seeded stratified 20% test split, then `val_fraction` of the rest as validation."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    size = image_size or DEFAULT_SIZE
    channels = check_channels(channels) if channels is not None else 1
    full = ImageSet(adapt_array(images[:, None], size, channels), torch.as_tensor(bunch.target, dtype=torch.int64))
    train, test = split_test(full, seed)
    notes = [f"scikit-learn digits 8x8 -> {size[0]}x{size[1]} (PIL bilinear)",
             f"stratified 20% test split (seed={seed})"]
    source = dict(name="digits", data_dir=None, image_size=size_to_source(size), channels=channels,
                  val_fraction=val_fraction, seed=seed, strict=strict)
    return finalize(name="digits", classes=[str(i) for i in range(10)], train=train, test=test, source=source,
                    notes=notes, val_fraction=val_fraction, seed=seed)


DATASETS.register("digits")(DatasetSpec(
    name="digits", description="scikit-learn's bundled 8x8 handwritten digits, upsampled to 28x28 (no download)",
    num_train=1438, num_test=359, image_shape=(1, 28, 28), num_classes=10,
    locate=lambda root: (_location(), _location().is_file()), load=load_digits))
