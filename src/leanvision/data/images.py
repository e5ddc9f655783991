"""Decoding image files and arrays to uint8 (C, H, W), in parallel when there are many files.

One conversion (`convert_image`) serves the folder loader, the streaming loader and `load_image_files` (used by
`predict`), so a file always becomes exactly the same tensor whichever path reads it.

Conversion rules, per PIL mode, before resizing:
    1 -> L (0/255); L as is; P -> RGB, or RGBA first when it has transparency; LA/La/PA/RGBA/RGBa -> composited
    over a WHITE background (transparent pixels look as on a white page, the way viewers show them; dropping
    alpha instead would expose whatever colour the encoder left under transparent pixels, often black);
    I;16* and I -> 16-bit values scaled to 8 bit (v * 255 / 65535, rounded, clipped); F -> clipped to 0..255;
    CMYK, YCbCr, LAB, HSV, ... -> RGB. Then RGB -> L uses PIL's ITU-R 601-2 luma, L -> RGB repeats the channel.
    GIF and other animations: first frame. EXIF orientation is not applied (as torchvision's ImageFolder).
    Resizing: PIL `resize` with BILINEAR to exactly (H, W), after conversion; skipped when the size matches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError, first_line

#: File name endings (lower case) read as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
#: PIL modes counted as grayscale when choosing the default channel count.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: Use worker processes when decoding more files than this.
PARALLEL_MIN_FILES = 2000
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
CHUNK = 256


def num_workers() -> int:
    """Worker processes for decoding: min(4, CPU count)."""
    return max(1, min(4, os.cpu_count() or 1))


def image_files(directory: str | os.PathLike) -> list[str]:
    """Image files (by `IMAGE_EXTENSIONS`) under `directory`, recursively and sorted; hidden files and folders are
    skipped and links followed."""
    files = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(files)


def convert_image(img: Image.Image, size_hw: tuple[int, int], channels: int) -> np.ndarray:
    """Convert a PIL image to a uint8 array of shape (channels, H, W) (see the module docstring for the rules)."""
    if getattr(img, "tell", lambda: 0)() != 0:  # first frame; not `n_frames`, which decodes a whole GIF to count
        img.seek(0)
    mode = img.mode
    if mode == "1":
        img = img.convert("L")
    elif mode.startswith("I") or mode == "F":
        arr = np.asarray(img)
        if mode == "F":
            arr8 = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        else:
            arr = np.clip(arr.astype(np.int64), 0, 65535)
            arr8 = ((arr * 255 + 32767) // 65535).astype(np.uint8)
        img = Image.fromarray(arr8)
    elif mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    h, w = size_hw
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None].copy() if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode_file(path: str | os.PathLike, size_hw: tuple[int, int], channels: int) -> np.ndarray:
    """Open and convert one image file; raises whatever PIL raises for an unreadable file."""
    with Image.open(path) as img:
        return convert_image(img, size_hw, channels)


def probe_file(path: str | os.PathLike) -> tuple[int, int, str]:
    """(width, height, mode) from the file header; raises for a file PIL cannot identify."""
    with Image.open(path) as img:
        return img.size[0], img.size[1], img.mode


def _error_text(e: BaseException, path: str | os.PathLike | None = None) -> str:
    if path is not None and os.path.isfile(path) and os.path.getsize(path) == 0:
        return EMPTY_FILE
    return first_line(e, with_type=True, limit=200)


EMPTY_FILE = "empty file (0 bytes)"


class DecodeFiles(torch.utils.data.Dataset):
    """Map-style dataset decoding file i to (uint8 (C, H, W) tensor, ok, error text)."""

    def __init__(self, paths: Sequence[str], size_hw: tuple[int, int], channels: int):
        self.paths, self.size_hw, self.channels = list(paths), tuple(size_hw), channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool, str]:
        try:
            return torch.from_numpy(decode_file(self.paths[i], self.size_hw, self.channels)), True, ""
        except Exception as e:  # any decoding failure marks the file unreadable; the caller decides
            return torch.zeros((self.channels, *self.size_hw), dtype=torch.uint8), False, _error_text(e, self.paths[i])


class _ProbeFiles(torch.utils.data.Dataset):
    """Map-style dataset giving ((width, height, mode) or None, error text) for file i."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[tuple[int, int, str] | None, str]:
        try:
            return probe_file(self.paths[i]), ""
        except Exception as e:
            return None, _error_text(e, self.paths[i])


def collate_decoded(items: list) -> tuple[torch.Tensor, list[bool], list[str]]:
    """Collate `DecodeFiles` items into (stacked images, ok flags, error texts)."""
    return torch.stack([t for t, _, _ in items]), [ok for _, ok, _ in items], [err for _, _, err in items]


def _identity(item: object) -> object:
    return item


