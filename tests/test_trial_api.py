"""A new user's trial of the README (API and CLI): custom modules through export/optimize/bench, int8 export, the
train API's arguments and help, load_run's mismatch message, never-predicted classes and empty image files."""

import inspect
import json
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import leanvision as lv
from leanvision.cli import main
from leanvision.errors import LeanvisionError

QUICK = ["--dataset", "digits", "--no-progress", "--device", "cpu"]


class MyNet(nn.Module):
    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trial") / "mynet"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lv.train(model=MyNet(), dataset="digits", epochs=1, batch_size=64, out=out)
    return out


# ---- 1: a run trained from the user's own nn.Module: export, optimize, bench ----------------------------------------

def test_custom_module_run_exports_optimizes_and_benches(custom_run, tmp_path):
    run = lv.load_run(custom_run, model=MyNet())
    r = lv.export(run, tmp_path / "a.onnx")
    assert r.parity_ok and r.path == str(tmp_path / "a.onnx") and (tmp_path / "a.onnx").stat().st_size == r.file_bytes
    r = lv.export(custom_run, tmp_path / "b.onnx", model=MyNet())
    assert r.parity_ok and r.to_dict()["parity_ok"] is True

    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = lv.optimize(run, out=tmp_path / "pruned", prune=0.5, finetune_epochs=1)
    result = optimized.result
    assert result.num_params < result.steps[0].params and [s.step for s in result.steps] == ["source", "prune", "fold"]
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())  # the user's module untouched
    assert isinstance(optimized.model, MyNet) and optimized.model is not run.model  # the returned run holds a copy
    assert sum(p.numel() for p in optimized.model.parameters()) == result.num_params
    pruned = lv.load_run(tmp_path / "pruned", model=MyNet())
    assert sum(p.numel() for p in pruned.model.parameters()) == result.num_params
    assert lv.evaluate(pruned).accuracy == pytest.approx(result.test_accuracy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = lv.optimize(custom_run, out=tmp_path / "pruned2", prune=0.5, finetune_epochs=1, model=MyNet())
    assert again.result.num_params == result.num_params

    for target in (run, custom_run):
        rows = lv.bench(target, runtimes="torch", batch_sizes=1, repeats=2, warmup=1,
                        **({} if target is run else {"model": MyNet()}))
        assert [(r.runtime, r.batch_size, r.status) for r in rows] == [("torch", 1, "ok")]
        assert rows[0].latency_median_ms > 0 and rows[0].to_dict()["latency_unit"] == "ms/batch"


def test_custom_module_refusals_are_one_accurate_line(custom_run, tmp_path, capsys):
    with pytest.raises(LeanvisionError, match=r"distill rebuilds .* your own nn\.Module \(.*MyNet\)"):
        lv.optimize(custom_run, [f"distill:teacher={custom_run}"], out=tmp_path / "d", model=MyNet())
    assert main(["export", str(custom_run)]) != 0  # the CLI cannot rebuild the user's class
    err = capsys.readouterr().err
    assert "load_run(RUN_DIR, model=YourNet(...))" in err and "Traceback" not in err
    with pytest.raises(LeanvisionError, match=r"Unknown option\(s\) colour.*repeats"):
        lv.bench(custom_run, model=MyNet(), colour="red")


# ---- 4: a module that does not fit is named, with the first difference ----------------------------------------------

def test_load_run_with_a_module_that_does_not_fit_names_it_and_the_first_key(custom_run):
    with pytest.raises(LeanvisionError) as e:
        lv.load_run(custom_run, model=Other())
    message = str(e.value)
    assert "\n" not in message and "the given Other" in message
    assert "missing key(s), first 'fc.weight'" in message and "unexpected key(s), first 'features." in message
    with pytest.raises(LeanvisionError, match=r"shape mismatch\(es\), first 'features\.0\.weight': \(8, 1, 3, 3\) in "
                                              r"the weights, \(4, 1, 3, 3\) in the model"):
        lv.load_run(custom_run, model=MyNet(width=4))


# ---- 2: export of an int8 run ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("trial8")
    assert main(["train", *QUICK, "--model", "compact", "--epochs", "1", "--out", str(base / "fp32"), "--json"]) == 0
    assert main(["optimize", str(base / "fp32"), "--quantize", "int8", "--out", str(base / "int8"), "--no-progress",
                 "--json"]) == 0
    return base / "int8"


def test_int8_export_keeps_the_runs_model_and_refuses_an_opset(int8_run, capsys):
    own = int8_run / "model.onnx"
    before = own.read_bytes()
    capsys.readouterr()
    assert main(["export", str(int8_run)]) == 0
    out = capsys.readouterr().out
    assert own.read_bytes() == before
    assert f"exported {int8_run / 'export' / 'model.onnx'}" in out and (int8_run / "export" / "model.onnx").is_file()
    assert main(["export", str(int8_run), "--out", str(own)]) != 0
    err = capsys.readouterr().err
    assert "would overwrite it" in err and len(err.strip().splitlines()) == 1 and own.read_bytes() == before
    assert main(["export", str(int8_run), "--opset", "13", "--out", str(int8_run.parent / "x.onnx")]) != 0
    err = capsys.readouterr().err
    assert "--opset 13" in err and "already fixed" in err and len(err.strip().splitlines()) == 1
    assert not (int8_run.parent / "x.onnx").exists()


# ---- 3: the train API takes what the CLI takes, and says what it is -------------------------------------------------

def test_train_api_accepts_overwrite_and_resume_and_lists_every_argument(tmp_path):
    out = tmp_path / "r"
    kw = dict(model="compact", dataset="digits", epochs=1, batch_size=128, out=out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lv.train(**kw)
        with pytest.raises(LeanvisionError, match="already holds a run"):
            lv.train(**kw)
        assert lv.train(**kw, overwrite=True).result.epochs_run == 1
        resumed = lv.train(**{**kw, "epochs": 2}, resume=True)
        assert resumed.result.epochs_run == 2 and [h["epoch"] for h in resumed.history] == [1, 2]
    with pytest.raises(LeanvisionError) as e:
        lv.train(model="compact", dataset="digits", colour="red")
    expected = re.search(r"Expected some of: (.*)\.$", str(e.value)).group(1).split(", ")
    assert {"out", "model", "dataset", "config", "resume", "overwrite", "progress", "recipe", "epochs"} <= set(expected)


def test_callable_modules_show_the_api_signature_and_doc():
    for name in ("train", "evaluate", "optimize", "study"):
        api_function = getattr(lv.api, name)
        assert inspect.signature(getattr(lv, name)) == inspect.signature(api_function)
        assert api_function.__doc__.strip().splitlines()[0] in getattr(lv, name).__doc__
    assert "overwrite" in inspect.signature(lv.train).parameters
    assert callable(lv.train.fit) and lv.train.__name__ == "leanvision.train"  # still the submodule too


# ---- 5: never-predicted classes and empty image files ---------------------------------------------------------------

def test_precision_of_a_never_predicted_class_is_na():
    from leanvision.evaluate import classification_metrics, evaluate_table

    logits = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    metrics = classification_metrics(logits, torch.tensor([0, 1, 1, 2]), ["a", "b", "c"])
    assert metrics["per_class"][2]["precision"] is None and metrics["per_class"][2]["f1"] == 0.0
    assert json.loads(json.dumps(metrics))["per_class"][2]["precision"] is None
    assert metrics["macro_avg"]["precision"] == pytest.approx((1 / 3 + 1.0 + 0.0) / 3)
    row = next(line for line in evaluate_table(metrics).splitlines() if line.startswith("c "))
    assert row.split()[1] == "n/a"


def test_chance_level_run_evaluates_with_na(tmp_path, capsys):
    out = tmp_path / "chance"
    assert main(["train", *QUICK, "--model", "compact", "--epochs", "1", "--lr", "1e-9", "--out", str(out),
                 "--json"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    never = [p for p in metrics["per_class"] if p["precision"] is None]
    assert never  # a near-untrained model predicts few classes
    assert main(["evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    assert sum(" n/a " in line for line in text.splitlines()) == len(never)


def test_empty_image_file_is_reported_as_empty(custom_run, tmp_path, capsys):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    run = lv.load_run(custom_run, model=MyNet())
    result = lv.predict(run, [str(empty), np.zeros((8, 8), np.uint8)])
    assert result[0].error == "empty file (0 bytes)" and result[0].label is None
    assert result[1].error is None and len(result[1].predictions) == 1


def test_empty_image_file_in_predict_cli_and_in_a_folder_dataset(int8_run, tmp_path, capsys):
    from PIL import Image

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    capsys.readouterr()
    main(["predict", str(int8_run), str(empty)])
    captured = capsys.readouterr()
    assert "empty file (0 bytes)" in captured.out + captured.err and "Unidentified" not in captured.out + captured.err
    for cls in ("a", "b"):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "ds" / cls / f"{i}.png")
    (tmp_path / "ds" / "a" / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"empty\.jpg \(empty file \(0 bytes\)\)"):
        lv.load_dataset(str(tmp_path / "ds"), image_size=8, channels=1)
