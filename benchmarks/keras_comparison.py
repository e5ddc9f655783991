"""leanvision against the reference Keras code, on the same MNIST data, in one process.

Keras (TensorFlow) trains the reference baseline exactly as the reference code writes it: Conv2D(32,3x3,relu) ->
Conv2D(64,3x3,relu) -> Flatten -> Dense(10, softmax), Adam, batch 128, categorical cross-entropy on x/255. Next to
it, leanvision trains `seed-baseline` (the same model, the reference training) and its best model (`compact`,
Adam 3e-3 one-cycle) on the same 60,000 images. After every epoch each model is scored on the 10,000 test images
(not timed). Printed: training time per epoch, test accuracy, time to reach the Keras model's final accuracy, batch-1
latency (median over 200 calls after warm-up) and throughput at batch 256, and the ratios against Keras.
Writes benchmarks/out/keras_comparison.json. Skips with a message when TensorFlow is not installed.

The VM's speed drifts between runs, so the whole comparison runs `--repeats` times (alternating which framework
goes first); every ratio is taken within one repeat, and the medians with their range are printed.

Usage: python benchmarks/keras_comparison.py [--data-dir ../shared/data] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from leanvision.config import TrainConfig
from leanvision.data import load_dataset
from leanvision.data.normalize import normalizer
from leanvision.measure import environment, measure_latency
from leanvision.models import create_model
from leanvision.recipes import keras as keras_recipe
from leanvision.runtimes import get_runtime
from leanvision.runtimes.eager import predict_logits
from leanvision.train import fit


def keras_run(x_train, y_train, x_test, y_test, epochs: int) -> dict:
    import tensorflow as tf
    from tensorflow import keras

    tf.random.set_seed(0)
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(32, (3, 3), activation="relu"),
        keras.layers.Conv2D(64, (3, 3), activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    y_onehot = keras.utils.to_categorical(y_train, 10)
    epoch_times, accuracies = [], []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.t)
            probs = self.model.predict(x_test, batch_size=1000, verbose=0)
            accuracies.append(float((probs.argmax(1) == y_test).mean()))

    model.fit(x_train, y_onehot, epochs=epochs, batch_size=128, verbose=0, callbacks=[Clock()])
    call = tf.function(lambda x: model(x, training=False))
    x1, x256 = x_test[:1], x_test[:256]
    b1 = measure_latency(lambda: call(x1).numpy(), warmup=20, repeats=200)
    b256 = measure_latency(lambda: call(x256).numpy(), warmup=3, repeats=20)
    return {"framework": f"keras {keras.__version__} (tensorflow {tf.__version__})", "model": "reference baseline",
            "params": int(model.count_params()), "epoch_times_s": epoch_times, "test_accuracies": accuracies,
            "latency_b1_median_ms": b1.median_ms, "images_per_s_b256": 256 / (b256.median_ms / 1e3),
            "inference": "tf.function"}


def leanvision_run(dataset, name: str, cfg: TrainConfig, runtimes: tuple[str, ...]) -> list[dict]:
    """Train `name` once; one row per inference runtime (the training columns are shared)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, img_size=28)
    accuracies = []

    def score(record, m):
        logits, labels = predict_logits(m, dataset.test, dataset.mean, dataset.std, torch.device("cpu"))
        accuracies.append((logits.argmax(1) == labels).float().mean().item())

    with tempfile.TemporaryDirectory() as out:
        history = fit(model, dataset, cfg, out, progress=False, on_epoch_end=score)
    model.eval()
    x = normalizer(dataset.mean, dataset.std, torch.device("cpu"))(dataset.test.images[:256])
    rows = []
    for runtime in runtimes:
        predict = get_runtime(runtime).prepare(model, x[:1], precision="fp32", device=torch.device("cpu"))
        b1 = measure_latency(lambda: predict(x[:1]), warmup=20, repeats=200)
        b256 = measure_latency(lambda: predict(x), warmup=3, repeats=20)
        rows.append({"framework": f"leanvision (torch {torch.__version__}), inference on {runtime}", "model": name,
                     "params": sum(p.numel() for p in model.parameters()),
                     "epoch_times_s": [h["epoch_time_s"] for h in history], "test_accuracies": list(accuracies),
                     "latency_b1_median_ms": b1.median_ms, "images_per_s_b256": 256 / (b256.median_ms / 1e3),
                     "inference": runtime})
    return rows


def time_to(accuracies: list[float], times: list[float], target: float) -> float | None:
    total = 0.0
    for acc, t in zip(accuracies, times):
        total += t
        if acc >= target:
            return total
    return None


def label(row: dict) -> str:
    return f"{row['framework'].split(' (')[0]} {row['model']} [{row['inference']}]"


