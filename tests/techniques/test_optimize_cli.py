import json

import pytest
from PIL import Image

from leanvision.cli import main


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_optimize_cli_prune_and_int8_gives_a_run_evaluate_and_predict_accept(base_run, tmp_path, capsys, digits):
    out = tmp_path / "compressed"
    args = ["optimize", str(base_run), "--prune", "0.5", "--quantize", "int8", "--finetune-epochs", "1",
            "--calibration-size", "128", "--out", str(out), "--no-progress", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["step"] for s in result["steps"]] == ["source", "prune", "fold", "quantize"]
    assert result["steps"][1]["params"] < result["steps"][0]["params"] / 3
    assert (out / "model.onnx").exists() and (out / "result.json").exists()

    assert main(["evaluate", str(out), "--json", "--no-plot"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(result["test_accuracy"])

    image = tmp_path / "digit.png"
    Image.fromarray(digits.test.images[0, 0].numpy()).save(image)
    assert main(["predict", str(out), str(image), "--top-k", "2", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions[0]["predictions"]) == 2

    assert main(["optimize", str(base_run), "--quantize", "int8", "--out", str(out), "--no-progress"]) == 2
    _one_line_error(capsys, "already exists")

    # the int8 run is exported as itself (parity against its own ONNX session) and benched as int8
    assert main(["export", str(out), "--out", str(tmp_path / "int8.onnx"), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["parity_ok"] and exported["difference_pp"] == 0
    assert main(["bench", str(out), "--runtime", "onnxruntime", "--batch-sizes", "1", "--repeats", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {r["precision"] for r in rows if r["status"] == "ok"} == {"int8"}
    assert main(["bench", str(out), "--runtime", "torch-compile", "--repeats", "3"]) != 0
    assert "int8 ONNX model" in capsys.readouterr().err


def test_optimize_cli_prints_a_step_table(base_run, tmp_path, capsys):
    assert main(["optimize", str(base_run), "--unstructured", "0.5", "--finetune-epochs", "0", "--out",
                 str(tmp_path / "sparse"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "source" in text and "prune 50% (unstructured, l1)" in text and "no speed change expected" in text


@pytest.mark.parametrize("flags, fragments", [
    (["--prune", "1.5"], ["ratio=1.5"]),
    (["--prune", "0.5", "--prune-method", "l7"], ["method='l7'"]),
    (["--quantize", "int4"], ["mode='int4'", "int8"]),
    (["--distill-from", "no/such/teacher"], ["Teacher run", "not found"]),
])
def test_optimize_cli_bad_input_is_one_line(base_run, tmp_path, capsys, flags, fragments):
    assert main(["optimize", str(base_run), *flags, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    _one_line_error(capsys, *fragments)
    assert not (tmp_path / "x").exists()  # validated before any work


def test_optimize_cli_missing_run_is_one_line(tmp_path, capsys):
    assert main(["optimize", str(tmp_path / "nope"), "--quantize", "int8", "--out", str(tmp_path / "x")]) == 2
    _one_line_error(capsys, "not found")
