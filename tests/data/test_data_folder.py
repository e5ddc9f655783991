"""Image folders: real CIFAR JPEGs and hymenoptera photos, PIL modes, unreadable files, split layouts, streaming."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import SHARED_DATA

from leanvision.data import ImageSet, StreamingImageSet, folder, load_dataset, load_image_files
from leanvision.errors import DataError


def _shared_data() -> Path | None:
    return SHARED_DATA if SHARED_DATA.is_dir() else None


def _shared(sub: str) -> Path:
    shared = _shared_data()
    if shared is None or not (shared / sub).is_dir():
        pytest.skip(f"shared/data/{sub} not available next to the repository")
    return shared / sub


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: offline, throwaway dataset cache


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _rgb_folder(root: Path, classes=("a", "b", "c"), per_class=5, sizes=((8, 6),)) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for c in classes:
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            files.append(_save(root / c / f"{i:03d}.png", Image.fromarray(arr)))
    return files


def test_real_cifar_jpeg_folder():
    ds = load_dataset(str(_shared("cifar10/test_jpg")))
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert ds.input_shape == (3, 32, 32) and isinstance(ds.train, ImageSet)
    assert len(ds.test) == 2000 and np.bincount(ds.test.labels.numpy()).tolist() == [200] * 10
    assert len(ds.val) == 800 and np.bincount(ds.val.labels.numpy()).tolist() == [80] * 10
    assert len(ds.train) == 7200
    assert any("20% test" in n for n in ds.notes)
    assert all(0.3 < m < 0.6 for m in ds.mean) and all(0.2 < s < 0.3 for s in ds.std)


def test_real_hymenoptera_with_gif():
    root = _shared("hymenoptera_data")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the GIF must convert, not be skipped
        ds = load_dataset(str(root), val_fraction=0)
    assert ds.classes == ["ants", "bees"] and ds.input_shape == (3, 64, 64)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (245, 0, 153)
    assert any("val/ used as test split" in n for n in ds.notes)
    # load_image_files gives exactly the tensors of the folder loader (train/ rows are in sorted file order).
    files = sorted((root / "train" / "ants").iterdir())
    picks = [i for i, p in enumerate(files) if p.suffix in (".gif", ".jpeg")] + [0, len(files) - 1]
    assert any(files[i].name == "imageNotFound.gif" for i in picks)
    direct = load_image_files([str(files[i]) for i in picks], 64, 3)
    assert torch.equal(direct, ds.train.images[picks])
    assert ds.source["image_size"] == 64 and ds.source["channels"] == 3


def _mode_images() -> dict[str, tuple[Image.Image, str, tuple[int, int, int], int]]:
    """name -> (image, extension, expected RGB of pixel (0, 0), expected gray)."""
    size = (6, 5)
    pal = Image.new("P", size, 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    la = Image.new("LA", size, (100, 0))
    la.putpixel((1, 0), (100, 255))
    anim = [Image.new("P", size, 0), Image.new("P", size, 1)]
    for f in anim:
        f.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    return {
        "L": (Image.new("L", size, 100), ".png", (100, 100, 100), 100),
        "LA": (la, ".png", (255, 255, 255), 255),
        "P": (pal, ".png", (255, 0, 0), 76),
        "Ptrans": (pal_t, ".png", (255, 255, 255), 255),
        "RGBA": (Image.new("RGBA", size, (200, 100, 0, 128)), ".png", (227, 177, 127), 186),
        "I16": (Image.fromarray(np.full((5, 6), 65535, np.uint16)), ".png", (255, 255, 255), 255),
        "I16mid": (Image.fromarray(np.full((5, 6), 32896, np.uint16)), ".PNG", (128, 128, 128), 128),
        "CMYK": (Image.new("CMYK", size, (0, 0, 0, 0)), ".jpg", (255, 255, 255), 255),
        "one": (Image.new("1", size, 1), ".bmp", (255, 255, 255), 255),
        "gif": (anim, ".gif", (255, 0, 0), 76),
        "webp": (Image.new("RGB", size, (10, 200, 30)), ".webp", (10, 200, 30), 124),
    }


def _write_modes(root: Path) -> dict[str, Path]:
    paths = {}
    for name, (img, ext, _, _) in _mode_images().items():
        path = root / name / f"img{ext}"
        if isinstance(img, list):
            paths[name] = _save(path, img[0], save_all=True, append_images=img[1:])
        elif ext == ".webp":
            paths[name] = _save(path, img, lossless=True)
        else:
            paths[name] = _save(path, img)
    return paths


def test_every_mode_converts_to_requested_channels(tmp_path):
    paths = _write_modes(tmp_path / "modes")
    with Image.open(paths["I16"]) as i16, Image.open(paths["Ptrans"]) as ptrans:
        assert i16.mode.startswith("I") and ptrans.mode == "P" and "transparency" in ptrans.info
    names = list(paths)
    tol = {"CMYK": 3, "webp": 1, "RGBA": 1}
    rgb = load_image_files([str(paths[n]) for n in names], (5, 6), 3)
    gray = load_image_files([str(paths[n]) for n in names], (5, 6), 1)
    assert rgb.shape == (len(names), 3, 5, 6) and gray.shape == (len(names), 1, 5, 6)
    assert load_image_files([str(paths["L"])], 3, 1).shape == (1, 1, 3, 3)
    for i, n in enumerate(names):
        _, _, want_rgb, want_gray = _mode_images()[n]
        got = rgb[i, :, 0, 0].tolist()
        assert np.abs(np.subtract(got, want_rgb)).max() <= tol.get(n, 0), (n, got, want_rgb)
        assert abs(int(gray[i, 0, 0, 0]) - want_gray) <= tol.get(n, 0) + 1, (n, int(gray[i, 0, 0, 0]))
    la = load_image_files([str(paths["LA"])], (5, 6), 1)
    assert int(la[0, 0, 0, 1]) == 100  # the opaque pixel keeps its value
    # The whole folder loads (one class per mode), with 3 channels by default (it has colour images).
    ds = load_dataset(str(tmp_path / "modes"), image_size=5, val_fraction=0)
    assert ds.input_shape == (3, 5, 5) and ds.num_classes == len(names)
    assert len(ds.train) + len(ds.test) == len(names)


def test_grayscale_folder_defaults_to_one_channel_and_native_size(tmp_path):
    paths = _write_modes(tmp_path / "m")
    for name in ("L", "LA", "I16", "one"):
        target = tmp_path / "gray" / name / "img.png"
        target.parent.mkdir(parents=True)
        target.write_bytes(paths[name].read_bytes())
    ds = load_dataset(str(tmp_path / "gray"), val_fraction=0)
    assert ds.input_shape == (1, 5, 6) and ds.source["image_size"] == [5, 6] and ds.source["channels"] == 1


def test_load_image_files_matches_folder_loader(tmp_path):
    root = tmp_path / "split"
    files = _rgb_folder(root / "train", sizes=((8, 6), (13, 21), (40, 3)))
    _rgb_folder(root / "test", per_class=1)
    ds = load_dataset(str(root), val_fraction=0, channels=1)
    assert ds.input_shape == (1, 64, 64)  # sizes differ: default 64
    assert torch.equal(load_image_files([str(f) for f in files], 64, 1), ds.train.images)
    with pytest.raises(DataError, match="Image file not found: .*nope.png"):
        load_image_files([str(files[0]), str(tmp_path / "nope.png")], 64, 1)
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(DataError, match=r"Cannot read .*fake\.png as an image"):
        load_image_files([str(tmp_path / "fake.png")], 64, 1)


def test_unreadable_files_skipped_with_one_warning_or_strict_error(tmp_path):
    root = tmp_path / "f"
    _rgb_folder(root)
    (root / "a" / "x.png").write_bytes(b"this is not an image")
    good = (root / "b" / "000.png").read_bytes()
    (root / "b" / "zz_truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable files under .*, e\.g\. .*x\.png") as record:
        ds = load_dataset(str(root))
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    assert len(ds.train) + len(ds.val) + len(ds.test) == 15
    assert any("2 unreadable files" in n for n in ds.notes)
    with pytest.raises(DataError, match=r"Cannot read .*x\.png as an image"):
        load_dataset(str(root), strict=True)
    (root / "a" / "x.png").unlink()
    with pytest.raises(DataError, match=r"Cannot read .*zz_truncated\.png"):  # found while decoding, not probing
        load_dataset(str(root), strict=True, image_size=8, channels=3)


def test_empty_folder_and_mismatched_classes(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match=r"No images found under .*empty: expected .*<class>/\*\.png\|jpg"):
        load_dataset(str(tmp_path / "empty"))
    # Links copied as text (what a copy tool without symlink support leaves): named, never followed.
    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "test").write_text("../nowhere")
    with pytest.raises(DataError, match=r"test \('\.\./nowhere'\) is a small file holding a path.*Fix: point "
                       r"--dataset at a folder whose train/ and test/ are real folders .*nowhere does not exist"):
        load_dataset(str(tmp_path / "copied"))
    _rgb_folder(tmp_path / "train_jpg")
    _rgb_folder(tmp_path / "test_jpg")
    (tmp_path / "copied" / "train").write_text("../train_jpg")
    (tmp_path / "copied" / "test").write_text("../test_jpg\n")
    with pytest.raises(DataError, match=r"test \('\.\./test_jpg'\), train \('\.\./train_jpg'\) are small files "
                       r"holding a path, not a folder: a symbolic link copied as plain text\? .*ln -s .*test_jpg"):
        load_dataset(str(tmp_path / "copied"))
    _rgb_folder(tmp_path / "mm" / "train", classes=("a", "b"))
    _rgb_folder(tmp_path / "mm" / "val", classes=("a", "c"))
    with pytest.raises(DataError, match=r"Class folders differ .*only in train/: \['b'\]; only in val/: \['c'\]"):
        load_dataset(str(tmp_path / "mm"))
    _rgb_folder(tmp_path / "noval" / "val")
    with pytest.raises(DataError, match="no train/ folder"):
        load_dataset(str(tmp_path / "noval"))


def test_split_layouts(tmp_path):
    _rgb_folder(tmp_path / "tvt" / "train", per_class=10)
    _rgb_folder(tmp_path / "tvt" / "val", per_class=2)
    _rgb_folder(tmp_path / "tvt" / "test", per_class=3)
    ds = load_dataset(str(tmp_path / "tvt"))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 6, 9)
    _rgb_folder(tmp_path / "tv" / "train", per_class=10)
    _rgb_folder(tmp_path / "tv" / "val", per_class=2)
    ds = load_dataset(str(tmp_path / "tv"), val_fraction=0.2)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 6)
    _rgb_folder(tmp_path / "tt" / "train", per_class=10)
    _rgb_folder(tmp_path / "tt" / "test", per_class=2)
    ds = load_dataset(str(tmp_path / "tt"), val_fraction=0.2)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 6)
    _rgb_folder(tmp_path / "flat", per_class=10)
    ds = load_dataset(str(tmp_path / "flat"), val_fraction=0.25)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 6)
    assert np.bincount(ds.test.labels.numpy()).tolist() == [2, 2, 2]
    assert ds.input_shape == (3, 6, 8)
    again = load_dataset(**ds.source)
    assert torch.equal(again.test.images, ds.test.images) and torch.equal(again.val.labels, ds.val.labels)


def test_streaming_matches_in_memory(tmp_path, monkeypatch):
    root = tmp_path / "s"
    _rgb_folder(root, per_class=8, sizes=((8, 6), (5, 9)))
    memory = load_dataset(str(root), image_size=7)
    monkeypatch.setattr(folder, "STREAMING_THRESHOLD_BYTES", 0)
    stream = load_dataset(str(root), image_size=7)
    assert isinstance(stream.train, StreamingImageSet) and isinstance(stream.test, StreamingImageSet)
    assert any("streamed" in n for n in stream.notes)
    assert stream.input_shape == memory.input_shape and len(stream.train) == len(memory.train)
    assert np.allclose(stream.mean, memory.mean) and np.allclose(stream.std, memory.std)
    assert stream.train.num_batches(4) == memory.train.num_batches(4)
    kw = dict(shuffle=True, drop_last=False)
    a = list(stream.train.batches(4, generator=torch.Generator().manual_seed(5), start_batch=1, **kw))
    b = list(memory.train.batches(4, generator=torch.Generator().manual_seed(5), start_batch=1, **kw))
    assert len(a) == len(b) == memory.train.num_batches(4) - 1
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == torch.uint8 and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_streaming_drops_unreadable_file_while_iterating(tmp_path, monkeypatch):
    root = tmp_path / "s"
    _rgb_folder(root / "train", per_class=4)
    _rgb_folder(root / "test", per_class=2)
    (root / "test" / "a" / "bad.png").write_bytes(b"garbage")
    monkeypatch.setattr(folder, "STREAMING_THRESHOLD_BYTES", 0)
    # With size and channels given nothing is probed up front: the bad file shows up while streaming.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(str(root), image_size=8, channels=3, val_fraction=0)
    assert len(ds.test) == 7
    with pytest.warns(UserWarning, match=r"skipped unreadable file .*bad\.png"):
        assert sum(len(y) for _, y in ds.test.batches(5)) == 6
    strict = load_dataset(str(root), image_size=8, channels=3, val_fraction=0, strict=True)
    with pytest.raises(DataError, match=r"Cannot read .*bad\.png"):
        list(strict.test.batches(5))
