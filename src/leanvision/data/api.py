"""`load_dataset` (name resolution: registered name, folder, CIFAR batches folder, .npz file) and `list_datasets`."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from .cifar import batches_dir, load_batches
from .core import DATASETS, Dataset, check_val_fraction, resolve_data_dir
from .folder import load_folder
from .images import IMAGE_EXTENSIONS, check_channels
from .npz import load_npz

_PATH_FORMS = (f"an image folder <dir>/<class>/*.{{{','.join(e[1:] for e in IMAGE_EXTENSIONS)}}} (optionally with "
               "train/ val/ test/ subfolders), a cifar-10-batches-py folder, or a .npz file with x_train, y_train, "
               "x_test, y_test")


def _check_image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool) and image_size >= 1:
        return (image_size, image_size)
    if (isinstance(image_size, (tuple, list)) and len(image_size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in image_size)):
        return (int(image_size[0]), int(image_size[1]))
    raise DataError(f"Invalid image_size={image_size!r}: expected a positive int (square) or [height, width]. "
                    "Pass e.g. image_size=32, or omit it to keep the native size.")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, image_size: int | Sequence[int] | None = None,
                 channels: int | None = None, val_fraction: float = 0.1, seed: int = 0, strict: bool = False,
                 download: bool = True) -> Dataset:
    """Load a dataset by registered name or path.

    Args:
        name: A registered name (`list_datasets()`), an image folder, a `cifar-10-batches-py` folder (or a folder
            holding one), or a `.npz` file.
        data_dir: Where registered datasets are looked for / downloaded to (see `resolve_data_dir`).
        image_size: Output size, an int (square) or [height, width]; None keeps the native size (folders with
            mixed sizes: 64).
        channels: 1 or 3; None keeps the native count (folders: 1 if every image is grayscale, else 3).
        val_fraction: Fraction of the training images held out (seeded, stratified) for validation; 0 <= f < 1.
        seed: Seed of the validation split (and of the test split when the source has none).
        strict: Raise on an unreadable image file instead of skipping it with a warning.
        download: Fetch a missing registered dataset (never when `LEANVISION_OFFLINE=1`).

    Raises:
        DataError: Unknown name, missing or corrupt data, invalid argument.
    """
    val_fraction = check_val_fraction(val_fraction)
    size = _check_image_size(image_size)
    if channels is not None:
        channels = check_channels(channels)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"Invalid seed={seed!r}: expected an integer. Pass e.g. seed=0.")
    name = str(name)
    options = dict(image_size=size, channels=channels, val_fraction=val_fraction, seed=seed)
    key = name.lower()
    if key in DATASETS:  # registered names win; a folder named like one is reached as ./name
        spec = DATASETS.get(key)
        return spec.load(resolve_data_dir(data_dir), strict=strict, download=download, **options)
    path = Path(name).expanduser()
    if path.is_dir():
        batches = batches_dir(path)
        if batches is not None:
            source = dict(name=str(path.resolve()), data_dir=None, strict=strict)
            return load_batches(batches, name=name, source=source, **options)
        return load_folder(path, name=name, strict=strict, **options)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise DataError(f"Dataset file {path} not found: expected an existing .npz file. Check the path.")
        return load_npz(path.resolve(), name=name, strict=strict, **options)
    if os.sep in name or "/" in name or name.startswith("."):
        raise DataError(f"Dataset path {name} not found (resolved: {path.resolve()}): expected {_PATH_FORMS}. "
                        "Check the path, or use a registered name: " + ", ".join(DATASETS.names()) + ".")
    close = difflib.get_close_matches(key, DATASETS.names(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(f"Unknown dataset {name!r} (not a registered name nor an existing folder or .npz file).{hint} "
                    f"Expected one of {', '.join(DATASETS.names())}, or {_PATH_FORMS}.")


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """One dict per registered dataset, sorted by name.

    Keys: name, description, num_train, num_test (official splits, before the validation split), image_shape
    ((C, H, W) native), num_classes, location (where it was found, or where it would be downloaded to; for
    `digits` the file bundled with scikit-learn) and present (bool).
    """
    root = resolve_data_dir(data_dir)
    rows = []
    for n in DATASETS.names():
        spec = DATASETS.get(n)
        location, present = spec.locate(root)
        rows.append(dict(name=spec.name, description=spec.description, num_train=spec.num_train,
                         num_test=spec.num_test, image_shape=tuple(spec.image_shape), num_classes=spec.num_classes,
                         location=str(location), present=bool(present)))
    return rows
