import os
import tempfile
from pathlib import Path

import pytest
from testkit import SHARED_DATA

os.environ.setdefault("LEANVISION_OFFLINE", "1")  # tests never download
# Decoded-image cache entries written by tests go to a throwaway folder, never to the user's cache.
os.environ["LEANVISION_CACHE_DIR"] = tempfile.mkdtemp(prefix="leanvision-test-cache-")

@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No downloads, and a throwaway dataset cache (`LEANVISION_DATA`). Modules that need it everywhere use
    `pytestmark = pytest.mark.usefixtures("no_network")`."""
    monkeypatch.setenv("LEANVISION_OFFLINE", "1")
    monkeypatch.setenv("LEANVISION_DATA", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def mnist_dir(shared_data) -> Path:
    path = shared_data / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST IDX files not found in {path}")
    return path


@pytest.fixture(scope="session")
def digits():
    from leanvision.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that set torch's thread count (serve's --threads, bench's --threads) must not change later tests'
    arithmetic: reductions split over another number of threads round differently."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