def one_repeat(dataset, arrays, epochs: int, keras_first: bool) -> dict:
    """Keras and leanvision once each, in the given order; ratios against this repeat's Keras run."""
    # the reference Keras code's training (the `keras` recipe: constant Adam 1e-3, batch 128), and the plain defaults
    reference = TrainConfig(**{**keras_recipe(dataset.input_shape).train, "epochs": epochs, "device": "cpu"})
    best = TrainConfig(epochs=epochs, device="cpu")  # Adam, one-cycle, peak 3e-3, batch 128

    def ours():
        return (leanvision_run(dataset, "seed-baseline", reference, ("torch", "onnxruntime"))
                + leanvision_run(dataset, "compact", best, ("onnxruntime",)))

    if keras_first:
        keras = keras_run(*arrays, epochs)
        lean = ours()
    else:
        lean = ours()
        keras = keras_run(*arrays, epochs)
    rows = [keras, *lean]
    target = keras["test_accuracies"][-1]
    keras_tta = time_to(keras["test_accuracies"], keras["epoch_times_s"], target)
    for r in rows:
        tta = time_to(r["test_accuracies"], r["epoch_times_s"], target)
        r["time_per_epoch_s"] = float(np.mean(r["epoch_times_s"]))
        r["time_to_target_s"] = tta
        r["speedup_time_to_target_vs_keras"] = keras_tta / tta if tta else None
        r["speedup_latency_b1_vs_keras"] = keras["latency_b1_median_ms"] / r["latency_b1_median_ms"]
        r["speedup_throughput_vs_keras"] = r["images_per_s_b256"] / keras["images_per_s_b256"]
    for r in rows:  # after the loop: Keras's own time per epoch is set in it
        r["speedup_epoch_time_vs_keras"] = keras["time_per_epoch_s"] / r["time_per_epoch_s"]
    return {"order": "keras first" if keras_first else "leanvision first", "target_accuracy": target, "rows": rows}


COLUMNS = (("time_per_epoch_s", "s/epoch", "{:.1f}"), ("speedup_epoch_time_vs_keras", "x", "{:.2f}"),
           ("time_to_target_s", "t->target s", "{:.1f}"), ("speedup_time_to_target_vs_keras", "x", "{:.2f}"),
           ("latency_b1_median_ms", "b1 ms", "{:.3f}"), ("speedup_latency_b1_vs_keras", "x", "{:.2f}"),
           ("images_per_s_b256", "img/s@256", "{:,.0f}"), ("speedup_throughput_vs_keras", "x", "{:.2f}"))


def summarize(repeats: list[dict]) -> list[dict]:
    """Per row: the median of each column over the repeats and its range (None where a repeat missed the target)."""
    out = []
    for i, first in enumerate(repeats[0]["rows"]):
        summary = {"row": label(first), "params": first["params"],
                   "final_accuracy": [r["rows"][i]["test_accuracies"][-1] for r in repeats]}
        for key, _, _ in COLUMNS:
            values = [r["rows"][i][key] for r in repeats]
            got = [v for v in values if v is not None]
            summary[key] = {"median": float(np.median(got)) if got else None, "min": min(got, default=None),
                            "max": max(got, default=None), "values": values}
        out.append(summary)
    return out


def cell(stat: dict, fmt: str) -> str:
    if stat["median"] is None:
        return "not reached"
    text = fmt.format(stat["median"])
    return text if len(stat["values"]) == 1 else f"{text} [{fmt.format(stat['min'])}-{fmt.format(stat['max'])}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=2, help="Keras epochs (the target); leanvision gets as many")
    parser.add_argument("--repeats", type=int, default=3,
                        help="whole comparisons, alternating which framework goes first; medians and ranges printed")
    parser.add_argument("--train-images", type=int, default=None, help="use the first N training images (a quick "
                        "correctness check; the recorded numbers use all 60,000)")
    args = parser.parse_args()
    if args.repeats < 1 or args.epochs < 1:
        parser.error(f"--repeats and --epochs must be >= 1 (got {args.repeats}, {args.epochs})")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        print("TensorFlow is not installed: skipping the Keras comparison (pip install tensorflow-cpu to run it).")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    dataset = load_dataset("mnist", args.data_dir, val_fraction=0.0, download=False)
    if args.train_images:
        dataset.train = dataset.train.subset(torch.arange(min(args.train_images, len(dataset.train))))
    arrays = (dataset.train.images.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255,  # NHWC, as Keras reads it
              dataset.train.labels.numpy(),
              dataset.test.images.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255, dataset.test.labels.numpy())
    print(f"MNIST {len(dataset.train):,} train / {len(dataset.test):,} test, CPU {environment()['cpu_model']}, "
          f"{torch.get_num_threads()} threads, fp32 everywhere, batch 128 training; target = each repeat's Keras final "
          f"test accuracy after {args.epochs} epoch(s); {args.repeats} repeat(s), alternating order")
    repeats = []
    for k in range(args.repeats):
        repeats.append(one_repeat(dataset, arrays, args.epochs, keras_first=k % 2 == 0))
        rep = repeats[-1]
        print(f"repeat {k + 1} ({rep['order']}), target {rep['target_accuracy']:.4f}: " + "; ".join(
            f"{label(r)} {r['time_per_epoch_s']:.1f} s/epoch, acc {r['test_accuracies'][-1]:.4f}, "
            f"b1 {r['latency_b1_median_ms']:.3f} ms, {r['images_per_s_b256']:,.0f} img/s@256" for r in rep["rows"]),
            flush=True)
    summary = summarize(repeats)
    print(f"\nmedian [min-max] over {args.repeats} repeat(s); x = ratio against Keras in the same repeat "
          "(> 1: leanvision faster)")
    print("| framework / model [inference] | params | final acc | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|---|---:|---:|" + "---:|" * len(COLUMNS))
    for s in summary:
        accs = s["final_accuracy"]
        acc = f"{np.median(accs):.4f}" + (f" [{min(accs):.4f}-{max(accs):.4f}]" if len(accs) > 1 else "")
        print(f"| {s['row']} | {s['params']:,} | {acc} | " + " | ".join(cell(s[k], f) for k, _, f in COLUMNS) + " |")
    out = Path(__file__).parent / "out" / "keras_comparison.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"epochs": args.epochs, "repeats": repeats, "summary": summary,
                               "environment": environment()}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
