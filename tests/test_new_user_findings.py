"""A new user's findings on the CLI: leaked warnings, silent resumes, field names in errors, did-you-mean, help text,
broken pipes, optimize/datasets/serve messages and the study report's wording. Each test ran red before its fix."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
from testkit import one_error_line

from leanvision.cli import main

_error = one_error_line


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch compact run on digits, trained with the live progress bar on; the warnings it raised."""
    out = tmp_path_factory.mktemp("findings") / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["train", "--epochs", "2", "--batch-size", "64", "--out", str(out), "--device", "cpu"])
    assert code == 0
    return out, [str(w.message) for w in caught]


# 1 -------------------------------------------------------------------------------------------------------------------
def test_training_with_the_progress_bar_raises_no_requires_grad_warning(trained):
    _, caught = trained
    assert not [m for m in caught if "requires_grad" in m], caught


# 2 -------------------------------------------------------------------------------------------------------------------
def test_resume_with_fewer_epochs_is_refused_and_same_epochs_says_nothing_trained(trained, capsys):
    out, _ = trained
    result = json.loads((out / "result.json").read_text())
    assert main(["train", "--resume", "--out", str(out), "--epochs", "1", "--no-progress"]) == 2
    line = _error(capsys.readouterr().err)
    assert "--epochs 1" in line and "already trained 2 epochs" in line
    assert json.loads((out / "result.json").read_text()) == result  # untouched
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert "nothing to train" in capsys.readouterr().err


# 3 -------------------------------------------------------------------------------------------------------------------
def test_errors_name_the_flag_not_the_python_field(trained, tmp_path, capsys):
    assert main(["train", "--batch-size", "0", "--out", str(tmp_path / "a")]) == 2
    line = _error(capsys.readouterr().err)
    assert "--batch-size" in line and "batch_size" not in line
    assert main(["train", "--lr", "0", "--out", str(tmp_path / "a")]) == 2
    line = _error(capsys.readouterr().err)
    assert "--lr" in line and "learning_rate" not in line
    assert main(["bench", str(trained[0]), "--batch-sizes", "0"]) == 2
    assert "--batch-sizes expects positive integers, received '0'" in _error(capsys.readouterr().err)
    assert main(["train", "--help"]) == 0
    assert "None =" not in capsys.readouterr().out


