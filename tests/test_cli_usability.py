"""What a new user meets at the command line (issue 15, points 1-4, 7, 12-14): each test runs `leanvision` itself."""

import json
import os
import stat

import pytest
import yaml
from testkit import one_error_line

from leanvision.cli import build_parser, main
from leanvision.cliparse import config_from_flags
from leanvision.config import StudyConfig

CPU = ["--dataset", "digits", "--device", "cpu", "--no-progress"]


def subcommands(parser):
    return dict(parser._subcommands_action._name_parser_map)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(folder):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


# -- point 1: a re-run study never destroys its report ------------------------------------------------------------

def _plan(tmp_path, name, variants):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": "mini", "variants": variants}))
    return str(path)


REPORT = ("report.html", "report.md", "results.json", "results.csv")


def test_study_rerun_with_another_config_is_refused_and_the_report_survives(tmp_path, capsys, umask_022):
    two = _plan(tmp_path, "two", [{"name": "a", "model": "seed-shallow"},
                                  {"name": "b", "model": "seed-shallow", "base": "a", "train": {"weight_decay": 1e-4}}])
    out = tmp_path / "s"
    args = ["study", "--out", str(out), "--runtime", "torch", "--repeats", "3", "--no-progress", "--device", "cpu"]
    assert main([*args, "--plan", two, "--epochs", "1"]) == 0
    capsys.readouterr()
    before = {name: (out / name).read_bytes() for name in REPORT}
    assert set(modes(out).values()) == {0o644}  # point 14: normal permissions under umask 022

    assert main([*args, "--plan", two, "--epochs", "2"]) == 2  # refused before anything runs
    err = capsys.readouterr().err
    one_error_line(err, "another config", "train.epochs 1 -> 2", "--out", "--overwrite", "--remeasure")
    assert {name: (out / name).read_bytes() for name in REPORT} == before

    # a worse study (one variant fails) keeps the better report and writes its own beside it; exit code 1
    worse = _plan(tmp_path, "worse", [{"name": "a", "model": "seed-shallow"}, {"name": "c", "model": "no-such"}])
    assert main([*args, "--plan", worse, "--epochs", "1"]) == 1
    captured = capsys.readouterr()
    one_error_line(captured.err, "1 of 2 variants failed", "no-such")
    assert "is kept" in captured.err
    assert {name: (out / name).read_bytes() for name in REPORT} == before
    written = list(out.glob("report-*/results.json"))
    assert len(written) == 1 and f"report: {written[0].parent}/report.html" in captured.out

    # --overwrite retrains what clashes and replaces the report; --json prints the study
    one = _plan(tmp_path, "one", [{"name": "a", "model": "seed-shallow"}])
    assert main([*args, "--plan", one, "--epochs", "2", "--overwrite", "--json"]) == 0
    study = json.loads(capsys.readouterr().out)
    assert study["settings"]["epochs"] == 2 and [v["epochs"] for v in study["variants"]] == [2]
    assert json.loads((out / "results.json").read_text())["settings"]["epochs"] == 2


# -- point 2: a run's own config re-runs it ----------------------------------------------------------------------

