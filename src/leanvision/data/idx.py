"""MNIST and Fashion-MNIST from the four official IDX files (gzip or uncompressed), with verified download."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, DownloadError, first_line
from .core import DATASETS, Dataset, DatasetSpec, ImageSet, finalize, size_to_source
from .download import download, md5_file
from .images import adapt_array, check_channels

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse an IDX file (gzip-compressed when its name ends in .gz) into a uint8 array.

    Args:
        path: The file.
        magic: Expected magic number (2051 for images, 2049 for labels).

    Raises:
        DataError: Wrong magic number, truncated or corrupt file (the message gives the size found and expected).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"Cannot read {path} ({e.strerror}): expected a readable IDX file. Check its "
                        "permissions.") from None
    gzip_error = ""
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            gzip_error = f"; gzip: {first_line(e)}"
            try:  # keep what does decompress, to report the sizes
                raw = zlib.decompressobj(wbits=31).decompress(raw)
            except zlib.error:
                raise DataError(f"Corrupt file {path} (not valid gzip{gzip_error}): expected a gzip-compressed IDX "
                                "file. Delete it and re-download it.") from None
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DataError(f"{path} is not an IDX {kind} file (magic number {found}, expected {magic}{gzip_error}). "
                        "Delete it and re-download it.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes found, expected at least {header} for the IDX "
                        f"header{gzip_error}. Delete it and re-download it.")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "decompressed " if path.name.endswith(".gz") else ""
        raise DataError(f"{path} is truncated or corrupt: {len(raw)} {what}bytes found, expected {expected} for a "
                        f"{'x'.join(map(str, dims))} IDX {kind} array{gzip_error}. Delete it and re-download it.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


@dataclass(frozen=True)
class IdxSource:
    """Where an IDX dataset lives, where it is downloaded from and what it contains."""

    name: str
    title: str
    subdirs: tuple[str, ...]  # looked in first, in order, then the data dir itself
    mirrors: tuple[str, ...]
    md5: dict[str, str]
    classes: tuple[str, ...]
    other_md5: str  # md5 of the OTHER dataset's train-labels .gz, to catch swapped folders


MNIST = IdxSource(
    "mnist", "MNIST", ("mnist", "MNIST/raw"),
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
     "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
     "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
     "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    tuple(str(i) for i in range(10)), other_md5="25c81989df183df01b3e8a0aad5dffbe")
FASHION_MNIST = IdxSource(
    "fashion-mnist", "Fashion-MNIST", ("fashion-mnist", "FashionMNIST/raw"),
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
     "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
     "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
     "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    other_md5="d53e105ee54ea40749a09fcbcd1e9432")


def _file_in(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / name[:-3]):
        if candidate.is_file():
            return candidate
    return None


def _candidates(src: IdxSource, root: Path) -> list[Path]:
    return [root / sub for sub in src.subdirs] + [root]


def find_files(src: IdxSource, root: Path) -> list[Path] | None:
    """The four files (.gz or uncompressed) from the first candidate directory holding all of them, else None."""
    for directory in _candidates(src, root):
        files = [_file_in(directory, name) for name in FILES]
        if all(files):
            return files  # type: ignore[return-value]
    return None


def locate(src: IdxSource, root: Path) -> tuple[Path, bool]:
    """(directory holding the files, True) or (directory they would be downloaded to, False)."""
    files = find_files(src, root)
    return (files[0].parent, True) if files else (root / src.subdirs[0], False)


def _fetch_all(src: IdxSource, root: Path, download_allowed: bool) -> list[Path]:
    target = root / src.subdirs[0]
    reason = "download disabled"
    if download_allowed:
        try:
            for name in FILES:
                if _file_in(target, name) is None:
                    download([m + name for m in src.mirrors], target / name, src.md5[name])
            files = find_files(src, root)
            if files:
                return files
            reason = "files still missing after download"
        except DownloadError as e:
            reason = str(e)
    looked = ", ".join(str(d) for d in _candidates(src, root))
    raise DataError(f"{src.title} not found in {looked}: expected {', '.join(FILES)} (download failed: {reason}). "
                    f"Download them from {src.mirrors[0]} into {target} or pass `data_dir`.")


def read_split(src: IdxSource, images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) and labels (N,) of one split, validated."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels: "
                        "expected one label per image. Delete both and re-download them.")
    bad = (labels < 0) | (labels >= len(src.classes))
    if bad.any():
        raise DataError(f"{labels_path} has {int(bad.sum())} labels outside 0..{len(src.classes) - 1} (e.g. "
                        f"{int(labels[bad][0])}): expected {src.title} class indices. Delete it and re-download it.")
    return images[:, None], labels


def load_idx_dataset(src: IdxSource, root: Path, *, image_size: tuple[int, int] | None, channels: int | None,
                     val_fraction: float, seed: int, strict: bool, download: bool) -> Dataset:
    """Load an IDX dataset found under `root` (downloading it when allowed)."""
    files = find_files(src, root) or _fetch_all(src, root, download)
    labels_gz = files[1]
    if labels_gz.name.endswith(".gz") and md5_file(labels_gz) == src.other_md5:
        other = "Fashion-MNIST" if src is MNIST else "MNIST"
        raise DataError(f"{labels_gz.parent} holds {other} files, not {src.title}: expected the official "
                        f"{src.title} files. Put each dataset in its own subfolder ({src.subdirs[0]}/).")
    train_x, train_y = read_split(src, files[0], files[1])
    test_x, test_y = read_split(src, files[2], files[3])
    size = image_size or tuple(train_x.shape[2:])
    channels = check_channels(channels) if channels is not None else 1
    train = ImageSet(adapt_array(train_x, size, channels), torch.from_numpy(train_y))
    test = ImageSet(adapt_array(test_x, size, channels), torch.from_numpy(test_y))
    notes = [f"{src.title} from {files[0].parent}"]
    if size != tuple(train_x.shape[2:]) or channels != 1:
        notes.append(f"resized 28x28x1 -> {size[0]}x{size[1]}x{channels}")
    source = dict(name=src.name, data_dir=str(root), image_size=size_to_source(size), channels=channels,
                  val_fraction=val_fraction, seed=seed, strict=strict)
    return finalize(name=src.name, classes=list(src.classes), train=train, test=test, source=source, notes=notes,
                    val_fraction=val_fraction, seed=seed)


for _src, _description in ((MNIST, "handwritten digits 0-9, 28x28 grayscale (LeCun et al.)"),
                           (FASHION_MNIST, "Zalando clothing photos in 10 classes, 28x28 grayscale")):
    DATASETS.register(_src.name)(DatasetSpec(
        name=_src.name, description=_description, num_train=60000, num_test=10000, image_shape=(1, 28, 28),
        num_classes=10, locate=lambda root, s=_src: locate(s, root),
        load=lambda root, s=_src, **kw: load_idx_dataset(s, root, **kw)))