# 4 -------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, fragments", [
    (["study", "--plan", "/nope.yaml"], ["/nope.yaml does not exist", "reference", "quick"]),
    (["study", "--plan", "quik"], ["did you mean 'quick'"]),
    (["study", "--precision", "fp31"], ["did you mean 'fp32'"]),
    (["train", "--schedule", "cosin"], ["--schedule", "did you mean 'cosine'"]),
    (["train", "--optimizer", "adan"], ["--optimizer", "did you mean 'adam'"]),
    (["train", "--precision", "bf15"], ["--precision", "did you mean 'bf16'"]),
])
def test_missing_plan_file_and_did_you_mean_for_choices(argv, fragments, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    line = _error(capsys.readouterr().err).lower()
    for fragment in fragments:
        assert fragment.lower() in line, line


def test_serve_unknown_runtime_suggests_the_nearest(trained, capsys):
    pytest.importorskip("fastapi")
    assert main(["serve", str(trained[0]), "--runtime", "torchx", "--port", "0"]) == 2
    assert "did you mean 'torch'" in _error(capsys.readouterr().err).lower()


# 5 -------------------------------------------------------------------------------------------------------------------
def test_unknown_model_is_reported_before_an_existing_run_dir(trained, capsys):
    assert main(["train", "--model", "compactt", "--out", str(trained[0]), "--no-progress"]) == 2
    line = _error(capsys.readouterr().err)
    assert "Unknown model 'compactt'" in line and "already holds" not in line


# 6 -------------------------------------------------------------------------------------------------------------------
def test_optimize_into_a_non_empty_out_mentions_overwrite(trained, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["optimize", str(trained[0]), "--prune", "0.5", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "--overwrite" in _error(capsys.readouterr().err)


# 7 -------------------------------------------------------------------------------------------------------------------
def test_a_closed_pipe_ends_quietly_with_exit_0():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("LEANVISION_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "leanvision", "train", "--print-config"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader goes away before the command writes (`| head` that already has its lines)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "BrokenPipe" not in err and "Exception ignored" not in err, err


# 8 -------------------------------------------------------------------------------------------------------------------
def test_help_speaks_to_users_and_flags_are_not_abbreviated(tmp_path, capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "subcommand parses" not in out and "library function" not in out and "image classifiers" in out
    assert main(["train", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: leanvision train [options]")
    assert main(["predict", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: leanvision predict [options] RUN_DIR [IMAGES ...]")
    assert main(["train", "--epoch", "2", "--print-config"]) == 2
    assert "unknown option --epoch (did you mean --epochs?)" in _error(capsys.readouterr().err)


# 9 -------------------------------------------------------------------------------------------------------------------
def test_optimize_without_a_technique_says_it_only_folds_or_refuses(tmp_path, capsys):
    assert main(["optimize", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "only folding BatchNorm" in capsys.readouterr().err
    assert main(["optimize", str(tmp_path / "missing"), "--no-fold", "--out", str(tmp_path / "o")]) == 2
    line = _error(capsys.readouterr().err)
    assert "no technique" in line and "--prune" in line and "--quantize" in line and "--distill-from" in line


def test_distilling_from_a_weaker_teacher_warns(trained, tmp_path, capsys):
    run = trained[0]
    teacher = shutil.copytree(run, tmp_path / "teacher")
    result = json.loads((teacher / "result.json").read_text())
    (teacher / "result.json").write_text(json.dumps({**result, "test_accuracy": result["test_accuracy"] - 0.2}))
    student = shutil.copytree(run, tmp_path / "student")
    (student / "best.safetensors").unlink()  # the command stops right after the check: no training in this test
    main(["optimize", str(student), "--distill-from", str(teacher), "--out", str(tmp_path / "o"), "--no-progress"])
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "lower recorded test accuracy" in warning[0], warning


# 10 ------------------------------------------------------------------------------------------------------------------
def test_datasets_warns_on_a_missing_data_dir_and_has_a_header(tmp_path, capsys):
    assert main(["datasets", "--data-dir", str(tmp_path / "nope")]) == 0
    captured = capsys.readouterr()
    assert "does not exist" in captured.err
    header = captured.out.splitlines()[0].split()
    assert header[:5] == ["dataset", "train", "test", "shape", "status"]


# 11 ------------------------------------------------------------------------------------------------------------------
def test_serve_docs_work_offline_and_create_app_lists_its_arguments(trained):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from leanvision.serve import create_app

    params = inspect.signature(create_app).parameters
    assert {"runtime", "max_batch_size", "max_wait_ms", "top_k", "threads"} <= set(params)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert "max_batch_size" in (create_app.__doc__ or "")
    with TestClient(create_app(trained[0], max_batch_size=4, warmup=1)) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/predict" in page.text and "/model" in page.text
        assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text


# 12 ------------------------------------------------------------------------------------------------------------------
def test_report_settings_list_the_runtimes_and_ratios_say_faster_or_slower(tmp_path):
    from leanvision.diagnose import diagnose_variant
    from leanvision.report.tables import summary_lines

    study = {"settings": {"epochs": 3, "precision": "fp32", "runtimes": ["torch", "onnxruntime"], "runtime": "torch"},
             "variants": []}
    settings = dict(summary_lines(study))["Settings"]
    assert "runtimes torch, onnxruntime" in settings and "runtime torch," not in settings

    def variant(name, ms):
        return {"name": name, "accuracy": 0.9, "accuracy_ci95": [0.88, 0.92], "params": 100, "macs": 1000,
                "file_bytes": 400, "runtimes": {"torch": {"latency_b1_median_ms": ms, "latency_b1_p95_ms": ms * 1.01}}}

    text = " ".join(diagnose_variant(variant("a", 1.0), variant("base", 2.0)))
    assert "2.00x faster" in text and "(2.00x)" not in text
    text = " ".join(diagnose_variant(variant("a", 2.0), variant("base", 1.0)))
    assert "2.00x slower" in text