def test_train_from_a_runs_config_json_reproduces_it(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", *CPU, "--model", "seed-shallow", "--epochs", "1", "--lr", "0.002", "--out", str(first),
                 "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["train", "--config", str(first / "config.json"), "--out", str(second), "--no-progress",
                 "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a["test_accuracy"] == b["test_accuracy"] and a["best_val_accuracy"] == b["best_val_accuracy"]
    config = [json.loads((d / "config.json").read_text())["config"] for d in (first, second)]
    assert config[0] == config[1] and config[0]["train"]["learning_rate"] == 0.002


def test_train_config_file_layouts_and_mistakes_are_one_line(tmp_path, capsys):
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text("config:\n  model: seed-shallow\n  train: {epochs: 3, channels_last: true}\n  dataset: digits\n")
    assert main(["train", "--config", str(wrapped), "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"] == "seed-shallow" and cfg["train"]["epochs"] == 3 and cfg["train"]["channels_last"] is True
    # an explicit flag beats the file, and `--no-<flag>` turns a file's (or recipe's) True off
    assert main(["train", "--config", str(wrapped), "--epochs", "5", "--no-channels-last", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["channels_last"] is False
    for text, fragments in [("config: 3\n", ["`config` must be a mapping"]),
                            ("epoch: 3\n", ["unknown option 'epoch'", "Did you mean 'epochs'"]),
                            ("train: {epochs: ten}\n", ["`epochs` expects an integer", "'ten'"]),
                            ("- 1\n", ["must hold a mapping"]), ("a: [\n", ["Invalid YAML"])]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        assert main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2, text
        one_error_line(capsys.readouterr().err, *fragments)
    assert not (tmp_path / "x").exists()


# -- point 3: parse errors say what was expected, with a did-you-mean --------------------------------------------

@pytest.mark.parametrize("argv, fragments", [
    (["train", "--epochs", "ten"], ["--epochs expects an integer, received 'ten'"]),
    (["train", "--epochs=ten"], ["--epochs expects an integer, received 'ten'"]),
    (["train", "--lr", "1e-3x"], ["--lr expects a number, received '1e-3x'"]),
    (["predict", "run", "a.png", "--top-k", "two"], ["--top-k expects an integer, received 'two'"]),
    (["bench", "run", "--repeats", "ten"], ["--repeats expects an integer, received 'ten'"]),
    (["optimize", "run", "--prune", "half", "--out", "x"], ["--prune expects a number, received 'half'"]),
    (["train", "--modle", "compact"], ["unknown option --modle", "did you mean --model?"]),
    (["bench", "run", "--runtimez", "torch"], ["unknown option --runtimez", "did you mean --runtime?"]),
    (["trian"], ["unknown command 'trian'", "Did you mean `leanvision train`?"]),
    (["optimize", "run"], ["missing required --out"]),
    (["evaluate"], ["missing required RUN_DIR"]),
])
def test_parse_errors_name_the_flag_as_typed(argv, fragments, capsys):
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, *fragments)
    assert "Parser key" not in line and "optimize.out" not in line and "learning_rate" not in line


def test_bare_leanvision_lists_the_commands_and_version(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in subcommands(build_parser()):
        assert f"  {name} " in out
    assert main(["--version"]) == 0
    from leanvision import __version__

    assert capsys.readouterr().out.strip() == f"leanvision {__version__}"


# -- point 4: help that does not leak internals ------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(subcommands(build_parser())))
def test_help_of_every_command_is_plain(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "<function" not in text and "null" not in text and "default: None" not in text and "type:" not in text
    assert "--print_config" not in text
    flat = " ".join(text.split()).replace("- ", "-")  # undo line wrapping
    parser = subcommands(build_parser())[command]
    formatter = parser.formatter_class(prog="leanvision")
    for action in parser._actions:
        if action.help == "==SUPPRESS==":
            continue
        assert action.help and action.help.strip(), (command, action.dest)  # every option has a description
        assert formatter._get_help_string(action).count("(default:") <= 1, (command, action.dest)  # once
        if action.option_strings and action.default is not None and action.default is not False \
                and action.default != "==SUPPRESS==":
            assert f"(default: {action.default})" in flat, (command, action.dest)


def test_print_config_shows_what_the_recipe_chose(capsys):
    from leanvision.data import load_dataset
    from leanvision.recipes import resolve_recipe

    assert main(["train", "--recipe", "fast", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    chosen = resolve_recipe("fast", load_dataset("digits").input_shape, "auto")
    assert cfg["model"] == chosen.model
    for key, value in chosen.train.items():
        assert cfg["train"][key] == value, key
    assert main(["train", "--recipe", "fast", "--no-channels-last", "--batch-size", "32", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["channels_last"] is False and cfg["train"]["batch_size"] == 32


# -- point 7: one name, one default --------------------------------------------------------------------------------

def test_runtime_flag_and_device_default_are_the_same_everywhere():
    parser = build_parser()
    for argv in (["study", "--runtime", "torch"], ["study", "--runtimes", "torch"],
                 ["bench", "r", "--runtime", "torch"], ["bench", "r", "--runtimes", "torch"]):
        ns = parser.parse_args(argv)
        assert ns[argv[0]].runtimes == ("torch",), argv
    for name, sub in subcommands(parser).items():
        for action in sub._actions:
            if "--device" in action.option_strings:
                assert action.default in ("auto", None), name  # None = the config dataclass's auto
    assert config_from_flags(parser.parse_args(["study"]).study, StudyConfig).device == "auto"
    for name in ("train", "study", "optimize"):
        assert "--overwrite" in {f for a in subcommands(parser)[name]._actions for f in a.option_strings}, name


# -- points 7, 12, 14: train --overwrite, resume from the stored config, --epochs extends -------------------------

def test_resume_reads_the_stored_config_and_extends_a_finished_run(tmp_path, capsys, umask_022):
    out = tmp_path / "r"
    assert main(["train", *CPU, "--model", "seed-shallow", "--epochs", "1", "--lr", "0.002", "--out", str(out)]) == 0
    assert set(modes(out).values()) == {0o644}  # point 14
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.01", "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err, "train.learning_rate 0.002 -> 0.01")
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and result["epochs_run"] == 2
    stored = json.loads((out / "config.json").read_text())["config"]
    assert stored["model"] == "seed-shallow" and stored["train"]["epochs"] == 2
    assert stored["train"]["learning_rate"] == 0.002
    assert main(["train", *CPU, "--model", "seed-shallow", "--epochs", "1", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--overwrite")
    assert main(["train", *CPU, "--model", "seed-shallow", "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


# -- point 13: the compile time is said when it happens -----------------------------------------------------------

def test_compile_time_is_printed_and_kept_apart(tmp_path, capsys, monkeypatch):
    import leanvision.train.loop

    monkeypatch.setattr(leanvision.train.loop, "compile_for_training",
                        lambda net, device, shapes, autocast, channels_last=False: (net, 12.5))
    assert main(["train", *CPU, "--model", "seed-shallow", "--epochs", "1", "--compile", "--out",
                 str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if "compile" in line] == [
        "torch.compile: training step compiled in 12.5 s (2 batch shape(s); not counted in epoch times)"]
    assert "plus 12.5 s torch.compile" in captured.out


# -- point 14: atomic writes keep normal permissions ---------------------------------------------------------------

def test_atomic_writes_respect_the_umask(tmp_path, umask_022):
    import torch

    from leanvision.io import atomic_write_text, save_weights

    atomic_write_text(tmp_path / "a.txt", "x")
    save_weights(tmp_path / "w.safetensors", {"w": torch.zeros(2)})
    assert modes(tmp_path) == {"a.txt": 0o644, "w.safetensors": 0o644}
    os.umask(0o077)
    atomic_write_text(tmp_path / "b.txt", "x")
    assert modes(tmp_path)["b.txt"] == 0o600
