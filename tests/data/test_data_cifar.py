"""CIFAR-10 python batches: restricted unpickling, synthetic batch sets, verified download and safe extraction."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from leanvision.data import cifar, load_dataset
from leanvision.data.cifar import read_batch, unpickle
from leanvision.errors import DataError

pytestmark = pytest.mark.usefixtures("no_network")  # conftest: offline, throwaway dataset cache


def _batch(n: int, seed: int, protocol: int = 2) -> bytes:
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"synthetic", b"labels": [int(v) for v in np.arange(n) % 10],
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
    return pickle.dumps(d, protocol=protocol)


def _write_batches(directory: Path, n: int = 10, protocol: int = 4) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (directory / f"data_batch_{i}").write_bytes(_batch(n, i, protocol))
    (directory / "test_batch").write_bytes(_batch(n, 0, protocol))
    names = [c.encode() for c in cifar.CLASSES]
    (directory / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol))
    return directory


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_side_effect(tmp_path):
    directory = _write_batches(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    (directory / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}))
    with pytest.raises(DataError, match=r"Refusing to unpickle (posix|nt|os)\.system from .*data_batch_1") as e:
        load_dataset("cifar10", str(tmp_path), download=False)
    assert "CIFAR batches contain only lists, bytes and numeric arrays" in str(e.value)
    with pytest.raises(DataError, match="Refusing to unpickle"):
        read_batch(directory / "data_batch_1")
    assert not marker.exists()
    # Other globals are refused too, even harmless-looking ones.
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": io.BytesIO(b"")}))
    with pytest.raises(DataError, match=r"Refusing to unpickle _?io\.BytesIO"):
        unpickle(directory / "test_batch")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_synthetic_batches_load(tmp_path, protocol):
    """Python 3 pickles of protocols 4 and 5 load; Python 3 protocol 2 needs `_codecs.encode`, which is refused."""
    directory = _write_batches(tmp_path / "cifar-10-batches-py", protocol=protocol)
    if protocol == 2:  # py3 protocol 2 pickles bytes via _codecs.encode, which the official py2 files never use
        with pytest.raises(DataError, match="_codecs.encode"):
            read_batch(directory / "data_batch_1")
        return
    ds = load_dataset("cifar10", str(tmp_path), download=False, val_fraction=0.2)
    assert ds.classes == list(cifar.CLASSES) and ds.input_shape == (3, 32, 32)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 10, 10)
    raw = pickle.loads(_batch(10, 0))[b"data"].reshape(10, 3, 32, 32)
    assert torch.equal(ds.test.images, torch.from_numpy(raw))
    assert ds.test.labels.tolist() == list(range(10))
    # The folder itself and its parent both work as a path name.
    for name in (directory, tmp_path):
        by_path = load_dataset(str(name), val_fraction=0.2)
        assert torch.equal(by_path.test.images, ds.test.images) and by_path.classes == ds.classes
    gray = load_dataset("cifar10", str(tmp_path), download=False, channels=1, image_size=16)
    assert gray.input_shape == (1, 16, 16)


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` (BINSTRING), like the cPickle that wrote the official batches."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else
                   pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin-1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def test_python2_style_batch_loads(tmp_path):
    """The official files: Python 2 protocol-2 pickles naming numpy.core.multiarray._reconstruct."""
    data = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({b"batch_label": b"x", b"labels": [3, 9], b"data": data})
    body = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in body and b"_codecs" not in body
    path = tmp_path / "data_batch_1"
    path.write_bytes(body)
    images, labels = read_batch(path)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 9]
    assert np.array_equal(images.reshape(2, 3072), data)


def test_invalid_batches(tmp_path):
    directory = _write_batches(tmp_path / "cifar-10-batches-py")
    (directory / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="Corrupt CIFAR batch .*data_batch_3"):
        load_dataset("cifar10", str(tmp_path), download=False)
    _write_batches(directory)
    d = pickle.loads(_batch(10, 0))
    d[b"labels"][0] = 10
    (directory / "test_batch").write_bytes(pickle.dumps(d, protocol=4))
    with pytest.raises(DataError, match=r"one label in 0\.\.9"):
        load_dataset("cifar10", str(tmp_path), download=False)
    d[b"labels"][0] = 0
    d[b"data"] = d[b"data"][:, :100]
    (directory / "test_batch").write_bytes(pickle.dumps(d, protocol=4))
    with pytest.raises(DataError, match="N x 3072"):
        load_dataset("cifar10", str(tmp_path), download=False)
    (directory / "test_batch").unlink()
    with pytest.raises(DataError, match="lacks test_batch"):
        load_dataset("cifar10", str(tmp_path), download=False)


def test_missing_cifar_offline(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 not found in .*LEANVISION_OFFLINE=1.*cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", str(tmp_path))


def test_download_extracts_only_expected_members(tmp_path, monkeypatch):
    src = _write_batches(tmp_path / "src" / "cifar-10-batches-py")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(src.iterdir()):
            tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
        evil = tarfile.TarInfo("../../escaped.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    archive = buf.getvalue()
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.delenv("LEANVISION_OFFLINE")
    monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout=None: io.BytesIO(archive))
    root = tmp_path / "a" / "b" / "root"
    ds = load_dataset("cifar10", str(root))
    assert len(ds.test) == 10
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # archive removed after extraction
    assert not list(tmp_path.rglob("escaped.txt"))
    monkeypatch.setattr(cifar, "MD5", "0" * 32)
    with pytest.raises(DataError, match="md5 mismatch"):
        load_dataset("cifar10", str(tmp_path / "other"))
