"""CIFAR-10 from the official `cifar-10-batches-py` pickles, read with a restricted unpickler.

The batches are Python pickles, and unpickling runs whatever callables a file names. `_BatchUnpickler` therefore
admits only the numpy functions that rebuild arrays; anything else (e.g. `os.system` in a tampered file) is refused
before it is called.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, DownloadError, first_line
from ..io import atomic_write_bytes
from .core import DATASETS, Dataset, DatasetSpec, ImageSet, finalize, size_to_source
from .download import download
from .images import adapt_array, check_channels

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
DIRNAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
MEMBERS = (*TRAIN_BATCHES, "test_batch", "batches.meta")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# (module, name) pairs numpy array pickles need: protocol 0-4 (`_reconstruct`) and protocol 5 (`_frombuffer`),
# under numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) module names.
_ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays need."""

    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"Refusing to unpickle {module}.{name} from {self.path}: CIFAR batches contain only lists, "
                        "bytes and numeric arrays. Delete the file and re-download the official archive.")


def _key(d: dict, name: str) -> Any:
    return d[name.encode()] if name.encode() in d else d.get(name)


def unpickle(path: str | Path) -> dict:
    """Read one CIFAR pickle (a dict) with the restricted unpickler.

    Raises:
        DataError: The file names a forbidden global, is not a pickle, or is not a dict.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"Corrupt CIFAR batch {path} ({first_line(e, with_type=True)}): expected an "
                        "official cifar-10-batches-py pickle. Delete it and re-download the archive.") from None
    if not isinstance(obj, dict):
        raise DataError(f"Corrupt CIFAR batch {path}: holds a {type(obj).__name__}, expected a dict with data and "
                        "labels. Delete it and re-download the archive.")
    return obj


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file, validated."""
    path = Path(path)
    d = unpickle(path)
    data, labels = _key(d, "data"), _key(d, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"Corrupt CIFAR batch {path}: data is {got}, expected a uint8 N x 3072 array. "
                        "Delete it and re-download the archive.")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        labels = np.zeros(0, dtype=np.int64) - 1
    if labels.shape[0] != data.shape[0] or ((labels < 0) | (labels > 9)).any():
        raise DataError(f"Corrupt CIFAR batch {path}: {labels.shape[0]} labels for {data.shape[0]} images, expected "
                        "one label in 0..9 per image. Delete it and re-download the archive.")
    return data.reshape(-1, 3, 32, 32), labels


def _read_classes(directory: Path, notes: list[str]) -> list[str]:
    meta = directory / "batches.meta"
    if not meta.is_file():
        notes.append("batches.meta missing: using the standard CIFAR-10 class names")
        return list(CLASSES)
    names = _key(unpickle(meta), "label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"Corrupt {meta}: label_names is not a list of 10 names. Delete it and re-download.")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def batches_dir(path: Path) -> Path | None:
    """`path` itself or its `cifar-10-batches-py/` subfolder when it holds `data_batch_1`, else None."""
    for directory in (path / DIRNAME, path, path / "cifar10" / DIRNAME):
        if (directory / "data_batch_1").is_file():
            return directory
    return None


def load_batches(directory: Path, *, name: str, source: dict, image_size: tuple[int, int] | None,
                 channels: int | None, val_fraction: float, seed: int) -> Dataset:
    """Load a `cifar-10-batches-py` directory (data_batch_1..5 and test_batch required)."""
    missing = [m for m in (*TRAIN_BATCHES, "test_batch") if not (directory / m).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 folder {directory} lacks {', '.join(missing)}: expected data_batch_1..5 and "
                        "test_batch. Re-extract the official cifar-10-python.tar.gz.")
    notes: list[str] = []
    classes = _read_classes(directory, notes)
    parts = [read_batch(directory / b) for b in TRAIN_BATCHES]
    train_x, train_y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    test_x, test_y = read_batch(directory / "test_batch")
    size = image_size or (32, 32)
    channels = check_channels(channels) if channels is not None else 3
    if size != (32, 32) or channels != 3:
        notes.append(f"resized 32x32x3 -> {size[0]}x{size[1]}x{channels}")
    train = ImageSet(adapt_array(train_x, size, channels), torch.from_numpy(train_y))
    test = ImageSet(adapt_array(test_x, size, channels), torch.from_numpy(test_y))
    source = dict(source, image_size=size_to_source(size), channels=channels, val_fraction=val_fraction, seed=seed)
    return finalize(name=name, classes=classes, train=train, test=test, source=source, notes=notes,
                    val_fraction=val_fraction, seed=seed)


def _download(root: Path) -> Path:
    archive = download([URL], root / "cifar-10-python.tar.gz", MD5)
    target = root / DIRNAME
    wanted = {f"{DIRNAME}/{m}": m for m in MEMBERS}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            # Only the expected regular files, written under names we choose: no path from the archive is used.
            if member.name in wanted and member.isfile():
                f = tar.extractfile(member)
                if f is not None:
                    atomic_write_bytes(target / wanted[member.name], f.read())
    archive.unlink()
    return target


def load_cifar10(root: Path, *, image_size: tuple[int, int] | None, channels: int | None, val_fraction: float,
                 seed: int, strict: bool, download: bool) -> Dataset:
    """The registered `cifar10`: batches under `root` (or its `cifar-10-batches-py/`), downloaded when allowed."""
    directory = batches_dir(root)
    if directory is None:
        reason = "download disabled"
        if download:
            try:
                directory = _download(root)
            except DownloadError as e:
                reason = str(e)
            except (tarfile.TarError, OSError, EOFError) as e:
                reason = f"cannot extract archive: {e}"
        if directory is None:
            raise DataError(f"CIFAR-10 not found in {root} or {root / DIRNAME}: expected {', '.join(MEMBERS)} "
                            f"(download failed: {reason}). Download and extract {URL} into {root} or pass "
                            "`data_dir`.")
    source = dict(name="cifar10", data_dir=str(root), strict=strict)
    return load_batches(directory, name="cifar10", source=source, image_size=image_size, channels=channels,
                        val_fraction=val_fraction, seed=seed)


def _locate(root: Path) -> tuple[Path, bool]:
    directory = batches_dir(root)
    return (directory, True) if directory else (root / DIRNAME, False)


DATASETS.register("cifar10")(DatasetSpec(
    name="cifar10", description="CIFAR-10 photos in 10 classes, 32x32 RGB (Krizhevsky 2009)", num_train=50000,
    num_test=10000, image_shape=(3, 32, 32), num_classes=10, locate=_locate, load=load_cifar10))
