"""`StreamingImageSet`: a split of image files decoded batch by batch by DataLoader worker processes."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import DataError
from .core import batch_order, channel_stats, check_batch_args
from .images import CHUNK, DecodeFiles, collate_decoded, make_loader


class StreamingImageSet:
    """A split of image files decoded on the fly by a DataLoader with worker processes.

    Same interface as `ImageSet` (`len`, `batches`, `num_batches`, `subset`, `input_shape`, `labels`) for folders
    too large to hold in memory. A file that fails to decode while streaming is dropped from its batch with a
    warning (or raises `DataError` when `strict`).
    """

    def __init__(self, paths: Sequence[str], labels: torch.Tensor | Sequence[int], image_size: tuple[int, int],
                 channels: int, *, strict: bool = False):
        self.paths = [str(p) for p in paths]
        self.labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if self.labels.shape[0] != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {self.labels.shape[0]} labels")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = int(channels)
        self.strict = strict
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"StreamingImageSet(n={len(self)}, shape={self.input_shape})"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return (self.channels, *self.image_size)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches `batches(batch_size, drop_last=drop_last)` yields per epoch."""
        check_batch_args(batch_size, 0)
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> StreamingImageSet:
        """A new `StreamingImageSet` over the files at `indices`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return StreamingImageSet([self.paths[i] for i in idx], self.labels[torch.as_tensor(idx)], self.image_size,
                                 self.channels, strict=self.strict)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images (B, C, H, W), int64 labels (B,)) batches; same arguments as `ImageSet.batches`."""
        order = [torch.arange(i.start, i.stop) if isinstance(i, slice) else i
                 for i in batch_order(len(self), batch_size, shuffle, generator, drop_last, start_batch)]
        if not order:
            return
        ds = DecodeFiles(self.paths, self.image_size, self.channels)
        loader = make_loader(ds, collate_decoded, batches=[o.tolist() for o in order])
        for idx, (images, oks, errors) in zip(order, loader):
            labels = self.labels[idx]
            if not all(oks):
                self._report([(i, e) for i, ok, e in zip(idx.tolist(), oks, errors) if not ok])
                keep = torch.tensor(oks)
                images, labels = images[keep], labels[keep]
            yield images, labels

    def _report(self, failures: list[tuple[int, str]]) -> None:
        for i, err in failures:
            path = self.paths[i]
            if self.strict:
                raise DataError(f"Cannot read {path} as an image ({err}): expected a decodable image file. "
                                "Remove or replace it, or load without strict to skip it.")
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(f"skipped unreadable file {path} ({err})", stacklevel=3)

    def stats(self, max_images: int = 4096, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std in [0, 1] from up to `max_images` images drawn with a fixed seed."""
        if len(self) <= max_images:
            sample = self
        else:
            pick = np.sort(np.random.default_rng(seed).choice(len(self), max_images, replace=False))
            sample = self.subset(pick)
        images = [x for x, _ in sample.batches(CHUNK)]
        stacked = torch.cat(images) if images else torch.zeros((0, *self.input_shape), dtype=torch.uint8)
        return channel_stats(stacked)
