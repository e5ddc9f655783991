"""Issue 15 ("what a new user hits"), points 5, 6, 8, 9, 10, 11 and 15: each as the user meets it (CLI or API)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from leanvision.cli import build_parser, main
from leanvision.cliparse import as_flags

QUICK = ["--dataset", "digits", "--no-progress", "--device", "cpu"]
GOOD = ["--epochs", "4", "--batch-size", "64", "--lr", "3e-3", "--schedule", "onecycle"]
README = Path(__file__).resolve().parents[1] / "README.md"


def warnings_in(text):
    return [line for line in text.splitlines() if line.startswith("warning:")]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("findings") / "good"
    assert main(["train", *QUICK, *GOOD, "--model", "compact", "--out", str(out), "--json"]) == 0
    return out


# ---- point 5: bad results do not arrive silently ------------------------------------------------------------------

def test_collapsed_validation_warns_with_the_fix_and_a_good_run_does_not(good_run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "short"
    assert main(["train", *QUICK, "--epochs", "2", "--model", "compact", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = warnings_in(captured.err)
    assert lines and "--epochs" in lines[0] and "Traceback" not in captured.err
    saved = json.loads((out / "result.json").read_text())["warnings"]  # the library's words: argument names
    assert "`epochs`" in saved[0] and [as_flags(w, build_parser(), "train") for w in saved] == [
        line[len("warning: "):] for line in lines]
    assert json.loads((good_run / "result.json").read_text())["warnings"] == []


def test_loss_spike_and_growing_loss_rules():
    from leanvision.health import training_warnings

    def history(losses, val=0.9, train=0.95):
        return [{"train_loss": x, "train_accuracy": train, "val_accuracy": val} for x in losses]

    spike = training_warnings(history([1.84, 14.88, 1.23], val=0.8, train=0.8), 2, learning_rate=0.1)
    assert len(spike) == 1 and "14.88" in spike[0] and "`learning_rate`, now 0.1" in spike[0]
    assert "spiked" in training_warnings(history([2.0, 0.3, 1.2]), 10)[0]
    assert "grew" in training_warnings(history([0.5, 0.6, 0.7]), 10)[0]
    gap = training_warnings(history([2.1, 1.7], val=0.45, train=0.95), 10)
    assert len(gap) == 1 and "far below training accuracy" in gap[0]
    assert training_warnings(history([2.0, 1.0, 0.5, 0.45]), 10) == []


# ---- point 6: the choices made for the user are printed -------------------------------------------------------------

def test_train_prints_dataset_summary_and_resolved_settings(tmp_path, capsys):
    root = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                size = (16 + i, 12 + 2 * i)  # many sizes: the loader resizes them
                Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png")
    args = ["train", "--dataset", str(root), "--image-size", "16", "--epochs", "1", "--no-progress", "--device",
            "cpu", "--recipe", "fast", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("train  whitenet (widths=(32, 128, 128)) (recipe fast: chose every setting")
    assert re.search(r"train \d+, val \d+, test 8 images of 3x16x16 \(CxHxW\), 2 classes \(a, b\)", out)
    assert "val/ used as test split" in out
    assert re.search(r"setup  sgd nesterov .*lr 0\.75, triangle, 1 epoch, batch 512, (fp32|bf16) on cpu", out)

    assert main(["train", *QUICK, "--epochs", "1", "--model", "lenet5", "--out", str(tmp_path / "j"), "--json"]) == 0
    json.loads(capsys.readouterr().out)  # --json: nothing but the JSON on stdout

    assert main(["train", "--dataset", str(root), "--epochs", "1", "--no-progress", "--device", "cpu", "--model",
                 "compact", "--out", str(tmp_path / "mixed")]) == 0
    assert "different sizes: resized to 64x64" in capsys.readouterr().out


# ---- point 8: one convention per kind ------------------------------------------------------------------------------

def test_percent_in_tables_fractions_in_json_and_bench_energy(good_run, capsys):
    capsys.readouterr()
    result = json.loads((good_run / "result.json").read_text())
    assert 0.9 < result["test_accuracy"] <= 1.0  # fractions in JSON
    assert main(["bench", str(good_run), "--runtime", "torch", "--batch-sizes", "1", "--repeats", "3", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    energy, note = row["energy_per_image_j"], row["energy_note"]
    assert (energy is None and note.startswith("not measurable here: ")) or (isinstance(energy, float) and note)
    assert main(["bench", str(good_run), "--runtime", "torch", "--batch-sizes", "1", "--repeats", "3"]) == 0
    table = capsys.readouterr().out
    assert "latency median (ms)" in table and "throughput (img/s)" in table and "accuracy (%)" in table
    assert f"{100 * result['test_accuracy']:.2f}" in table


def test_evaluate_table_is_aligned_with_f1_and_averages(good_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(good_run), "--no-plot"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.match(r"test accuracy: \d+\.\d\d% \(\d+/359\) on digits", out[0])
    table = [line for line in out[1:] if not line.startswith("-")]
    assert "F1 (%)" in table[0] and table[-2].startswith("macro avg") and table[-1].startswith("weighted avg")
    assert len({len(line) for line in table}) == 1  # every row as wide as the header: aligned


def test_classification_metrics_match_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    from leanvision.evaluate import classification_metrics

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (300,), generator=gen)
    logits = torch.randn(300, 5, generator=gen) + 2.5 * torch.nn.functional.one_hot(labels, 5)
    logits[:, 4] -= 100  # class 4 is never predicted: precision None (n/a); 0 in the averages (zero_division=0)
    m = classification_metrics(logits, labels, list("abcde"))
    pred = logits.argmax(1).numpy()
    p, r, f, s = precision_recall_fscore_support(labels.numpy(), pred, labels=range(5), zero_division=0)
    assert m["per_class"][4]["precision"] is None
    assert np.allclose([c["precision"] or 0.0 for c in m["per_class"]], p)
    assert np.allclose([c["recall"] for c in m["per_class"]], r)
    assert np.allclose([c["f1"] for c in m["per_class"]], f)
    for kind in ("macro", "weighted"):
        ref = precision_recall_fscore_support(labels.numpy(), pred, labels=range(5), average=kind, zero_division=0)
        got = m[f"{kind}_avg"]
        assert np.allclose([got["precision"], got["recall"], got["f1"]], ref[:3])


# ---- point 9 (+5, 8, 15): optimize's speed rule, torch column, --round-to, step warnings, int8 export ------------

def test_optimize_round_to_warning_table_and_int8_export(good_run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "p"
    assert main(["optimize", str(good_run), "--prune", "0.8", "--round-to", "8", "--finetune-epochs", "0",
                 "--quantize", "int8", "--calibration-size", "64", "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert first.startswith("optimize ") and "round_to=8" in first and "\ndata   digits: train" in captured.out
    assert "torch latency b1 (ms)" in captured.out and "ORT throughput b256 (img/s)" in captured.out
    assert "accuracy (%)" in captured.out
    warning = warnings_in(captured.err)
    assert len(warning) == 1 and "prune lost" in warning[0] and "--finetune-epochs" in warning[0]
    result = json.loads((out / "result.json").read_text())
    assert "finetune_epochs=3" in result["warnings"][0]  # result.json keeps the argument; the CLI says the flag
    assert [as_flags(w, build_parser(), "optimize") for w in result["warnings"]] == [warning[0][len("warning: "):]]
    assert result["steps"][1]["config"]["round_to"] == 8
    pruned = json.loads((out / "model.json").read_text())["shape_overrides"]
    widths = [shape["out_channels"] for shape in pruned.values() if "out_channels" in shape]
    assert widths and all(w % 8 == 0 for w in widths), pruned  # 80% pruning alone would leave e.g. 3 of 16
    assert "speed_change" in result["steps"][1] and "verdict" in result["steps"][1]["speed_change"]["torch"][
        "latency_b1"]

    assert main(["export", str(out), "--out", str(tmp_path / "int8.onnx")]) == 0
    text = capsys.readouterr().out
    assert "PyTorch" not in text and "fp32" not in text and "int8 model" in text
    assert main(["export", str(out), "--out", str(tmp_path / "int8.onnx"), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["torch_accuracy"] is None and exported["reference_accuracy"] == exported["onnxruntime_accuracy"]

    assert main(["optimize", str(good_run), "--round-to", "8", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "--round-to 8 applies to structured pruning only" in capsys.readouterr().err


def test_same_architecture_step_is_not_measurably_faster():
    from leanvision.optimize import summarize

    speed = {"latency_b1_median_ms": 1.0, "latency_b1_p95_ms": 1.05, "throughput_images_per_s": 1000.0}
    fast = {"latency_b1_median_ms": 0.56, "latency_b1_p95_ms": 0.6, "throughput_images_per_s": 1780.0}
    before = {"params": 100, "macs": 1000, "file_bytes": 400, "accuracy": 0.95, "speed": {"torch": speed}}
    step = {"step": "distill", "config": {"alpha": 0.5, "temperature": 4.0}, "params": 100, "macs": 1000,
            "file_bytes": 400, "accuracy": 0.95, "speed": {"torch": fast}, "notes": []}
    text = summarize(step, before)
    assert "not measurably faster" in text and "1.78x" not in text
    smaller = {**step, "step": "prune", "config": {"ratio": 0.5, "structured": True, "method": "l1"}, "params": 50}
    assert "torch batch-1 latency 1.79x faster" in summarize(smaller, before)
    close = {**smaller, "speed": {"torch": {**speed, "latency_b1_median_ms": 0.97}}}
    assert "batch-1 latency not measurably faster" in summarize(close, before)


# ---- point 10: the Python API ----------------------------------------------------------------------------------------

def test_public_api_is_listed_and_lazy():
    import leanvision

    names = {"create_model", "list_models", "load_dataset", "train", "load_run", "evaluate", "predict", "optimize",
             "export", "bench", "study", "recipe", "list_recipes", "Run", "TrainResult", "Evaluation", "BenchRow",
             "Study", "QuantizeConfig", "PruneConfig"}
    assert names <= set(dir(leanvision)) and names <= set(leanvision.__all__)
    assert all(callable(getattr(leanvision, n)) for n in names)
    import leanvision.train as train_module  # the submodule of the same name stays a module, and is callable

    assert leanvision.train is train_module and callable(train_module.fit)
    code = "import sys, leanvision; leanvision.__version__; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("### Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert all(f"lv.{name}(" in code for name in ("train", "evaluate", "optimize", "bench"))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out.splitlines()
    trained = json.loads((tmp_path / "runs" / "api-compact" / "result.json").read_text())
    optimized = json.loads((tmp_path / "runs" / "api-compact-int8" / "result.json").read_text())
    assert out[0] == f"test accuracy {trained['test_accuracy']:.2%} after 1 epoch"  # the typed result is the file's
    assert out[2] == f"int8: {optimized['test_accuracy']:.2%}, {optimized['file_bytes']:,} bytes"
    assert optimized["source_run"] == "runs/api-compact" and (tmp_path / "runs" / "api-compact-int8" / "model.onnx"
                                                              ).is_file()
    assert re.fullmatch(r"onnxruntime int8 batch 1: \d+\.\d{3} ms median", out[3])
    assert out[4] in [str(c) for c in range(10)]


def test_predict_accepts_in_memory_images_like_files(good_run, digits, tmp_path):
    import leanvision

    image = digits.test.images[0, 0].numpy()
    Image.fromarray(image).save(tmp_path / "a.png")
    results = leanvision.predict(good_run, [str(tmp_path / "a.png"), image, Image.fromarray(image),
                                            torch.from_numpy(image)[None], image.astype(np.float32) / 255])
    assert len({json.dumps(r.predictions) for r in results}) == 1 and results[0].error is None
    assert results[0].label == results[0].predictions[0]["class"]


# ---- point 11: predict pitfalls ----------------------------------------------------------------------------------

def test_predict_folders_unreadable_files_and_inverted_polarity(good_run, digits, tmp_path, capsys):
    capsys.readouterr()
    (tmp_path / "in" / "deeper").mkdir(parents=True)
    seven = Image.fromarray(digits.test.images[int((digits.test.labels == 7).nonzero()[0]), 0].numpy())
    seven.save(tmp_path / "in" / "white_on_black.png")
    ImageOps.invert(seven).save(tmp_path / "in" / "deeper" / "black_on_white.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "in" / "notes.txt").write_text("ignored: not an image extension")
    assert main(["predict", str(good_run), str(tmp_path / "in"), "--json"]) == 1
    captured = capsys.readouterr()
    results = {Path(r["file"]).name: r for r in json.loads(captured.out)}
    assert set(results) == {"white_on_black.png", "black_on_white.png", "broken.png"}
    assert "error" in results["broken.png"] and "predictions" in results["white_on_black.png"]
    assert results["black_on_white.png"]["inverted_polarity"] and not results["white_on_black.png"][
        "inverted_polarity"]
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0] and "Traceback" not in captured.err
    warning = warnings_in(captured.err)
    assert len(warning) == 1 and "black_on_white.png" in warning[0] and "invert" in warning[0]


# ---- point 15: polish -----------------------------------------------------------------------------------------------

def test_no_progress_keeps_epoch_lines_and_one_epoch_is_singular(tmp_path, capsys):
    capsys.readouterr()
    assert main(["train", *QUICK, "--epochs", "1", "--model", "lenet5", "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert re.search(r"^epoch 1/1  loss \d", captured.err, re.M)
    assert " 1 epoch in " in captured.out and "1 epochs" not in captured.out


def test_spec_without_out_lands_in_runs_stem(tmp_path, monkeypatch, capsys):
    spec = Path(__file__).resolve().parents[1] / "examples" / "specs" / "seed_baseline.yaml"
    monkeypatch.chdir(tmp_path)
    assert main(["train", *QUICK, "--epochs", "1", "--model", str(spec)]) == 0
    assert (tmp_path / "runs" / "seed_baseline" / "result.json").exists()


def test_models_matches_substrings(capsys):
    assert main(["models", "resnet"]) == 0
    assert "resnet8" in capsys.readouterr().out
    assert main(["models", "nosuchnet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No registered model matches 'nosuchnet'") and err.count("\n") == 1


def test_export_writes_onnx_metadata(good_run, tmp_path, capsys):
    import onnx

    assert main(["export", str(good_run), "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    meta = json.loads((good_run / "model.json").read_text())
    assert json.loads(props["leanvision.classes"]) == meta["classes"]
    assert json.loads(props["leanvision.mean"]) == meta["mean"] and json.loads(props["leanvision.std"]) == meta["std"]
    assert props["leanvision.input_layout"] == "NCHW" and exported["metadata"] == props
    assert exported["reference"] == "PyTorch fp32" and exported["parity_ok"]


def test_study_prints_report_once_in_percent_and_markdown_is_plain(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: tiny\nvariants:\n  - lenet5\n")
    out = tmp_path / "study"
    assert main(["study", "--plan", str(plan), "--epochs", "1", "--runtime", "torch", "--repeats", "3",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("report:") == 1
    assert "accuracy (%)" in captured.out and "latency b1 (ms)" in captured.out
    assert "throughput b256 (img/s)" in captured.out
    md = (out / "report.md").read_text()
    assert "8x8 -> 28x28" in md and "&gt;" not in md
