"""The decoded-image cache: hit, miss, invalidation on a changed/added file, corrupt entries refused and rebuilt."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leanvision.data import cache, load_dataset


@pytest.fixture(autouse=True)
def _small_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(cache, "MIN_FILES", 1)
    monkeypatch.setenv("LEANVISION_CACHE_DIR", str(tmp_path / "decoded"))
    monkeypatch.delenv("LEANVISION_NO_CACHE", raising=False)


def _folder(root: Path, per_class: int = 4) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for c in ("cat", "dog"):
        for i in range(per_class):
            (root / c).mkdir(parents=True, exist_ok=True)
            path = root / c / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path)
            files.append(path)
    return files


def _decode(files):
    return cache.decode_files_cached([str(f) for f in files], (6, 6), 3)


def _entries(tmp_path) -> list[Path]:
    return sorted((tmp_path / "decoded").glob("*.safetensors"))


def test_miss_then_hit_gives_identical_images(tmp_path):
    files = _folder(tmp_path / "imgs")
    images, ok, errors, status = _decode(files)
    assert status == "stored" and ok.all() and len(_entries(tmp_path)) == 1
    again, ok2, _, status2 = _decode(files)
    assert status2 == "hit" and torch.equal(images, again) and ok2.all()
    assert np.array_equal(again[0].numpy().transpose(1, 2, 0), np.asarray(Image.open(files[0])))


def test_changed_file_is_never_served_stale(tmp_path):
    files = _folder(tmp_path / "imgs")
    _decode(files)
    new = np.full((6, 6, 3), 7, dtype=np.uint8)
    Image.fromarray(new).save(files[3])
    st = os.stat(files[3])
    os.utime(files[3], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a rewrite within the same tick still counts
    images, _, _, status = _decode(files)
    assert status == "stored" and np.array_equal(images[3].numpy().transpose(1, 2, 0), new)


def test_added_file_and_other_size_get_their_own_entry(tmp_path):
    files = _folder(tmp_path / "imgs")
    _decode(files)
    extra = tmp_path / "imgs" / "cat" / "9.png"
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(extra)
    assert _decode([*files, extra])[3] == "stored"
    assert cache.decode_files_cached([str(f) for f in files], (4, 4), 3)[3] == "stored"
    assert len(_entries(tmp_path)) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "garbage"])
def test_corrupt_entry_is_refused_and_rebuilt(tmp_path, damage):
    files = _folder(tmp_path / "imgs")
    images, *_ = _decode(files)
    entry = _entries(tmp_path)[0]
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip_data":
        raw[-5] ^= 0xFF  # inside the pixel data: only the checksum can tell
    else:
        raw = bytearray(b"not a safetensors file at all")
    entry.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="refused"):
        again, ok, _, status = _decode(files)
    assert status == "stored" and torch.equal(images, again) and ok.all()
    assert _decode(files)[3] == "hit"


def test_unreadable_file_is_remembered(tmp_path):
    files = _folder(tmp_path / "imgs")
    files[1].write_bytes(b"not an image")
    _, ok, errors, _ = _decode(files)
    _, ok2, errors2, status = _decode(files)
    assert status == "hit" and not ok2[1] and ok2.sum() == len(files) - 1 and errors2[1] == errors[1] != ""


def test_folder_loader_uses_the_cache_and_says_so(tmp_path, monkeypatch):
    _folder(tmp_path / "imgs", per_class=6)
    first = load_dataset(str(tmp_path / "imgs"))
    second = load_dataset(str(tmp_path / "imgs"))
    assert any("cache" in n for n in second.notes) and not any("cache" in n for n in first.notes)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.images, second.test.images)


def test_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANVISION_NO_CACHE", "1")
    files = _folder(tmp_path / "imgs")
    assert _decode(files)[3] == "off" and _decode(files)[3] == "off" and not _entries(tmp_path)


def test_probe_cache_round_trip_and_corruption(tmp_path):
    files = [str(f) for f in _folder(tmp_path / "imgs")]
    first = cache.probe_files_cached(files)
    assert first == cache.probe_files_cached(files) and first[0][0] == (6, 6, "RGB")
    probe = next((tmp_path / "decoded").glob("*.probe.json"))
    probe.write_text("{broken")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.probe_files_cached(files) == first
    assert any("refused" in str(w.message) for w in caught)


def test_unusable_cache_folder_costs_time_not_the_load(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("LEANVISION_CACHE_DIR", str(blocker))
    files = _folder(tmp_path / "imgs")
    assert cache.probe_files_cached([str(f) for f in files])[0][0] == (6, 6, "RGB")
    with pytest.warns(UserWarning, match="could not write the decoded-image cache"):
        images, ok, _, status = _decode(files)
    assert status == "off" and ok.all() and images.shape == (len(files), 3, 6, 6)
