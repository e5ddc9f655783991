import pytest

from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.runs import train_run


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory, digits):
    """A compact net trained on digits for 3 epochs (about 95% test accuracy, ~15 s on 2 cores), inside a folder laid
    out like a study (`<study>/variants/<name>/seed0`) with a report.html, so the report link is served."""
    study = tmp_path_factory.mktemp("serve-study")
    out = study / "variants" / "compact" / "seed0"
    cfg = RunConfig(model="compact", data=DataConfig("digits"),
                    train=TrainConfig(epochs=3, batch_size=64, learning_rate=3e-3, schedule="onecycle", device="cpu"))
    train_run(cfg, out, progress=False, dataset=digits)
    (study / "report.html").write_text("<!DOCTYPE html><html><body><h1>study report (test)</h1></body></html>")
    return out


@pytest.fixture(scope="session")
def int8_serve_run(serve_run, tmp_path_factory, digits):
    from leanvision.optimize import optimize_run

    out = tmp_path_factory.mktemp("serve-int8") / "int8"
    optimize_run(serve_run, ["quantize:mode=int8,calibration_size=128"], out, dataset=digits, progress=False,
                 repeats=3)
    return out
