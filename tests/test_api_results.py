"""The typed results of the Python API: `to_dict()` is exactly the CLI's --json, and the API takes technique configs,
spec strings and recipes."""

import json
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

import leanvision as lv
from leanvision.cli import main
from leanvision.errors import LeanvisionError
from leanvision.results import Result

QUICK = ["--dataset", "digits", "--no-progress", "--device", "cpu"]


@dataclass(kw_only=True)
class Inner(Result):
    aliases: ClassVar[dict[str, str]] = {"name": "class"}
    name: str
    score: float | None


@dataclass(kw_only=True)
class Outer(Result):
    nested: ClassVar[dict[str, type[Result]]] = {"items": Inner, "best": Inner}
    total: int
    optional: float | None = None
    items: list[Inner] = field(default_factory=list)
    best: Inner | None = None


def test_result_round_trips_keys_order_extras_and_nesting():
    data = {"z_extra": [1, 2], "items": [{"class": "a", "score": None, "note": "x"}], "total": 3,
            "best": {"score": 0.5, "class": "b"}}
    typed = Outer.from_dict(data)
    assert typed.total == 3 and typed.optional is None and typed.extra == {"z_extra": [1, 2]}
    assert typed.items[0].name == "a" and typed.items[0].extra == {"note": "x"} and typed.best.score == 0.5
    assert typed.to_dict() == data and list(typed.to_dict()) == list(data)  # same keys, same order: no "optional"
    assert list(typed.to_dict()["best"]) == ["score", "class"]
    assert json.dumps(typed.to_dict()) == json.dumps(data)
    typed.optional = 1.5  # a field set after reading is kept, after the others
    assert list(typed.to_dict()) == [*data, "optional"] and typed.to_dict()["optional"] == 1.5
    built = Outer(total=1, items=[Inner(name="c", score=1.0)])
    assert built.to_dict() == {"total": 1, "optional": None, "items": [{"class": "c", "score": 1.0}], "best": None}
    assert Inner.from_dict({"class": "d"}).score is None  # a missing key reads as None


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    return base


