"""One config flow: every command's flags come from its config dataclass, each default is written once, and the plain
defaults are the good ones (the Keras-like training is the `keras` recipe)."""

import dataclasses
import inspect
import json

import pytest
import yaml
from testkit import one_error_line

from leanvision.cli import build_parser, main, optimize_chain
from leanvision.cliparse import config_from_flags, subcommands
from leanvision.config import (
    BenchConfig,
    DataConfig,
    ExportConfig,
    OptimizeConfig,
    RunConfig,
    RunSource,
    StudyConfig,
    TrainConfig,
)
from leanvision.errors import LeanvisionError
from leanvision.optimize import build_chain
from leanvision.recipes import RECIPES, keras, resolve_recipe
from leanvision.study import load_plan, run_study, variant_config
from leanvision.techniques import DistillConfig, FoldConfig, PruneConfig, QuantizeConfig, distillation_loss

# command -> (its config dataclasses, the arguments a parse needs besides the options)
COMMANDS = {
    "train": ((DataConfig, TrainConfig), []),
    "study": ((StudyConfig,), []),
    "optimize": ((OptimizeConfig,), ["RUN", "--out", "NEW"]),
    "export": ((ExportConfig, RunSource), ["RUN"]),
    "bench": ((BenchConfig, RunSource), ["RUN"]),
}


def _flags(sub) -> dict:
    return {flag: action for action in sub._actions for flag in action.option_strings}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_is_a_flag_and_its_default_is_the_dataclass_default(command):
    parser = build_parser()
    sub = subcommands(parser)[command]
    flags = _flags(sub)
    classes, required = COMMANDS[command]
    ns = parser.parse_args([command, *required])[command]
    for cls in classes:
        for f in dataclasses.fields(cls):
            name = f"--{f.name.replace('_', '-')}"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if default is True:  # on by default: --no-x turns it off
                assert flags[f"--no-{f.name.replace('_', '-')}"].dest == f.name
                continue
            flag = "--technique" if f.name == "techniques" else name
            assert flags[flag].dest == f.name, (command, flag)
            if not any(default is v for v in (None, False)) and default != ():  # help shows the dataclass default
                shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
                assert f"(default: {shown})" in flags[flag].help, (command, flag)
        built = config_from_flags(ns, cls)
        expected = cls(out="NEW") if cls is OptimizeConfig else cls()
        assert built == expected, (command, cls.__name__)


def test_given_flags_reach_the_config_typed():
    parser = build_parser()
    bench = config_from_flags(parser.parse_args(["bench", "R", "--runtime", "torch,onnxruntime", "--batch-sizes",
                                                 "1,64", "--precision", "fp32", "--threads", "2"]).bench, BenchConfig)
    assert bench == BenchConfig(runtimes=("torch", "onnxruntime"), batch_sizes=(1, 64), threads=2)
    study = config_from_flags(parser.parse_args(["study", "--plan", "quick", "--epochs", "2", "--recipe", "keras",
                                                 "--remeasure"]).study, StudyConfig)
    assert study == StudyConfig(plan="quick", epochs=2, recipe="keras", remeasure=True)
    export = config_from_flags(parser.parse_args(["export", "R", "--opset", "18"]).export, ExportConfig)
    assert export == ExportConfig(opset=18)


