"""ImageFolder datasets: `root/<class>/*.<ext>`, optionally inside `train/`, `val/` and `test/` split folders.

Split rules: train+val+test -> used as named; train+val -> val/ is the TEST split and validation is carved from
train/; train+test -> validation carved from train/; train/ alone or no split folders -> a seeded stratified 20%
test split, then `val_fraction` of the rest as validation. Class names are the sorted class folder names (folders
holding at least one image file) and must be the same in every split folder.

Hidden files and folders (names starting with ".") are ignored. Images are decoded once into memory, in parallel
for large folders, unless the decoded uint8 tensor would exceed `STREAMING_THRESHOLD_BYTES`: then the splits are
`StreamingImageSet`s that decode while iterating.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .cache import cache_dir, decode_files_cached, probe_files_cached
from .core import Dataset, ImageSet, SplitLike, finalize, size_to_source, split_test
from .images import GRAY_MODES, IMAGE_EXTENSIONS, check_channels, image_files
from .streaming import StreamingImageSet

#: Above this decoded size (count x C x H x W bytes) a folder is streamed instead of held in memory.
STREAMING_THRESHOLD_BYTES = 2 * 1024**3
#: Default image size when the images do not all have the same size.
DEFAULT_SIZE = (64, 64)
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
_PATTERN = "|".join(e[1:] for e in IMAGE_EXTENSIONS)


def scan_classes(directory: Path) -> dict[str, list[Path]]:
    """Map class name -> sorted image files (recursively) for every class subfolder holding at least one image."""
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = image_files(sub)
        if files:
            out[sub.name] = [Path(f) for f in files]
    return out


def _split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLIT_NAMES.items():
        for n in names:
            if (root / n).is_dir():
                found[split] = root / n
                break
    return found


def _copied_links(directory: Path) -> list[tuple[str, str]]:
    """(name, text) of small plain files that hold one path-like line: symbolic links copied as text.

    Only the first 256 bytes are read, and the text is only reported, never followed."""
    found = []
    for p in sorted(directory.iterdir()):
        if p.name.startswith(".") or p.is_symlink() or not p.is_file() or p.suffix.lower() in IMAGE_EXTENSIONS:
            continue
        try:
            if p.stat().st_size > 256:
                continue
            text = p.read_bytes()[:256].decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text and "/" in text and all(c.isprintable() for c in text):
            found.append((p.name, text))
    return found


def _no_images_error(directory: Path) -> DataError:
    links = _copied_links(directory)
    if links:
        names = ", ".join(f"{n} ('{t}')" for n, t in links[:3])
        name, text = links[0]
        target = (directory / text).resolve()
        are = "is a small file" if len(links) == 1 else "are small files"
        fix = (f"make a root of your own with real links (mkdir -p myroot && ln -s {target} myroot/{name}, the same "
               "for each) and pass --dataset myroot" if target.is_dir() else
               f"point --dataset at a folder whose train/ and test/ are real folders of class folders ({target} "
               "does not exist here either)")
        return DataError(f"No images found under {directory}: {names} {are} holding a path, not a folder: a symbolic "
                         f"link copied as plain text? Expected folders of images. Fix: {fix}.")
    return DataError(f"No images found under {directory}: expected {directory}/<class>/*.{_PATTERN} "
                     f"(optionally inside train/, val/, test/ folders). Put each class's images in its own folder.")


def _check_same_classes(scans: dict[str, dict[str, list[Path]]], dirs: dict[str, Path]) -> list[str]:
    classes = list(scans["train"])
    for split, scan in scans.items():
        if list(scan) != classes:
            only_train = sorted(set(classes) - set(scan))
            only_here = sorted(set(scan) - set(classes))
            name = dirs[split].name
            raise DataError(f"Class folders differ between train/ and {name}/ under {dirs['train'].parent}: only in "
                            f"train/: {only_train or 'none'}; only in {name}/: {only_here or 'none'}. Expected the "
                            "same class folders in every split; rename or remove folders to match.")
    return classes


def _resolve_shape(paths: list[str], image_size: tuple[int, int] | None, channels: int | None, bad: dict[int, str]
                   ) -> tuple[tuple[int, int], int, list[str]]:
    """Default size/channels from the file headers (recording files PIL cannot open in `bad`)."""
    notes: list[str] = []
    if image_size is not None and channels is not None:
        return image_size, check_channels(channels), notes
    infos = probe_files_cached(paths)
    sizes, modes = set(), set()
    for i, (info, err) in enumerate(infos):
        if info is None:
            bad[i] = err
        else:
            sizes.add((info[1], info[0]))
            modes.add(info[2])
    if image_size is None:
        if len(sizes) == 1:
            image_size = next(iter(sizes))
        else:
            image_size = DEFAULT_SIZE
            if sizes:
                notes.append(f"images have {len(sizes)} different sizes: resized to {image_size[0]}x{image_size[1]} "
                             "(pass --image-size / image_size= to choose)")
    if channels is None:
        channels = 1 if modes and modes <= GRAY_MODES else 3
    return image_size, check_channels(channels), notes


def _handle_unreadable(bad: dict[int, str], paths: list[str], root: Path, strict: bool, notes: list[str]) -> None:
    if not bad:
        return
    first = min(bad)
    if strict:
        raise DataError(f"Cannot read {paths[first]} as an image ({bad[first]}): expected every file under {root} "
                        "to decode. Remove or replace it, or load without `strict` to skip unreadable files.")
    msg = f"skipped {len(bad)} unreadable file{'s' if len(bad) > 1 else ''} under {root}, e.g. {paths[first]}"
    warnings.warn(f"{msg} ({bad[first]})", stacklevel=4)
    notes.append(msg)


def load_folder(root: Path, *, name: str, image_size: tuple[int, int] | None, channels: int | None,
                val_fraction: float, seed: int, strict: bool) -> Dataset:
    """Load an ImageFolder directory (see the module docstring for the layouts and split rules)."""
    root = root.resolve()
    dirs = _split_dirs(root)
    notes: list[str] = []
    if dirs and "train" not in dirs:
        raise DataError(f"{root} has {', '.join(d.name + '/' for d in dirs.values())} but no train/ folder: expected "
                        f"{root}/train/<class>/*.{_PATTERN} (or class folders directly under {root}). Add train/.")
    if not dirs:
        dirs = {"all": root}
    scans = {split: scan_classes(d) for split, d in dirs.items()}
    first = next(iter(scans))
    if not any(scans.values()) or not scans[first]:
        raise _no_images_error(dirs[first])
    if first == "train":
        classes = _check_same_classes(scans, dirs)
        ignored = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                         and p not in dirs.values())
        if ignored:
            notes.append(f"folders next to the split folders ignored: {', '.join(ignored)}")
    else:
        classes = list(scans[first])

    # One flat list of files over all splits; labels and split membership alongside.
    paths, labels, split_of = [], [], []
    for split, scan in scans.items():
        for label, cls in enumerate(classes):
            paths += [str(p) for p in scan[cls]]
            labels += [label] * len(scan[cls])
            split_of += [split] * len(scan[cls])
    bad: dict[int, str] = {}
    size, channels, shape_notes = _resolve_shape(paths, image_size, channels, bad)
    notes += shape_notes
    good = np.array([i not in bad for i in range(len(paths))])
    nbytes = int(good.sum()) * channels * size[0] * size[1]
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    split_arr = np.array(split_of)

    if nbytes > STREAMING_THRESHOLD_BYTES:
        _handle_unreadable(bad, paths, root, strict, notes)
        notes.append(f"streamed from disk: {nbytes / 2**30:.1f} GiB decoded exceeds "
                     f"{STREAMING_THRESHOLD_BYTES / 2**30:.1f} GiB")
        everything: SplitLike = StreamingImageSet(paths, labels_t, size, channels, strict=strict)
    else:
        idx = np.flatnonzero(good)
        images, ok, errors, cached = decode_files_cached([paths[i] for i in idx], size, channels)
        if cached == "hit":
            notes.append(f"decoded images read from the cache in {cache_dir()} (files unchanged since last run)")
        for j in np.flatnonzero(~ok):
            bad[int(idx[j])] = errors[j]
        _handle_unreadable(bad, paths, root, strict, notes)
        if not ok.all():
            images, idx = images[torch.as_tensor(ok)], idx[ok]
        # Rows of `everything` are the decodable files; `good` and `split_arr` are re-indexed to match.
        everything = ImageSet(images, labels_t[torch.as_tensor(idx)])
        split_arr, good = split_arr[idx], np.ones(len(idx), dtype=bool)

    parts = {s: everything.subset(np.flatnonzero(good & (split_arr == s))) for s in scans}
    val = None
    if "val" in parts and "test" in parts:
        train, val, test = parts["train"], parts["val"], parts["test"]
        notes.append("train/, val/ and test/ folders used as named (val_fraction ignored)")
    elif "val" in parts:
        train, test = parts["train"], parts["val"]
        notes.append(f"{dirs['val'].name}/ used as test split; validation carved from train/ "
                     f"(val_fraction={val_fraction})")
    elif "test" in parts:
        train, test = parts["train"], parts["test"]
    else:
        train, test = split_test(parts[first], seed)
        notes.append(f"no val/ or test/ folder: stratified 20% test split (seed={seed})")
    source = dict(name=str(root), data_dir=None, image_size=size_to_source(size), channels=channels,
                  val_fraction=val_fraction, seed=seed, strict=strict)
    stats = None if isinstance(everything, ImageSet) else (lambda s: s.stats())
    ds = finalize(name=name, classes=classes, train=train, test=test, source=source, notes=notes,
                  val_fraction=val_fraction, seed=seed, val=val, stats=stats)
    if stats is not None and len(ds.train) > 4096:
        notes.append("mean/std estimated from 4096 training images")
    return ds
