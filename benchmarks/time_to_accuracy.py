"""Time to 99.0% MNIST test accuracy: leanvision's fast recipe vs the reference training (and Keras when installed).

For each of N seeds, in one process:
- fast: `leanvision train --recipe fast` as a library call. The clock starts before the dataset is read from the
  IDX .gz files (loading and preprocessing included; Python and library start-up excluded) and stops when the
  test accuracy of the final weights is known.
- reference: `seed-baseline`, Adam 1e-3, batch 128, fp32 (the reference training); test accuracy is measured after
  every epoch (not timed) and the time to 99.0% is the training time until the first epoch at or above it, else
  the best accuracy within --reference-epochs is reported.
- keras (when TensorFlow is installed): the reference Keras code (same model, Adam, batch 128), timed the same way.
Prints mean/std of accuracy and time per method, the median time, and ratios; writes
benchmarks/out/time_to_accuracy.json.

With `--cifar ROOT` (a folder with train/ and test/ class folders, e.g. ../shared/data/cifar10/jpg) it measures the
colour recipes instead: for each seed and recipe (fast: goal 85%, accurate: goal 90%), a fresh
`leanvision train --recipe R` process, timed from process start to its exit after the final test accuracy (Python
start-up, reading the decoded-image cache, training, every validation and the fp32 test evaluation included). The
decoded-image cache is filled once before the first timed run (its first-time cost is printed apart).
If `cifar10/jpg`'s two links arrived as small text files (a copy without symlinks), make the root
yourself: mkdir -p /tmp/cifar && ln -s "$PWD/../shared/data/cifar10/train_jpg" /tmp/cifar/train
          && ln -s "$PWD/../shared/data/cifar10/test_jpg" /tmp/cifar/test   (then pass --cifar /tmp/cifar)

Usage: python benchmarks/time_to_accuracy.py [--data-dir ../shared/data] [--seeds 5] [--reference-epochs 2]
       python benchmarks/time_to_accuracy.py --cifar ../shared/data/cifar10/jpg --seeds 3 [--recipes fast,accurate]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.data import load_dataset
from leanvision.measure import environment
from leanvision.models import create_model
from leanvision.recipes import keras as keras_recipe
from leanvision.recipes import resolve_recipe
from leanvision.runs import train_run
from leanvision.runtimes.eager import predict_logits
from leanvision.train import fit

TARGET = 0.990
CIFAR_GOALS = {"fast": (0.85, 180.0), "accurate": (0.90, 600.0)}  # recipe: (test accuracy, seconds from start)


def warm_up_library() -> None:
    """Library start-up, excluded from the timings: the first optimizer construction lazily imports torch._dynamo
    (about 2 s here), and the first conv call loads oneDNN kernels."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch.nn.functional.conv2d(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 3, 3))


def run_fast(data_dir: str, seed: int) -> dict:
    warm_up_library()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        dataset = load_dataset("mnist", data_dir, download=False)
        recipe = resolve_recipe("fast", dataset.input_shape, "cpu")
        cfg = RunConfig(model=recipe.model, model_kwargs=recipe.model_kwargs, data=DataConfig("mnist", data_dir),
                        train=TrainConfig(**{**recipe.train, "seed": seed, "device": "cpu"}))
        result = train_run(cfg, out, progress=False, dataset=dataset)
        wall = time.perf_counter() - start
    return {"method": "fast", "seed": seed, "accuracy": result["test_accuracy"], "time_s": wall,
            "train_time_s": result["train_time_s"], "reached": result["test_accuracy"] >= TARGET,
            "recipe": {"model": recipe.model, **recipe.model_kwargs, **recipe.train}}


