"""MNIST / Fashion-MNIST IDX files: real data, tiny generated files, corruption, missing files, downloads."""

from __future__ import annotations

import gzip
import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import SHARED_DATA

from leanvision.data import load_dataset
from leanvision.data.idx import FILES, read_idx
from leanvision.errors import DataError


def _shared_data() -> Path | None:
    return SHARED_DATA if SHARED_DATA.is_dir() else None


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: offline, throwaway dataset cache


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 + array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write_set(directory: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, labels=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        FILES[0]: rng.integers(0, 256, (n_train, 28, 28)),
        FILES[1]: np.arange(n_train) % 10 if labels is None else np.asarray(labels),
        FILES[2]: rng.integers(0, 256, (n_test, 28, 28)),
        FILES[3]: np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (directory / name).write_bytes(gzip.compress(data))
        else:
            (directory / name[:-3]).write_bytes(data)
    return directory


def test_real_mnist():
    shared = _shared_data()
    if shared is None or not (shared / "mnist" / FILES[0]).is_file():
        pytest.skip("shared/data/mnist not available next to the repository")
    ds = load_dataset("mnist", str(shared), download=False)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    assert len(ds.train) + len(ds.val) == 60000
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8 and split.labels.min() == 0 and split.labels.max() == 9
    assert np.bincount(ds.val.labels.numpy()).min() > 500  # stratified: every class about 10%
    assert abs(ds.mean[0] - 0.1307) < 0.001 and abs(ds.std[0] - 0.3081) < 0.001  # the well-known MNIST stats
    assert ds.source["data_dir"] == str(shared.resolve())
    assert ds.test.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the official test order is kept
    direct = load_dataset("mnist", str(shared / "mnist"), download=False, val_fraction=0)  # the mnist/ folder itself
    assert len(direct.train) == 60000 and torch.equal(direct.test.images, ds.test.images)


def test_tiny_idx_gz_and_uncompressed(tmp_path):
    _write_set(tmp_path / "a" / "mnist", gz=True)
    _write_set(tmp_path / "b", gz=False)
    a = load_dataset("mnist", str(tmp_path / "a"), val_fraction=0.5, download=False)
    b = load_dataset("mnist", str(tmp_path / "b"), val_fraction=0.5, download=False)
    assert (len(a.train), len(a.val), len(a.test)) == (10, 10, 10)
    assert torch.equal(a.test.images, b.test.images)
    raw = read_idx(tmp_path / "b" / FILES[2][:-3], 2051)
    assert raw.shape == (10, 28, 28) and torch.equal(a.test.images[:, 0], torch.from_numpy(raw))
    c = load_dataset("mnist", str(tmp_path / "b"), image_size=32, channels=3, download=False)
    assert c.input_shape == (3, 32, 32) and c.source["image_size"] == 32


def test_fashion_mnist_classes_and_subfolder(tmp_path):
    _write_set(tmp_path / "fashion-mnist")
    ds = load_dataset("fashion-mnist", str(tmp_path), download=False)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[-1] == "Ankle boot"


def test_truncated_idx_reports_sizes(tmp_path):
    d = _write_set(tmp_path / "mnist", gz=False)
    path = d / FILES[0][:-3]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"truncated.*15596 bytes found, expected 15696.*re-download") as e:
        load_dataset("mnist", str(tmp_path), download=False)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    d = _write_set(tmp_path / "gz" / "mnist", gz=True)
    path = d / FILES[0]
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"truncated or corrupt.*expected 15696.*gzip") as e:
        load_dataset("mnist", str(tmp_path / "gz"), download=False)
    assert str(path) in str(e.value)


def test_wrong_magic(tmp_path):
    d = _write_set(tmp_path / "mnist", gz=False)
    shutil.copy(d / FILES[1][:-3], d / FILES[0][:-3])
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        load_dataset("mnist", str(tmp_path), download=False)


def test_labels_out_of_range_or_miscounted(tmp_path):
    _write_set(tmp_path / "a" / "mnist", labels=[10] + [0] * 19)
    with pytest.raises(DataError, match=r"outside 0\.\.9"):
        load_dataset("mnist", str(tmp_path / "a"), download=False)
    _write_set(tmp_path / "b" / "mnist", labels=[0] * 19)
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        load_dataset("mnist", str(tmp_path / "b"), download=False)


@pytest.mark.parametrize("offline", [False, True])
def test_missing_files_name_all_four(tmp_path, monkeypatch, offline):
    if offline:
        monkeypatch.setenv("LEANVISION_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path), download=offline)
    msg = str(e.value)
    assert all(name in msg for name in FILES) and str(tmp_path.resolve()) in msg and "`data_dir`" in msg
    assert ("LEANVISION_OFFLINE=1" if offline else "download disabled") in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in msg and "\n" not in msg
    assert not (tmp_path / "mnist").exists() or not any((tmp_path / "mnist").iterdir())


def _fake_urlopen(files: dict[str, bytes], calls: list[str]):
    def urlopen(request, timeout=None):
        url = request.full_url if hasattr(request, "full_url") else request
        calls.append(url)
        assert timeout == 15
        name = url.rsplit("/", 1)[1]
        if "ossci" in url or name not in files:  # first mirror down: the second one must be tried
            raise OSError("connection refused")
        return io.BytesIO(files[name])
    return urlopen


def test_download_verifies_md5_and_uses_mirrors(tmp_path, monkeypatch):
    shared = _shared_data()
    if shared is None or not (shared / "mnist" / FILES[0]).is_file():
        pytest.skip("shared/data/mnist not available next to the repository")
    monkeypatch.delenv("LEANVISION_OFFLINE")
    files = {name: (shared / "mnist" / name).read_bytes() for name in FILES}  # the official files
    calls: list[str] = []
    monkeypatch.setattr("urllib.request.urlopen", _fake_urlopen(files, calls))
    ds = load_dataset("mnist", str(tmp_path / "dl"))
    assert len(ds.test) == 10000 and any("storage.googleapis.com" in c for c in calls)
    assert sorted(p.name for p in (tmp_path / "dl" / "mnist").iterdir()) == sorted(FILES)  # no temp files left
    # A corrupted download is rejected by md5 and leaves nothing behind.
    files[FILES[3]] = files[FILES[3]][:-1] + b"x"
    with pytest.raises(DataError, match="md5 mismatch"):
        load_dataset("mnist", str(tmp_path / "dl2"))
    left = list((tmp_path / "dl2" / "mnist").iterdir())
    assert FILES[3] not in [p.name for p in left] and not [p for p in left if p.name.startswith(".")]
