"""Datasets stored as one `.npz` file with x_train, y_train, x_test, y_test (and optionally `classes`).

Images may be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4 (channels-last is assumed when both
readings fit, as in Keras files); uint8, bool, other integers (0..255 as is, up to 65535 scaled as 16-bit) or floats
(in [0, 1] scaled by 255, else in [0, 255] rounded). The file is read with `allow_pickle=False`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, first_line
from .core import Dataset, ImageSet, finalize, size_to_source
from .images import adapt_array, check_channels

KEYS = ("x_train", "y_train", "x_test", "y_test")


def _to_nchw(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[-1] in (1, 3, 4):
            return x.transpose(0, 3, 1, 2)
        if x.shape[1] in (1, 3, 4):
            return x
    raise DataError(f"{path}: {key} has shape {x.shape}, expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C in "
                    "1, 3, 4. Re-save the arrays in one of these layouts.")


def _to_uint8(x: np.ndarray, key: str, path: Path, notes: list[str]) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * 255
    if x.size == 0:
        return x.astype(np.uint8)
    lo, hi = x.min(), x.max()
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(lo) or not np.isfinite(hi) or lo < 0 or hi > 255:
            raise DataError(f"{path}: {key} is {x.dtype} with values in [{lo}, {hi}], expected floats in [0, 1] (or "
                            "0..255). Rescale the images before saving.")
        if hi <= 1:
            return np.rint(x * 255).astype(np.uint8)
        notes.append(f"{key}: float values above 1 read as 0..255")
        return np.rint(x).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) and lo >= 0 and hi <= 255:
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) and lo >= 0 and hi <= 65535:
        notes.append(f"{key}: values above 255 read as 16-bit and scaled to 8 bit")
        return ((x.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    raise DataError(f"{path}: {key} has dtype {x.dtype} with values in [{lo}, {hi}], expected uint8, integers in "
                    "0..65535 or floats in [0, 1]. Convert the images before saving.")


def _labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or
                           (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise DataError(f"{path}: {key} has dtype {y.dtype} and shape {y.shape}, expected integer class indices of "
                        "shape (N,). Save the labels (not one-hot vectors) as integers.")
    return y.astype(np.int64)


def load_npz(path: Path, *, name: str, image_size: tuple[int, int] | None, channels: int | None,
             val_fraction: float, seed: int, strict: bool) -> Dataset:
    """Load an `.npz` dataset file (see the module docstring for the accepted layouts)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            found = sorted(f.files)
            missing = [k for k in KEYS if k not in found]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)} (found: {', '.join(found) or 'no arrays'}): "
                                f"expected arrays {', '.join(KEYS)}. Re-save it with np.savez(path, x_train=..., ...).")
            arrays = {k: f[k] for k in (*KEYS, "classes") if k in found}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"Cannot read {path} as .npz ({first_line(e, with_type=True)}): expected an "
                        "np.savez file without pickled objects. Re-save it with plain numeric arrays.") from None
    notes: list[str] = []
    xs, ys = {}, {}
    for split in ("train", "test"):
        x = _to_uint8(_to_nchw(arrays[f"x_{split}"], f"x_{split}", path), f"x_{split}", path, notes)
        y = _labels(arrays[f"y_{split}"], f"y_{split}", path)
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{path}: x_{split} has {x.shape[0]} images but y_{split} has {y.shape[0]} labels: "
                            "expected one label per image. Fix the arrays and re-save.")
        xs[split], ys[split] = x, y
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise DataError(f"{path}: x_train images are {xs['train'].shape[1:]} but x_test images are "
                        f"{xs['test'].shape[1:]} (C, H, W): expected the same shape. Resize one split and re-save.")
    all_y = np.concatenate([ys["train"], ys["test"]])
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
    else:
        classes = [str(i) for i in range(int(all_y.max()) + 1 if all_y.size else 0)]
    bad = (all_y < 0) | (all_y >= len(classes))
    if bad.any() or not classes:
        raise DataError(f"{path}: {int(bad.sum())} labels outside 0..{len(classes) - 1} (e.g. "
                        f"{int(all_y[bad][0]) if bad.any() else 'none'}): expected class indices 0..K-1 (K = "
                        "len(classes) when a 'classes' array is saved). Fix y_train/y_test.")
    native = tuple(xs["train"].shape[2:])
    size = image_size or native
    c_in = xs["train"].shape[1]
    channels = check_channels(channels) if channels is not None else (1 if c_in == 1 else 3)
    train = ImageSet(adapt_array(xs["train"], size, channels), torch.from_numpy(ys["train"]))
    test = ImageSet(adapt_array(xs["test"], size, channels), torch.from_numpy(ys["test"]))
    source = dict(name=str(path.resolve()), data_dir=None, image_size=size_to_source(size), channels=channels,
                  val_fraction=val_fraction, seed=seed, strict=strict)
    return finalize(name=name, classes=classes, train=train, test=test, source=source, notes=notes,
                    val_fraction=val_fraction, seed=seed)