def test_cli_json_is_the_typed_results_to_dict(cli_run, capsys):
    out = cli_run / "fp32"
    assert main(["train", *QUICK, "--model", "compact", "--epochs", "1", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    run = lv.load_run(out)
    assert isinstance(run.result, lv.TrainResult) and run.to_dict() == printed
    assert run.result.epochs_run == 1 and run.result.test_total == printed["test_total"] > 0
    assert len(run.history) == 1 and run.history[0]["val_accuracy"] == pytest.approx(printed["best_val_accuracy"])

    assert main(["evaluate", str(out), "--json", "--no-plot"]) == 0
    printed = json.loads(capsys.readouterr().out)
    evaluation = lv.evaluate(run)
    assert evaluation.to_dict() == printed and list(evaluation.to_dict()) == list(printed)
    assert evaluation.accuracy == pytest.approx(run.result.test_accuracy)
    assert [c.class_name for c in evaluation.per_class] == [str(i) for i in range(10)]
    assert sum(c.support for c in evaluation.per_class) == evaluation.total == evaluation.weighted_avg.support
    low, high = evaluation.accuracy_interval
    assert low < evaluation.accuracy < high

    assert main(["optimize", str(out), "--quantize", "int8", "--out", str(cli_run / "int8"), "--no-progress",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    int8 = lv.load_run(cli_run / "int8")
    assert isinstance(int8.result, lv.OptimizeResult) and int8.to_dict() == printed and int8.is_onnx
    assert [s.step for s in int8.result.steps] == ["source", "fold", "quantize"]
    assert int8.result.source_test_accuracy == pytest.approx(run.result.test_accuracy)


def test_optimize_takes_configs_spec_strings_and_one_technique(cli_run):
    from leanvision.techniques import FoldConfig

    run = lv.load_run(cli_run / "fp32")
    a = lv.optimize(run, [FoldConfig()], out=cli_run / "fold-a")
    b = lv.optimize(cli_run / "fp32", "fold", out=cli_run / "fold-b")
    assert a.result.techniques == b.result.techniques == ["fold"]
    assert a.path == cli_run / "fold-a" and not a.is_onnx and a.result.test_accuracy == pytest.approx(
        b.result.test_accuracy)
    with pytest.raises(LeanvisionError, match=r"^Invalid techniques=.*the output folder is out=\.$"):
        lv.optimize(run, cli_run / "x")  # the old positional `out`: a clear error, not a folder of that name
    with pytest.raises(LeanvisionError, match="either techniques"):
        lv.optimize(run, ["fold"], prune=0.5)
    default = lv.optimize(run, "fold", overwrite=True)  # out defaults beside the source run
    assert default.path == cli_run / "fp32-optimized"


def test_recipes_are_in_the_api(tmp_path):
    assert {"fast", "accurate"} <= set(lv.list_recipes())
    fast = lv.recipe("fast", (1, 28, 28), device="cpu")
    assert isinstance(fast, lv.Recipe) and fast.model == "fastnet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = lv.train(recipe="fast", dataset="digits", epochs=1, device="cpu", out=tmp_path / "fast")
    config = json.loads((tmp_path / "fast" / "config.json").read_text())["config"]
    assert config["model"] == "fastnet" and config["model_kwargs"] == fast.model_kwargs
    assert config["train"]["epochs"] == 1  # given explicitly: wins over the recipe's 2
    assert {k: config["train"][k] for k in ("optimizer", "learning_rate", "batch_size")} == {
        k: fast.train[k] for k in ("optimizer", "learning_rate", "batch_size")}
    assert run.result.model == "fastnet"
    with pytest.raises(LeanvisionError, match="either config= or recipe="):
        lv.train(lv.RunConfig(), recipe="fast")


def test_api_arguments_of_the_wrong_kind_are_one_line_errors(cli_run):
    from leanvision.techniques import PruneConfig

    run = lv.load_run(cli_run / "fp32")
    with pytest.raises(LeanvisionError, match=r"`epochs` expects an integer, received 'ten'"):
        lv.train(model="compact", dataset="digits", epochs="ten", out=cli_run / "never")
    assert not (cli_run / "never").exists()
    with pytest.raises(LeanvisionError, match=r"Invalid `ratio` for prune: expected a number"):
        PruneConfig(ratio="0.5")
    with pytest.raises(LeanvisionError, match=r"Invalid technique 5 \(int\)\. Expected a spec string"):
        lv.optimize(run, [5], out=cli_run / "never")
    with pytest.raises(LeanvisionError, match=r"Invalid image 5 \(int\)"):
        lv.predict(run, 5)
    rows = lv.bench(run, runtime="onnxruntime", batch_sizes="1,2", repeats=2, warmup=0)  # as on the command line
    assert [(r.runtime, r.batch_size) for r in rows if r.ok] == [("onnxruntime", 1), ("onnxruntime", 2)]
    exported = lv.export(run, cli_run / "m.onnx", format="onnx")
    assert exported.format == "onnx" and exported.parity_ok


def test_search_and_serve_are_in_the_public_api():
    import inspect

    import leanvision as lv
    from leanvision.serve import create_app

    assert lv.serve_app is create_app  # the ASGI app factory of `leanvision serve`
    params = inspect.signature(lv.search).parameters  # typed keywords, the CLI's flags
    assert {"dataset", "objectives", "max_latency_ms", "storage", "study_name", "workers", "minutes"} <= set(params)
    assert "search" in lv.__all__ and "SearchResult" in lv.__all__
    with pytest.raises(lv.LeanvisionError, match="Unknown objective"):
        lv.search(objectives="accuracy,speed", trials=1)
    with pytest.raises(lv.LeanvisionError, match="Invalid run_dir=42"):
        lv.serve_app(42)


def test_serve_app_takes_a_run(cli_run):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import leanvision as lv

    run = lv.load_run(cli_run / "fp32")  # trained by test_cli_json_is_the_typed_results_to_dict
    app = lv.serve_app(run, warmup=0)
    assert app.state.model.card["run"] == run.path.name and app.state.model.classes == run.meta["classes"]
