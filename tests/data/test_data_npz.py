"""Datasets saved as .npz (x_train, y_train, x_test, y_test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leanvision.data import load_dataset
from leanvision.errors import DataError

pytestmark = pytest.mark.usefixtures("no_network")  # conftest: offline, throwaway dataset cache


def _arrays(n_train=40, n_test=10, shape=(12, 10), dtype=np.uint8):
    rng = np.random.default_rng(0)
    return dict(x_train=rng.integers(0, 256, (n_train, *shape)).astype(dtype),
                y_train=np.arange(n_train) % 4, x_test=rng.integers(0, 256, (n_test, *shape)).astype(dtype),
                y_test=np.arange(n_test) % 4)


def test_npz_happy_path_grayscale(tmp_path):
    arrays = _arrays()
    path = tmp_path / "set.npz"
    np.savez(path, **arrays)
    ds = load_dataset(str(path), val_fraction=0.25)
    assert ds.input_shape == (1, 12, 10) and ds.classes == ["0", "1", "2", "3"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 10)
    assert torch.equal(ds.test.images[:, 0], torch.from_numpy(arrays["x_test"]))
    assert ds.source["name"] == str(path.resolve()) and ds.name == str(path)
    again = load_dataset(**ds.source)
    assert torch.equal(again.val.images, ds.val.images)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_npz_color_layouts_floats_and_class_names(tmp_path, layout):
    arrays = _arrays(shape=(8, 8, 3) if layout == "nhwc" else (3, 8, 8))
    expected = arrays["x_test"] if layout == "nchw" else arrays["x_test"].transpose(0, 3, 1, 2)
    for k in ("x_train", "x_test"):
        arrays[k] = arrays[k].astype(np.float32) / 255
    path = tmp_path / "c.npz"
    np.savez(path, classes=np.array(["a", "b", "c", "d", "e"]), **arrays)
    ds = load_dataset(str(path))
    assert ds.input_shape == (3, 8, 8) and ds.classes == ["a", "b", "c", "d", "e"]
    assert torch.equal(ds.test.images, torch.from_numpy(np.ascontiguousarray(expected)))


def test_npz_missing_keys(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError) as e:
        load_dataset(str(path))
    msg = str(e.value)
    assert "lacks y_train, x_test, y_test" in msg and "found: labels, x_train" in msg
    assert "x_train, y_train, x_test, y_test" in msg and "\n" not in msg


def test_npz_labels_out_of_range(tmp_path):
    arrays = _arrays()
    arrays["y_train"][3] = -1
    np.savez(tmp_path / "neg.npz", **arrays)
    with pytest.raises(DataError, match="labels outside"):
        load_dataset(str(tmp_path / "neg.npz"))
    arrays = _arrays()
    arrays["y_test"][0] = 7
    np.savez(tmp_path / "names.npz", classes=np.array(["a", "b", "c", "d"]), **arrays)
    with pytest.raises(DataError, match=r"labels outside 0\.\.3 \(e\.g\. 7\)"):
        load_dataset(str(tmp_path / "names.npz"))


def test_npz_bad_values_and_counts(tmp_path):
    arrays = _arrays(dtype=np.float32)
    arrays["x_train"] = arrays["x_train"] * 10  # floats far above 255
    np.savez(tmp_path / "f.npz", **arrays)
    with pytest.raises(DataError, match="floats in"):
        load_dataset(str(tmp_path / "f.npz"))
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    np.savez(tmp_path / "n.npz", **arrays)
    with pytest.raises(DataError, match="40 images but y_train has 39 labels"):
        load_dataset(str(tmp_path / "n.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="Cannot read"):
        load_dataset(str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "obj.npz", x_train=np.array([object()]), y_train=[0], x_test=[0], y_test=[0])
    with pytest.raises(DataError, match="without pickled objects"):
        load_dataset(str(tmp_path / "obj.npz"))