def test_every_command_help_says_what_it_does_with_an_example(capsys):
    for command in subcommands(build_parser()):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert f"Example: leanvision {command}" in text, command
    assert main(["optimize", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "prune: ratio=0.5, method=l1" in text and f"finetune_epochs={PruneConfig.finetune_epochs}" in text


# -- --technique specs and the shortcuts -----------------------------------------------------------------------------

@pytest.fixture
def teacher(tmp_path, monkeypatch):
    """`runs/t`, a teacher run directory as far as DistillConfig checks (its model.json exists)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "t").mkdir(parents=True)
    (tmp_path / "runs" / "t" / "model.json").write_text("{}")
    return "runs/t"


def _chain(argv: list[str]):
    ns = build_parser().parse_args(["optimize", "RUN", "--out", "NEW", *argv])
    return optimize_chain(config_from_flags(ns.optimize, OptimizeConfig))


@pytest.mark.parametrize("shortcut, specs", [
    (["--prune", "0.5", "--quantize", "int8"], ["prune:ratio=0.5", "quantize:mode=int8"]),
    (["--prune", "0.3", "--round-to", "8", "--finetune-epochs", "2"], ["prune:ratio=0.3,round_to=8,finetune_epochs=2"]),
    (["--unstructured", "0.6"], ["prune:ratio=0.6,structured=false"]),
    (["--distill-from", "runs/t", "--alpha", "0.7"], ["distill:teacher=runs/t,alpha=0.7"]),
    (["--quantize", "qat", "--calibration-size", "64"], ["quantize:mode=qat,calibration_size=64"]),
])
def test_a_shortcut_and_its_technique_spec_give_identical_configs(shortcut, specs, teacher):
    by_spec = _chain([arg for spec in specs for arg in ("--technique", spec)])
    assert _chain(shortcut) == by_spec
    assert by_spec[-2 if by_spec[-1].name == "quantize" else -1] == FoldConfig()  # fold comes before int8


def test_technique_order_on_the_command_line_does_not_matter():
    assert _chain(["--technique", "quantize", "--technique", "prune:ratio=0.5"]) == \
        [PruneConfig(ratio=0.5), FoldConfig(), QuantizeConfig()]
    assert _chain(["--quantize", "int8", "--technique", "prune:ratio=0.5"]) == \
        [PruneConfig(ratio=0.5), FoldConfig(), QuantizeConfig()]


@pytest.mark.parametrize("spec, words", [
    ("prnue:ratio=0.5", ["--technique 'prnue:ratio=0.5'", "Unknown technique 'prnue'", "prune"]),
    ("prune:ratoi=0.5", ["--technique 'prune:ratoi=0.5'", "ratoi", "Expected some of", "finetune_epochs", "ratio"]),
    ("prune:finetune_epochs=two", ["--technique 'prune:finetune_epochs=two'", "finetune_epochs='two'", "int"]),
    ("prune:ratio=1.5", ["--technique 'prune:ratio=1.5'", "ratio=1.5"]),
    ("prune:0.5", ["--technique 'prune:0.5'", "not key=value"]),
])
def test_a_bad_technique_spec_is_one_line_exit_2(spec, words, tmp_path, capsys):
    assert main(["optimize", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--technique", spec]) == 2
    line = one_error_line(capsys.readouterr().err, only=True)
    for word in words:
        assert word in line, (word, line)
    assert "--finetune-epochs" not in line  # a spec's field is not translated into the shortcut flag


def test_a_shortcut_option_without_its_technique_is_refused(tmp_path, capsys):
    assert main(["optimize", str(tmp_path), "--out", str(tmp_path / "o"), "--alpha", "0.7"]) == 2
    line = one_error_line(capsys.readouterr().err, only=True)
    assert "--alpha" in line and "--distill-from" in line


def test_technique_defaults_are_written_once(teacher):
    # the shortcuts leave every field they are not given at the technique's own default
    prune, fold = build_chain(prune=0.5)
    assert prune == PruneConfig(ratio=0.5) and prune.finetune_epochs == 1 and fold == FoldConfig()
    distill = build_chain(distill_from="runs/t", fold=False)[0]
    assert (distill.alpha, distill.temperature) == (DistillConfig.alpha, DistillConfig.temperature) == (0.5, 4.0)
    loss = inspect.signature(distillation_loss).parameters
    assert (loss["alpha"].default, loss["temperature"].default) == (DistillConfig.alpha, DistillConfig.temperature)
    assert build_chain(quantize="qat")[-1] == QuantizeConfig(mode="qat")
    assert build_chain(techniques=["prune"]) == build_chain(prune=PruneConfig.ratio)


# -- training defaults and recipes -----------------------------------------------------------------------------------

def test_plain_training_defaults_are_one_cycle_adam_3e_3():
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.schedule, cfg.learning_rate, cfg.batch_size) == ("adam", "onecycle", 3e-3, 128)


def _printed_config(capsys, argv) -> dict:
    assert main(["train", "--dataset", "digits", "--print-config", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_recipe_keras_is_the_reference_keras_training(capsys):
    printed = _printed_config(capsys, ["--recipe", "keras", "--epochs", "2"])
    train = printed["train"]
    assert (train["optimizer"], train["learning_rate"], train["schedule"], train["batch_size"]) == \
        ("adam", 1e-3, "constant", 128)
    assert (train["augment"], train["label_smoothing"], train["weight_decay"], train["precision"]) == \
        ("none", 0.0, 0.0, "fp32")
    assert train["epochs"] == 2 and printed["model"] == RunConfig.model  # the recipe leaves the model alone
    explicit = _printed_config(capsys, ["--recipe", "keras", "--lr", "0.01", "--model", "seed-baseline"])
    assert explicit["train"]["learning_rate"] == 0.01 and explicit["model"] == "seed-baseline"
    plain = _printed_config(capsys, [])
    assert (plain["train"]["schedule"], plain["train"]["learning_rate"]) == ("onecycle", 3e-3)
    assert keras((3, 32, 32)).train == keras((1, 28, 28)).train  # whatever the input
    assert "keras" in RECIPES.names()


def test_a_run_written_with_the_old_defaults_resumes_with_its_own_settings(tmp_path, capsys):
    """config.json holds the complete config, so a run trained when constant Adam 1e-3 was the default keeps it."""
    old = RunConfig(train=TrainConfig(schedule="constant", learning_rate=1e-3, epochs=2)).to_dict()
    (tmp_path / "config.json").write_text(json.dumps({"config": old, "dataset_notes": []}))
    assert RunConfig.from_dict(old).train.schedule == "constant"
    printed = _printed_config(capsys, ["--resume", "--out", str(tmp_path)])
    assert (printed["train"]["schedule"], printed["train"]["learning_rate"]) == ("constant", 1e-3)


def test_study_recipe_sets_every_variants_training_but_not_its_model():
    plan = {**load_plan("quick"), "default_epochs": 3}
    plan["variants"].append({"name": "fast", "recipe": "fast"})
    shape = (1, 28, 28)
    plain = variant_config(plan, plan["variants"][0], shape, None, None, "cpu")
    assert (plain["train"]["schedule"], plain["train"]["learning_rate"]) == ("onecycle", 0.002)  # the plan's
    kerasish = variant_config(plan, plan["variants"][0], shape, None, None, "cpu", recipe="keras")
    assert kerasish["model"] == "seed-baseline"
    assert {k: kerasish["train"][k] for k in keras(shape).train} == keras(shape).train
    own = variant_config(plan, plan["variants"][-1], shape, None, None, "cpu", recipe="keras")
    assert own["model"] == "fastnet" and own["train"]["learning_rate"] == resolve_recipe("fast", shape).train[
        "learning_rate"]  # a variant's own recipe wins


def test_study_unknown_recipe_or_option_fails_before_any_work(tmp_path):
    with pytest.raises(LeanvisionError, match="Unknown recipe 'kears'.*keras"):
        run_study(recipe="kears", out=tmp_path / "s")
    with pytest.raises(LeanvisionError, match="Unknown option.*epoch"):
        run_study(epoch=3, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_technique_given_twice_or_a_key_given_twice_is_refused():
    from leanvision.optimize import build_chain
    from leanvision.techniques import parse_technique

    with pytest.raises(LeanvisionError, match="prune given twice"):
        build_chain(prune=0.5, techniques=["prune:ratio=0.3"])
    with pytest.raises(LeanvisionError, match="quantize given twice"):
        build_chain(quantize="qat", techniques=["quantize:mode=int8"])
    with pytest.raises(LeanvisionError, match="'ratio' is given twice"):
        parse_technique("prune:ratio=0.5,ratio=0.3")
    with pytest.raises(LeanvisionError, match="'fold' takes no options"):
        parse_technique("fold:x=1")


def test_distill_without_a_teacher_says_what_it_needs():
    from leanvision.techniques import parse_technique

    with pytest.raises(LeanvisionError, match=r"distill needs a teacher: give `teacher`"):
        parse_technique("distill")


def test_optimize_help_says_where_an_unset_shortcut_takes_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["optimize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = text[text.index("options:"):]  # past the usage line
    for flag in ("--prune-method", "--round-to", "--alpha", "--temperature", "--finetune-epochs",
                 "--calibration-size"):
        after = options[options.index(flag + " "):]
        assert "default: the technique's (listed below)" in after[:220], (flag, after[:220])
    assert "finetune_epochs=1" in text  # and the technique list gives the value
