"""In-memory splits, the `Dataset` record, seeded stratified splits, statistics and the dataset registry.

Everything here is format-independent: the format modules (`idx`, `cifar`, `folder`, `npz`, `digits`) produce a
train set, an optional val set and an optional test set, and `finalize` turns them into a `Dataset` (carving the
validation split, computing the normalisation statistics from the training part only and recording notes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry

if TYPE_CHECKING:
    from .streaming import StreamingImageSet

#: Fraction of the images held out as the test split when a source has no test split of its own.
TEST_FRACTION = 0.2

# Salts that make the test and the validation split independent random streams of the same seed.
_TEST_SALT = 1
_VAL_SALT = 2


def check_batch_args(batch_size: int, start_batch: int) -> None:
    """Raise `DataError` for a batch size below 1 or a negative start batch."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"Invalid batch_size={batch_size!r}: expected an integer >= 1. Pass `batch_size` 1 or more.")
    if isinstance(start_batch, bool) or not isinstance(start_batch, int) or start_batch < 0:
        raise DataError(f"Invalid start_batch={start_batch!r}: expected an integer >= 0 (batches already done).")


def batch_order(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None, drop_last: bool,
                start_batch: int, device: torch.device | None = None) -> Iterator[torch.Tensor | slice]:
    """Yield the index (a tensor of indices, or a slice when not shuffling) of each remaining batch of an epoch.

    The permutation is drawn from `generator` only (torch's default generator when it is None), before any batch
    is skipped, so the same generator state always gives the same order and `start_batch` resumes it. With `device`,
    the permutation is copied there once per epoch, so batches are indexed on the device without a copy per batch.
    """
    check_batch_args(batch_size, start_batch)
    order = torch.randperm(n, generator=generator) if shuffle else None
    if order is not None and device is not None and device.type != "cpu":
        order = order.to(device)
    total = n // batch_size if drop_last else -(-n // batch_size)
    for b in range(start_batch, total):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        yield order[lo:hi] if order is not None else slice(lo, hi)


@dataclass(repr=False)
class ImageSet:
    """One split held in memory.

    Attributes:
        images: uint8 tensor of shape (N, C, H, W).
        labels: int64 tensor of shape (N,).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        self.labels = self.labels.to(torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"ImageSet.labels must have shape ({self.images.shape[0]},), got "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"ImageSet(n={len(self)}, shape={tuple(self.images.shape[1:])})"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches `batches(batch_size, drop_last=drop_last)` yields per epoch."""
        check_batch_args(batch_size, 0)
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images (B, C, H, W), int64 labels (B,)) batches by tensor indexing.

        Args:
            batch_size: Images per batch (the last one may be smaller unless `drop_last`).
            shuffle: Visit the images in the order of a permutation drawn from `generator`.
            generator: Source of the permutation; the same state gives the same order.
            drop_last: Skip the final incomplete batch.
            start_batch: Skip the first batches of this epoch's order (resume mid-epoch).
        """
        for idx in batch_order(len(self), batch_size, shuffle, generator, drop_last, start_batch):
            yield self.images[idx], self.labels[idx]

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageSet:
        """A new `ImageSet` of the images at `indices`: a view for one ascending contiguous range, else a copy."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and idx[-1] - idx[0] == idx.size - 1 and (idx.size == 1 or (np.diff(idx) == 1).all()):
            return ImageSet(self.images[idx[0]:idx[-1] + 1], self.labels[idx[0]:idx[-1] + 1])  # a view, no copy
        t = torch.as_tensor(idx)
        return ImageSet(self.images[t].contiguous(), self.labels[t].contiguous())