def run_reference(dataset, seed: int, epochs: int) -> dict:
    torch.manual_seed(seed)
    model = create_model("seed-baseline")
    accuracies, times = [], []

    def score(record, m):
        logits, labels = predict_logits(m, dataset.test, dataset.mean, dataset.std, torch.device("cpu"))
        accuracies.append((logits.argmax(1) == labels).float().mean().item())
        times.append(record["epoch_time_s"])

    cfg = TrainConfig(**{**keras_recipe(dataset.input_shape).train, "epochs": epochs, "seed": seed, "device": "cpu"})
    with tempfile.TemporaryDirectory() as out:
        fit(model, dataset, cfg, out, progress=False, on_epoch_end=score)
    return _time_to("reference", seed, accuracies, times)


def _time_to(method: str, seed: int, accuracies: list[float], times: list[float]) -> dict:
    total = 0.0
    for acc, t in zip(accuracies, times):
        total += t
        if acc >= TARGET:
            return {"method": method, "seed": seed, "accuracy": acc, "time_s": total, "reached": True}
    best = max(range(len(accuracies)), key=lambda i: accuracies[i])
    return {"method": method, "seed": seed, "accuracy": accuracies[best], "time_s": sum(times[: best + 1]),
            "reached": False, "budget_epochs": len(times)}


