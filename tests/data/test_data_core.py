"""ImageSet batching, stratified splits, digits, name resolution and list_datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from leanvision.data import DATASETS, Dataset, ImageSet, list_datasets, load_dataset, resolve_data_dir
from leanvision.data.core import channel_stats, stratified_split
from leanvision.errors import DataError

pytestmark = pytest.mark.usefixtures("no_network")  # conftest: offline, throwaway dataset cache


def _toy(n: int = 10) -> ImageSet:
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageSet(images, torch.arange(n))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_batches_cover_every_sample_once_per_epoch():
    s = _toy(10)
    for shuffle in (False, True):
        got = [(x, y) for x, y in s.batches(3, shuffle=shuffle, generator=_gen(0))]
        assert [len(y) for _, y in got] == [3, 3, 3, 1]
        labels = torch.cat([y for _, y in got])
        assert sorted(labels.tolist()) == list(range(10))
        for x, y in got:  # images travel with their labels
            assert x.dtype == torch.uint8 and y.dtype == torch.int64
            assert torch.equal(x[:, 0, 0, 0].long(), y)
    assert s.num_batches(3) == 4 and s.num_batches(3, drop_last=True) == 3
    assert [len(y) for _, y in s.batches(3, drop_last=True)] == [3, 3, 3]


def test_batches_order_comes_from_generator_and_resumes():
    s = _toy(50)
    order = lambda seed, **kw: [y.tolist() for _, y in s.batches(8, shuffle=True, generator=_gen(seed), **kw)]  # noqa: E731
    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1)[0] != list(range(8))
    assert order(1, start_batch=3) == order(1)[3:]
    assert order(1, start_batch=7) == []
    assert [y.tolist() for _, y in s.batches(8, start_batch=6)] == [[48, 49]]
    with pytest.raises(DataError, match="batch_size"):
        next(s.batches(0))


def test_stratified_split_is_seeded_stratified_and_exact():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    keep, take = stratified_split(labels, 0.2, seed=3)
    assert len(take) == 20 and len(keep) == 80
    assert np.bincount(labels[take]).tolist() == [10, 6, 3, 1]
    assert set(keep).isdisjoint(take) and sorted(np.concatenate([keep, take])) == list(range(100))
    keep2, take2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(take, take2)
    assert not np.array_equal(take, stratified_split(labels, 0.2, seed=4)[1])
    assert len(stratified_split(labels, 0.0, seed=0)[1]) == 0
    # A class is never emptied when it has more than one member.
    keep, take = stratified_split(np.array([0, 0, 1, 1, 1, 1]), 0.9, seed=0)
    assert set(labels_left := np.array([0, 0, 1, 1, 1, 1])[keep]) == {0, 1}, labels_left


def test_channel_stats_match_numpy():
    x = torch.randint(0, 256, (7, 3, 4, 5), dtype=torch.uint8)
    mean, std = channel_stats(x, chunk=3)
    ref = x.double().div(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(mean, ref.mean(1).numpy(), atol=1e-6)
    assert np.allclose(std, ref.std(1, unbiased=False).numpy(), atol=1e-6)


def test_digits_shapes_stats_and_determinism():
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset) and ds.name == "digits"
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and ds.classes == [str(i) for i in range(10)]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1294, 144, 359)
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert int(ds.train.images.max()) > 200  # 0..16 scaled to 0..255
    assert np.allclose(ds.mean, channel_stats(ds.train.images)[0])  # train part only
    assert not np.allclose(ds.mean, channel_stats(ds.test.images)[0])
    again = load_dataset("digits")
    assert torch.equal(again.train.images, ds.train.images) and torch.equal(again.test.labels, ds.test.labels)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.val.labels, ds.val.labels)
    reloaded = load_dataset(**ds.source)
    assert torch.equal(reloaded.val.images, ds.val.images) and reloaded.mean == ds.mean
    small = load_dataset("digits", image_size=8, channels=3, val_fraction=0)
    assert small.input_shape == (3, 8, 8) and len(small.val) == 0 and len(small.train) == 1438


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.1", True])
def test_val_fraction_validated(bad):
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", val_fraction=bad)


def test_invalid_arguments_are_one_line_data_errors():
    for kwargs, pattern in [(dict(channels=2), "channels"), (dict(image_size=0), "image_size"),
                            (dict(image_size=[28]), "image_size")]:
        with pytest.raises(DataError, match=pattern) as e:
            load_dataset("digits", **kwargs)
        assert "\n" not in str(e.value)


def test_unknown_name_lists_registered_names_and_path_forms():
    with pytest.raises(DataError) as e:
        load_dataset("mnits")
    msg = str(e.value)
    assert "Did you mean 'mnist'" in msg and "digits" in msg and "cifar10" in msg and ".npz" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="not found"):
        load_dataset("/no/such/file.npz")
    with pytest.raises(DataError, match=r"Dataset path \./no_such_folder not found .*image folder"):
        load_dataset("./no_such_folder")


def test_resolve_data_dir(monkeypatch, tmp_path):
    assert resolve_data_dir(str(tmp_path)) == tmp_path.resolve()
    monkeypatch.setenv("LEANVISION_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == (tmp_path / "env").resolve()
    monkeypatch.delenv("LEANVISION_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(None) == (tmp_path / "xdg" / "leanvision").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_dir(None) == (Path.home() / ".cache" / "leanvision").resolve()


def test_list_datasets(tmp_path):
    rows = {r["name"]: r for r in list_datasets(str(tmp_path))}
    assert {"digits", "mnist", "fashion-mnist", "cifar10"} <= set(rows) == set(DATASETS.names())
    assert rows["digits"]["present"] is True
    assert rows["mnist"]["present"] is False and rows["mnist"]["location"] == str(tmp_path.resolve() / "mnist")
    assert rows["cifar10"]["image_shape"] == (3, 32, 32) and rows["cifar10"]["num_train"] == 50000
    for r in rows.values():
        assert set(r) == {"name", "description", "num_train", "num_test", "image_shape", "num_classes", "location",
                          "present"}