class SplitLike(Protocol):
    """What `ImageSet` and `StreamingImageSet` have in common."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def subset(self, indices: Any) -> SplitLike: ...

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int: ...

    def batches(self, batch_size: int, **kwargs: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    @property
    def input_shape(self) -> tuple[int, int, int]: ...


@dataclass
class Dataset:
    """A dataset ready for training: splits, class names, normalisation statistics and provenance.

    Attributes:
        name: Registered name ("digits", "mnist", ...) or the folder/file path given.
        classes: Class names in label order.
        train, val, test: The splits (`test` may be None).
        mean, std: Per-channel statistics of the TRAIN images scaled to [0, 1].
        source: JSON-able kwargs such that `load_dataset(**source)` reloads the same dataset.
        notes: Human-readable facts about how the dataset was assembled.
    """

    name: str
    classes: list[str]
    train: ImageSet | StreamingImageSet
    val: ImageSet | StreamingImageSet
    test: ImageSet | StreamingImageSet | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: dict
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(int(v) for v in self.train.input_shape)  # type: ignore[return-value]

    @property
    def evaluation_split(self) -> tuple[str, ImageSet]:
        """The split a model is scored on: ("test", test), or ("val", val) when the dataset has no test images."""
        if self.test is not None and len(self.test):
            return "test", self.test
        return "val", self.val

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified_split(labels: np.ndarray | torch.Tensor, fraction: float, seed: int, salt: int = _VAL_SALT
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, take) with `take` holding `round(fraction * N)` indices spread over classes.

    Each class gives its share (largest-remainder rounding, ties broken by class order), never all its members
    when it has more than one; members are picked by a permutation seeded by `(seed, salt)`. Both index arrays
    are sorted, so the split only depends on the labels, the fraction and the seed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    total = int(round(fraction * n))
    if total == 0 or n == 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, salt])
    classes, counts = np.unique(labels, return_counts=True)
    cap = np.where(counts > 1, counts - 1, counts)
    exact = fraction * counts
    quota = np.minimum(np.floor(exact).astype(np.int64), cap)
    remainder = exact - quota
    for i in np.argsort(-remainder, kind="stable"):
        if quota.sum() >= total:
            break
        if quota[i] < cap[i]:
            quota[i] += 1
    take = []
    for c, q in zip(classes, quota):
        members = np.flatnonzero(labels == c)
        take.append(members[rng.permutation(members.shape[0])[:q]])
    take_idx = np.sort(np.concatenate(take)) if take else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[take_idx] = False
    return np.flatnonzero(mask), take_idx


def split_off(split: SplitLike, fraction: float, seed: int, salt: int) -> tuple[SplitLike, SplitLike]:
    """Split an `ImageSet`/`StreamingImageSet` into (rest, held-out part) with `stratified_split`."""
    keep, take = stratified_split(split.labels, fraction, seed, salt)
    return split.subset(keep), split.subset(take)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images scaled to [0, 1]."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for lo in range(0, images.shape[0], chunk):
        x = images[lo:lo + chunk].to(torch.float64).div_(255.0).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        total_sq += (x * x).sum(1)
        count += x.shape[1]
    if count == 0:
        return tuple([0.0] * c), tuple([1.0] * c)
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    # A constant channel would divide by zero when normalising; 1.0 leaves it merely centred.
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def check_val_fraction(val_fraction: float) -> float:
    """Return `val_fraction` as a float, or raise `DataError` unless 0 <= val_fraction < 1."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise DataError(f"Invalid val_fraction={val_fraction!r}: expected a number with 0 <= val_fraction < 1. "
                        "Pass e.g. val_fraction=0.1 (0 for no validation split).")
    return float(val_fraction)


def finalize(*, name: str, classes: list[str], train: SplitLike, test: SplitLike | None, source: dict,
             notes: list[str], val_fraction: float, seed: int, val: SplitLike | None = None,
             stats: Callable[[SplitLike], tuple[tuple[float, ...], tuple[float, ...]]] | None = None) -> Dataset:
    """Carve the validation split from `train` (unless `val` is given), compute train statistics, build a Dataset."""
    if val is None:
        train, val = split_off(train, val_fraction, seed, _VAL_SALT)
    if len(train) == 0:
        raise DataError(f"Dataset {name} has no training images left after splitting: expected at least one. "
                        "Add images or lower `val_fraction`.")
    if stats is None:
        mean, std = channel_stats(train.images)  # type: ignore[attr-defined]
    else:
        mean, std = stats(train)
    return Dataset(name=name, classes=list(classes), train=train, val=val, test=test, mean=mean, std=std,
                   source=source, notes=notes)


def split_test(full: SplitLike, seed: int) -> tuple[SplitLike, SplitLike]:
    """Hold out a seeded stratified `TEST_FRACTION` of `full` as the test split: returns (rest, test)."""
    return split_off(full, TEST_FRACTION, seed, _TEST_SALT)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """Directory where registered datasets are looked for and downloaded to.

    `data_dir` if given, else `$LEANVISION_DATA`, else `$XDG_CACHE_HOME/leanvision` (default `~/.cache/leanvision`).
    The directory is not created.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get("LEANVISION_DATA")
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(cache).expanduser() / "leanvision").resolve()


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its facts for `list_datasets` and the functions that find and load it.

    Attributes:
        name: Registered name.
        description: One line for `leanvision datasets`.
        num_train, num_test: Images in the official train and test splits (before the validation split).
        image_shape: Native (C, H, W).
        num_classes: Number of classes.
        locate: `root -> (directory where it is or would be downloaded to, present)`.
        load: `(root, image_size, channels, val_fraction, seed, strict, download) -> Dataset`.
    """

    name: str
    description: str
    num_train: int
    num_test: int
    image_shape: tuple[int, int, int]
    num_classes: int
    locate: Callable[[Path], tuple[Path, bool]]
    load: Callable[..., Dataset]


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def size_to_source(size_hw: tuple[int, int]) -> int | list[int]:
    """JSON form of a resolved (H, W) for `Dataset.source`: an int when square."""
    return size_hw[0] if size_hw[0] == size_hw[1] else [size_hw[0], size_hw[1]]