def run_keras(dataset, seed: int, epochs: int) -> dict | None:
    try:
        import tensorflow as tf
        from tensorflow import keras
    except ImportError:
        return None
    tf.random.set_seed(seed)
    x_train = dataset.train.images.permute(0, 2, 3, 1).numpy().astype("float32") / 255
    x_test = dataset.test.images.permute(0, 2, 3, 1).numpy().astype("float32") / 255
    y_test = dataset.test.labels.numpy()
    model = keras.Sequential([keras.Input(shape=(28, 28, 1)), keras.layers.Conv2D(32, (3, 3), activation="relu"),
                              keras.layers.Conv2D(64, (3, 3), activation="relu"), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    accuracies, times = [], []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)
            probs = self.model.predict(x_test, batch_size=1000, verbose=0)
            accuracies.append(float((probs.argmax(1) == y_test).mean()))

    model.fit(x_train, keras.utils.to_categorical(dataset.train.labels.numpy(), 10), epochs=epochs, batch_size=128,
              verbose=0, callbacks=[Clock()])
    return _time_to("keras", seed, accuracies, times)


def run_cifar_recipe(root: str, recipe: str, seed: int) -> dict:
    """One fresh `leanvision train` process; wall time from its start to its exit (test accuracy known)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "leanvision", "train", "--dataset", root, "--recipe", recipe, "--seed",
                   str(seed), "--device", "cpu", "--out", f"{out}/run", "--no-progress", "--json"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout)
    goal, budget = CIFAR_GOALS[recipe]
    return {"method": recipe, "seed": seed, "accuracy": result["test_accuracy"], "time_s": wall,
            "train_time_s": result["train_time_s"], "epochs": result["epochs_run"],
            "reached": result["test_accuracy"] >= goal and wall <= budget, "goal": goal, "budget_s": budget,
            "best_val_accuracy": result.get("best_val_accuracy")}


def cifar_main(args) -> int:
    start = time.perf_counter()
    dataset = load_dataset(args.cifar)  # fills the decoded-image cache: the timed runs start from it
    print(f"decoded-image cache ready in {time.perf_counter() - start:.1f} s ({len(dataset.train) + len(dataset.val)}"
          f" training + {len(dataset.test)} test images; not part of the timings)", flush=True)
    recipes = args.recipes.split(",")
    rows = []
    for seed in range(args.seeds):
        for recipe in recipes:
            rows.append(run_cifar_recipe(args.cifar, recipe, seed))
            print(json.dumps(rows[-1]), flush=True)
    summary = {r: summarize([row for row in rows if row["method"] == r]) for r in recipes}
    env = environment()
    print(f"\nCIFAR-10 ({args.cifar}), {args.seeds} seeds, wall time from process start, CPU {env['cpu_model']} "
          f"({env['cpu_count']} cores, {env['torch_threads']} threads), torch {env['torch']}")
    print(f"{'recipe':<10}{'goal':>14}{'acc mean':>10}{'acc std':>9}{'time median s':>15}{'time mean s':>13}"
          f"{'std':>7}{'met':>6}   per seed (accuracy, s)")
    for r, s in summary.items():
        goal, budget = CIFAR_GOALS[r]
        per_seed = ", ".join(f"{row['accuracy']:.4f} {row['time_s']:.0f}" for row in rows if row["method"] == r)
        print(f"{r:<10}{f'{goal:.0%} <= {budget:.0f} s':>14}{s['accuracy_mean']:>10.4f}{s['accuracy_std']:>9.4f}"
              f"{s['time_median_s']:>15.1f}{s['time_mean_s']:>13.1f}{s['time_std_s']:>7.1f}"
              f"{s['reached']:>4}/{s['runs']}   {per_seed}")
    out = Path(__file__).parent / "out" / "time_to_accuracy_cifar10.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"goals": CIFAR_GOALS, "rows": rows, "summary": summary, "environment": env}, indent=2))
    print(f"wrote {out}")
    return 0


def summarize(rows: list[dict]) -> dict:
    accs, times = [r["accuracy"] for r in rows], [r["time_s"] for r in rows]
    return {"accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "time_median_s": statistics.median(times), "time_mean_s": statistics.mean(times),
            "time_std_s": statistics.stdev(times) if len(times) > 1 else 0.0,
            "reached": sum(r["reached"] for r in rows), "runs": len(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--reference-epochs", type=int, default=2, help="budget for seed-baseline and Keras")
    parser.add_argument("--methods", default="fast,reference,keras")
    parser.add_argument("--cifar", default=None, help="CIFAR-10 root (train/, test/): time the colour recipes instead")
    parser.add_argument("--recipes", default="fast,accurate", help="with --cifar: recipes to time")
    args = parser.parse_args()
    if args.cifar:
        return cifar_main(args)
    methods = args.methods.split(",")
    rows: list[dict] = []
    reference_data = load_dataset("mnist", args.data_dir, val_fraction=0.0, download=False)  # all 60k, like Keras
    for seed in range(args.seeds):
        if "fast" in methods:
            rows.append(run_fast(args.data_dir, seed))
            print(json.dumps(rows[-1]), flush=True)
        if "reference" in methods:
            rows.append(run_reference(reference_data, seed, args.reference_epochs))
            print(json.dumps(rows[-1]), flush=True)
        if "keras" in methods:
            row = run_keras(reference_data, seed, args.reference_epochs)
            if row is not None:
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {m: summarize([r for r in rows if r["method"] == m]) for m in methods
               if any(r["method"] == m for r in rows)}
    env = environment()
    print(f"\nMNIST, target {TARGET:.1%} test accuracy, {args.seeds} seeds, CPU {env['cpu_model']} "
          f"({env['cpu_count']} cores, {env['torch_threads']} threads), torch {env['torch']}")
    print(f"{'method':<10}{'acc mean':>10}{'acc std':>9}{'time median s':>15}{'time mean s':>13}{'std':>7}"
          f"{'reached':>9}")
    for m, s in summary.items():
        print(f"{m:<10}{s['accuracy_mean']:>10.4f}{s['accuracy_std']:>9.4f}{s['time_median_s']:>15.2f}"
              f"{s['time_mean_s']:>13.2f}{s['time_std_s']:>7.2f}{s['reached']:>5}/{s['runs']}")
    if "fast" in summary:
        for m in summary:
            if m != "fast":
                ratio = summary[m]["time_median_s"] / summary["fast"]["time_median_s"]
                print(f"fast is {ratio:.1f}x faster than {m} (median times; {m} "
                      f"{'reached' if summary[m]['reached'] else 'did not reach'} the target in its budget)")
    out = Path(__file__).parent / "out" / "time_to_accuracy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"target": TARGET, "rows": rows, "summary": summary, "environment": env}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