class _Chunks(torch.utils.data.Dataset):
    """Item k = a whole chunk of files, processed in one worker and returned as numpy / plain Python objects."""

    def __init__(self, inner: torch.utils.data.Dataset, n: int, probe: bool):
        self.inner, self.n, self.probe = inner, n, probe

    def __len__(self) -> int:
        return -(-self.n // CHUNK)

    def __getitem__(self, k: int) -> object:
        items = [self.inner[i] for i in range(k * CHUNK, min((k + 1) * CHUNK, self.n))]
        if self.probe:
            return items
        return np.stack([t.numpy() for t, _, _ in items]), [ok for _, ok, _ in items], [e for _, _, e in items]


def make_loader(dataset: torch.utils.data.Dataset, collate: Callable[[Any], Any],
                batches: list[list[int]] | None = None) -> torch.utils.data.DataLoader:
    """DataLoader over `dataset` with `num_workers()` processes: by `batches` of indices, or item by item."""
    kwargs = dict(num_workers=num_workers(), collate_fn=collate)
    if batches is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, **kwargs)


def _parallel(n: int) -> bool:
    return n > PARALLEL_MIN_FILES and num_workers() > 1


def probe_files(paths: Sequence[str]) -> list[tuple[tuple[int, int, str] | None, str]]:
    """Header information of every file (in parallel beyond `PARALLEL_MIN_FILES` files)."""
    ds = _ProbeFiles(paths)
    if not _parallel(len(paths)):
        return [ds[i] for i in range(len(paths))]
    out: list = []
    for chunk in make_loader(_Chunks(ds, len(paths), probe=True), _identity):
        out.extend(chunk)
    return out


def decode_files(paths: Sequence[str], size_hw: tuple[int, int], channels: int
                 ) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Decode files into one uint8 (N, C, H, W) tensor (in parallel beyond `PARALLEL_MIN_FILES` files).

    Returns:
        The images (zeros where a file failed), a bool array marking the files that decoded, and the error text
        of each file ("" when it decoded).
    """
    n = len(paths)
    out = torch.empty((n, channels, *size_hw), dtype=torch.uint8)
    ok = np.zeros(n, dtype=bool)
    errors = [""] * n
    ds = DecodeFiles(paths, size_hw, channels)
    if not _parallel(n):
        for i in range(n):
            out[i], ok[i], errors[i] = ds[i]
        return out, ok, errors
    pos = 0
    for images, oks, errs in make_loader(_Chunks(ds, n, probe=False), _identity):
        k = images.shape[0]
        out[pos:pos + k] = torch.from_numpy(images)
        ok[pos:pos + k] = oks
        errors[pos:pos + k] = errs
        pos += k
    return out, ok, errors


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        size = (0, 0)
    if min(size) < 1:
        raise DataError(f"Invalid image_size={image_size!r}: expected a positive int or (height, width). "
                        "Pass e.g. image_size=32.")
    return size


def check_channels(channels: int) -> int:
    """Return `channels`, or raise `DataError` unless it is 1 or 3."""
    if channels not in (1, 3) or isinstance(channels, bool):
        raise DataError(f"Invalid channels={channels!r}: expected 1 (grayscale) or 3 (RGB). "
                        "Pass channels=1 or channels=3.")
    return int(channels)


def load_image_files(paths: list[str], image_size: int | tuple[int, int], channels: int) -> torch.Tensor:
    """Read image files exactly as the folder loader does: uint8 tensor (N, channels, H, W).

    Args:
        paths: Image files.
        image_size: Output size, an int for square or (height, width).
        channels: 1 (grayscale) or 3 (RGB).

    Raises:
        DataError: A path is missing or cannot be decoded as an image (the message names it).
    """
    size_hw = _as_size(image_size)
    channels = check_channels(channels)
    paths = [str(p) for p in paths]
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"Image file not found: {p}. Expected an existing image file "
                            f"({'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}); check the path.")
    images, ok, errors = decode_files(paths, size_hw, channels)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DataError(f"Cannot read {paths[i]} as an image ({errors[i]}): expected a file PIL can decode "
                        f"({'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}). Replace or remove it.")
    return images


def adapt_array(images: np.ndarray, size_hw: tuple[int, int], channels: int) -> torch.Tensor:
    """Bring uint8 (N, C, H, W) arrays (C in 1, 3, 4) to `channels` and `size_hw` with the same rules as files."""
    images = np.asarray(images, dtype=np.uint8)
    c = images.shape[1]
    if c == 4:  # RGBA: composite over white, as for files
        rgb = images[:, :3].astype(np.uint32)
        alpha = images[:, 3:4].astype(np.uint32)
        images = ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        c = 3
    if c == 3 and channels == 1:  # PIL's RGB -> L conversion, bit for bit
        rgb = images.astype(np.uint32)
        images = ((rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16).astype(np.uint8)
        images = images[:, None]
    elif c == 1 and channels == 3:
        images = np.repeat(images, 3, axis=1)
    h, w = size_hw
    if images.shape[2:] != (h, w):
        resized = np.empty((images.shape[0], channels, h, w), dtype=np.uint8)
        for i, im in enumerate(images):
            pil = Image.fromarray(im[0] if channels == 1 else im.transpose(1, 2, 0))
            arr = np.asarray(pil.resize((w, h), Image.BILINEAR))
            resized[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        images = resized
    return torch.from_numpy(np.ascontiguousarray(images))
