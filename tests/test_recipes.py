import json

import pytest
import torch

from leanvision.cli import main
from leanvision.errors import LeanvisionError
from leanvision.recipes import fast_precision, resolve_recipe


def test_fast_recipe_on_digits_reaches_floor(tmp_path, capsys):
    out = tmp_path / "fast"
    assert main(["train", "--recipe", "fast", "--dataset", "digits", "--device", "cpu", "--out", str(out),
                 "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_accuracy"] >= 0.85
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["model"] == "fastnet" and config["train"]["optimizer"] == "sgd" and config["train"]["nesterov"]
    assert config["train"]["precision"] == fast_precision("cpu")


def test_explicit_flags_override_the_recipe(tmp_path, capsys):
    out = tmp_path / "fast"
    assert main(["train", "--recipe", "fast", "--dataset", "digits", "--device", "cpu", "--epochs", "1",
                 "--model", "seed-shallow", "--out", str(out), "--no-progress", "--json"]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["model"] == "seed-shallow" and config["train"]["epochs"] == 1
    assert config["train"]["schedule"] == "onecycle"  # the rest still comes from the recipe


def test_fast_recipe_picks_by_input_shape():
    gray, colour = resolve_recipe("fast", (1, 28, 28)), resolve_recipe("fast", (3, 32, 32))
    assert gray.model == "fastnet" and gray.train["augment"] == "none"
    assert colour.model == "whitenet" and colour.train["augment"] == "translate-flip"
    accurate = resolve_recipe("accurate", (3, 32, 32))
    assert accurate.model_kwargs["widths"] == (64, 256, 256) and accurate.train["epochs"] > colour.train["epochs"]
    assert resolve_recipe("accurate", (1, 28, 28)).model_kwargs["width"] > gray.model_kwargs["width"]


def test_unknown_recipe_is_one_line_error(tmp_path, capsys):
    assert main(["train", "--recipe", "fastest", "--dataset", "digits", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Did you mean 'fast'" in err and "Traceback" not in err


@pytest.mark.parametrize(("device", "bf16_cpu", "amx", "expected"), [
    ("cpu", True, False, "bf16"), ("cpu", False, True, "bf16"), ("cpu", False, False, "fp32"),
    ("mps", True, True, "fp32"), ("tpu", False, False, "bf16"), ("xla", False, False, "bf16"),
])
def test_fast_precision_follows_the_hardware(device, bf16_cpu, amx, expected, monkeypatch):
    """bf16 exactly where the CPU has native bf16 math (AVX512-BF16 or AMX) or on a TPU; fp32 on MPS and other CPUs."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_cpu, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert fast_precision(device) == expected


@pytest.mark.parametrize("device, backend", [("mps", "mps"), ("tpu", "xla"), ("xla", "xla")])
def test_fast_recipe_runs_where_channels_last_is_refused(device, backend, monkeypatch):
    """`--recipe fast` on MPS/TPU resolves to a config setup_device accepts (it used to force channels_last)."""
    from leanvision import device as devices
    from leanvision.config import TrainConfig

    for shape in ((1, 28, 28), (3, 32, 32)):
        recipe = resolve_recipe("fast", shape, device)
        cfg = TrainConfig(**{**recipe.train, "device": device})
        assert cfg.channels_last is False and cfg.precision == ("fp32" if device == "mps" else "bf16")
        monkeypatch.setattr(devices, "resolve_device", lambda name: torch.device(backend))  # a faked MPS/TPU
        assert devices.setup_train_device(cfg).type == backend
        with pytest.raises(LeanvisionError, match="channels_last is supported on cuda and cpu"):
            devices.setup_device(device, channels_last=True)  # what the recipe used to ask for
    assert resolve_recipe("fast", (1, 28, 28), "cpu").train["channels_last"] is True
    assert resolve_recipe("fast", (1, 28, 28), "cuda:1").train["channels_last"] is True
