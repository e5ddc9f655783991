import gzip
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit import one_error_line

from leanvision.cli import main

QUICK = ["--dataset", "digits", "--epochs", "1", "--no-progress", "--device", "cpu"]


def run_cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "LEANVISION_OFFLINE": "1"}
    env.pop("LEANVISION_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "leanvision", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def assert_one_line_error(proc_or_text, *fragments):
    one_error_line(proc_or_text if isinstance(proc_or_text, str) else proc_or_text.stderr, *fragments)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "compact"
    assert main(["train", *QUICK, "--epochs", "8", "--model", "compact", "--out", str(out)]) == 0
    return out


def test_cli_train_writes_run_directory(digits_run):
    for name in ("config.json", "model.json", "metrics.jsonl", "best.safetensors", "last.safetensors",
                 "checkpoint.safetensors", "result.json"):
        assert (digits_run / name).exists(), name
    result = json.loads((digits_run / "result.json").read_text())
    assert 0.8 <= result["test_accuracy"] <= 1.0
    assert not list(digits_run.glob("*.pkl")) and not list(digits_run.glob("*.pt"))


def test_cli_train_refuses_to_overwrite_a_run(digits_run, capsys):
    assert main(["train", *QUICK, "--model", "compact", "--out", str(digits_run)]) == 2
    assert_one_line_error(capsys.readouterr().err, "already holds a run", "--resume")


def test_cli_evaluate_json_and_confusion_matrix(digits_run, capsys):
    assert main(["evaluate", str(digits_run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    result = json.loads((digits_run / "result.json").read_text())
    assert metrics["accuracy"] == pytest.approx(result["test_accuracy"])
    assert len(metrics["per_class"]) == 10 and np.array(metrics["confusion_matrix"]).sum() == metrics["total"]
    assert Path(metrics["confusion_matrix_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", str(digits_run)]) == 0
    assert "precision" in capsys.readouterr().out


def test_cli_predict_top_k_on_files_of_other_sizes_and_modes(digits_run, digits, tmp_path, capsys):
    paths = []
    for i in range(6):
        img = digits.test.images[i, 0].numpy()
        pil = Image.fromarray(img).resize((57, 40))  # other size
        pil = pil.convert(["RGB", "RGBA", "L"][i % 3])  # other modes
        path = tmp_path / f"{i}_{int(digits.test.labels[i])}.png"
        pil.save(path)
        paths.append(str(path))
    assert main(["predict", str(digits_run), *paths, "--top-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [len(r["predictions"]) for r in results] == [3] * 6
    for r in results:
        probs = [p["probability"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert main(["predict", str(digits_run), paths[0]]) == 0
    assert paths[0] in capsys.readouterr().out


def test_cli_models_lists_reference_counts(capsys):
    assert main(["models", "seed-*", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["seed-baseline"]["params"] == 387_466
    assert rows["seed-shallow"]["params"] == 216_650
    assert rows["seed-baseline"]["macs_per_image"] == 11_180_160


def test_cli_datasets_lists_registered(capsys):
    assert main(["datasets", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert {"digits", "mnist", "fashion-mnist", "cifar10"} <= names


# ---- bad input: one line, non-zero exit, no traceback (checked in a real subprocess) ----

def test_cli_missing_data_dir_is_one_line(tmp_path):
    proc = run_cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1",
                   "--out", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert_one_line_error(proc, "train-images-idx3-ubyte.gz")


def test_cli_truncated_idx_is_one_line(tmp_path, mnist_dir):
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((mnist_dir / name).read_bytes())
    raw = gzip.decompress((mnist_dir / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))
    proc = run_cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1",
                   "--out", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert_one_line_error(proc, "train-images-idx3-ubyte")


def test_cli_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    (tmp_path / "data" / "cats" / "readme.txt").write_text("no images here")
    proc = run_cli("train", "--dataset", str(tmp_path / "data"), "--epochs", "1", "--out", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert_one_line_error(proc, "no images")


def test_cli_non_image_png_under_strict_is_one_line(tmp_path):
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    (root / "a" / "fake.png").write_bytes(b"this is not a png")
    proc = run_cli("train", "--dataset", str(root), "--strict", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert_one_line_error(proc, "fake.png")


def test_cli_unknown_model_is_one_line(tmp_path, capsys):
    assert main(["train", *QUICK, "--model", "seed-basline", "--out", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, "seed-basline", "Did you mean 'seed-baseline'")


def test_cli_spec_with_dropout_after_output_is_one_line(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("layers:\n  - conv2d: {filters: 8, kernel_size: 3, activation: relu}\n  - flatten: {}\n"
                    "  - dense: {units: 10, activation: softmax}\n  - dropout: {rate: 0.5}\n")
    assert main(["train", *QUICK, "--model", str(spec), "--out", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, "layer 3", "dropout")


def test_cli_labels_out_of_range_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 3 - 1,
             x_test=rng.integers(0, 255, (6, 8, 8), dtype=np.uint8), y_test=np.arange(6) % 3)
    proc = run_cli("train", "--dataset", str(path), "--epochs", "1", "--out", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert_one_line_error(proc, "label")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cli_malicious_cifar_pickle_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    marker = tmp_path / "pwned"
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (root / name).write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}))
    proc = run_cli("train", "--dataset", str(root), "--epochs", "1", "--out", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert_one_line_error(proc, "refusing to unpickle")
    assert not marker.exists()


def test_cli_bad_flag_value_is_one_line(capsys):
    assert main(["train", "--epochs", "many"]) == 2
    assert_one_line_error(capsys.readouterr().err, "epochs")
    assert main(["train", "--precision", "fp8", *QUICK]) == 2
    assert_one_line_error(capsys.readouterr().err, "precision")


def test_cli_missing_device_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert main(["train", *QUICK, "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, "cuda", "--device cpu")


def test_cli_evaluate_missing_run_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert_one_line_error(capsys.readouterr().err, "not found")


def test_cli_ctrl_c_then_resume_reaches_same_result(tmp_path):
    args = ["train", "--dataset", "digits", "--model", "seed-baseline", "--epochs", "6", "--device", "cpu",
            "--no-progress"]
    full = run_cli(*args, "--out", str(tmp_path / "full"), "--json")
    assert full.returncode == 0, full.stderr
    env = {**os.environ, "LEANVISION_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "leanvision", *args, "--out", str(tmp_path / "cut")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # after epoch 1 of 6: the remaining epochs take far longer than this poll
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # never skipped: a run that finished first is a failure of this test
    assert_one_line_error(err, "--resume")
    resumed = run_cli(*args, "--out", str(tmp_path / "cut"), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    a, b = json.loads(full.stdout), json.loads(resumed.stdout)
    assert a["test_accuracy"] == b["test_accuracy"] and a["best_val_accuracy"] == b["best_val_accuracy"]
