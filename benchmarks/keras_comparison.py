"""leanvision against the reference Keras code, on the same MNIST data, in one process.

Keras (TensorFlow) trains the reference baseline exactly as the reference code writes it: Conv2D(32,3x3,relu) ->
Conv2D(64,3x3,relu) -> Flatten -> Dense(10, softmax), Adam, batch 128, categorical cross-entropy on x/255. Next to
it, leanvision trains `seed-baseline` (the same model, the reference training) and its best model (`compact`,
Adam 3e-3 one-cycle) on the same 60,000 images. After every epoch each model is scored on the 10,000 test images
(not timed). Printed: training time per epoch, test accuracy, time to reach the Keras model's final accuracy, batch-1
latency (median over 200 calls after warm-up) and throughput at batch 256, and the ratios against Keras.
Writes benchmarks/out/keras_comparison.json. Skips with a message when TensorFlow is not installed.

Usage: python benchmarks/keras_comparison.py [--data-dir ../shared/data] [--epochs 2]
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
from leanvision.measure import environment, measure_latency
from leanvision.models import create_model
from leanvision.runtimes import get_runtime
from leanvision.train import fit, normalizer, predict_logits


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
            "inference": "tf.function(model(x, training=False))"}


def leanvision_run(dataset, name: str, cfg: TrainConfig, runtime: str) -> dict:
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
    predict = get_runtime(runtime).prepare(model, x[:1], precision="fp32", device=torch.device("cpu"))
    b1 = measure_latency(lambda: predict(x[:1]), warmup=20, repeats=200)
    b256 = measure_latency(lambda: predict(x), warmup=3, repeats=20)
    return {"framework": f"leanvision (torch {torch.__version__}), inference on {runtime}", "model": name,
            "params": sum(p.numel() for p in model.parameters()), "epoch_times_s": [h["epoch_time_s"] for h in history],
            "test_accuracies": accuracies, "latency_b1_median_ms": b1.median_ms,
            "images_per_s_b256": 256 / (b256.median_ms / 1e3), "inference": runtime}


def time_to(accuracies: list[float], times: list[float], target: float) -> float | None:
    total = 0.0
    for acc, t in zip(accuracies, times):
        total += t
        if acc >= target:
            return total
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=2, help="Keras epochs (the target); leanvision gets as many")
    args = parser.parse_args()
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        print("TensorFlow is not installed: skipping the Keras comparison (pip install tensorflow-cpu to run it).")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    dataset = load_dataset("mnist", args.data_dir, val_fraction=0.0, download=False)
    x_train = dataset.train.images.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255  # NHWC, as Keras reads it
    x_test = dataset.test.images.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255
    keras = keras_run(x_train, dataset.train.labels.numpy(), x_test, dataset.test.labels.numpy(), args.epochs)
    target = keras["test_accuracies"][-1]
    reference = TrainConfig(epochs=args.epochs, batch_size=128, optimizer="adam", learning_rate=1e-3, device="cpu")
    best = TrainConfig(epochs=args.epochs, batch_size=128, optimizer="adam", learning_rate=3e-3, schedule="onecycle",
                       device="cpu")
    rows = [keras,
            leanvision_run(dataset, "seed-baseline", reference, "torch"),
            leanvision_run(dataset, "seed-baseline", reference, "onnxruntime"),
            leanvision_run(dataset, "compact", best, "onnxruntime")]
    keras_tta = time_to(keras["test_accuracies"], keras["epoch_times_s"], target)
    print(f"MNIST 60,000 train / 10,000 test, CPU {environment()['cpu_model']}, {torch.get_num_threads()} threads; "
          f"target = Keras's final test accuracy {target:.4f} after {args.epochs} epoch(s); fp32 everywhere")
    print(f"{'framework / model':<58}{'params':>9}{'s/epoch':>9}{'final acc':>10}{'t->target s':>12}"
          f"{'(x Keras)':>10}{'b1 ms':>8}{'(x)':>7}{'img/s@256':>11}{'(x)':>7}")
    for r in rows:
        tta = time_to(r["test_accuracies"], r["epoch_times_s"], target)
        r["time_to_target_s"] = tta
        r["speedup_time_to_target_vs_keras"] = keras_tta / tta if tta else None
        r["speedup_latency_b1_vs_keras"] = keras["latency_b1_median_ms"] / r["latency_b1_median_ms"]
        r["speedup_throughput_vs_keras"] = r["images_per_s_b256"] / keras["images_per_s_b256"]
        label = f"{r['framework'].split(' (')[0]} {r['model']} [{r['inference']}]"[:57]
        tta_text = f"{tta:12.1f}" if tta else f"{'not reached':>12}"
        speed = f"{r['speedup_time_to_target_vs_keras']:10.2f}" if tta else f"{'-':>10}"
        print(f"{label:<58}{r['params']:>9,}{np.mean(r['epoch_times_s']):>9.1f}{r['test_accuracies'][-1]:>10.4f}"
              f"{tta_text}{speed}{r['latency_b1_median_ms']:>8.3f}{r['speedup_latency_b1_vs_keras']:>7.2f}"
              f"{r['images_per_s_b256']:>11,.0f}{r['speedup_throughput_vs_keras']:>7.2f}")
    out = Path(__file__).parent / "out" / "keras_comparison.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"target_accuracy": target, "rows": rows, "environment": environment()}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
