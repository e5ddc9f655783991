import pytest

from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.runs import train_run

BASE_TRAIN = dict(epochs=4, batch_size=64, learning_rate=3e-3, schedule="onecycle", device="cpu")


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, digits):
    """A compact net trained on digits once for the whole session (about 97% test accuracy, ~15 s on 2 cores)."""
    out = tmp_path_factory.mktemp("techniques") / "compact"
    cfg = RunConfig(model="compact", data=DataConfig("digits"), train=TrainConfig(**BASE_TRAIN))
    train_run(cfg, out, progress=False, dataset=digits)
    return out
