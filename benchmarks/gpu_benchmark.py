"""GPU benchmark: training speed and time to 99 % MNIST test accuracy per precision, then inference per runtime.

Sized to finish in under 5 minutes on one H100/H200-class GPU (a time budget skips what would not fit, and says so):
1. Training: every model of the study's reference plan, with the plan's recipe (Adam 2e-3, one-cycle, batch 128),
   for up to 3 epochs on MNIST (54,000 training images) in fp32, bf16 and fp16 autocast. Per run: training
   images/s (epoch time only: validation, test evaluation and checkpoints are excluded) and the training time until
   the test accuracy first reaches 99 % (checked after every epoch; "not reached" otherwise). cuDNN autotuning is on.
2. Inference: `leanvision.accel.bench` on the compact fp32 run, on the GPU: every available runtime x fp32/bf16/fp16
   x batch 1 and 1000 (latency, images/s, test accuracy through the runtime, energy via NVML when pynvml is
   installed); torch-compile last, when the budget allows; plus ONNX Runtime on the CPU for comparison.
Prints both tables and writes benchmarks/out/gpu_benchmark.json (with the environment).

Usage: python benchmarks/gpu_benchmark.py [--data-dir ../shared/data] [--budget-s 270] [--max-epochs 3]
       [--precisions fp32,bf16,fp16] [--models compact,resnet8] [--channels-last] [--price-per-hour 3.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "gpu_benchmark.json"
TARGET = 0.99  # test accuracy for "time to 99 %"


class _Reached(Exception):
    """Raised from the epoch callback to stop a run once the target accuracy is reached."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="folder holding mnist/")
    parser.add_argument("--budget-s", type=float, default=270.0, help="wall-clock budget for the whole script")
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--models", default=None, help="comma-separated (default: the reference plan's models)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for training")
    parser.add_argument("--price-per-hour", type=float, default=None, help="GPU price in USD/hour (adds cost)")
    parser.add_argument("--out", default=str(OUT), help="JSON report path")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test this script")
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_benchmark: no CUDA device is visible to PyTorch (torch {torch.__version__}, CUDA build: "
              f"{torch.version.cuda or 'no'}); this benchmark needs an NVIDIA GPU. Nothing was measured.",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    from leanvision.data import load_dataset
    from leanvision.measure import environment
    from leanvision.study import load_plan

    dataset = load_dataset("mnist", str(Path(args.data_dir) / "mnist"), download=False)
    plan = load_plan("reference")
    models = args.models.split(",") if args.models else [str(v["model"]) for v in plan["variants"]]
    precisions = [p for p in args.precisions.split(",") if p]
    work = Path(tempfile.mkdtemp(prefix="leanvision-gpu-bench-"))
    training = train_all(dataset, plan["train"], models, precisions, args, work, start)
    inference = []
    if (work / "compact-fp32" / "model.json").is_file():
        try:
            inference = bench_inference(work / "compact-fp32", args, start)
        except Exception as e:  # noqa: BLE001 - keep the training results whatever happens here
            inference = [{"runtime": "-", "precision": "-", "status": f"failed: {type(e).__name__}: {e}"}]
    report = {"environment": environment(torch.device(args.device)), "budget_s": args.budget_s,
              "wall_time_s": time.perf_counter() - start, "training": training, "inference": inference}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_training(training)
    if inference:
        from leanvision.accel.commands import format_table

        print(format_table(inference, "compact (fp32-trained, MNIST)", args.price_per_hour))
    hardware = report["environment"]["gpu_name"] or report["environment"]["cpu_model"]
    print(f"{hardware}, torch {torch.__version__}; {report['wall_time_s']:.0f} s in all; "
          f"wrote {out}")
    return 0


def train_all(dataset, recipe: dict, models: list[str], precisions: list[str], args, work: Path, start: float):
    import torch

    from leanvision.config import DataConfig, RunConfig, TrainConfig
    from leanvision.io import write_json
    from leanvision.runs import build_model, model_description
    from leanvision.train import fit, predict_logits

    rows = []
    for name in models:
        for precision in precisions:
            if time.perf_counter() - start > 0.65 * args.budget_s:
                rows.append({"model": name, "precision": precision, "status": "skipped: time budget"})
                continue
            cfg = RunConfig(model=name, data=DataConfig("mnist", args.data_dir),
                            train=TrainConfig(**{**recipe, "epochs": args.max_epochs, "precision": precision,
                                                 "device": args.device, "channels_last": args.channels_last}))
            torch.manual_seed(0)
            model = build_model(cfg, dataset)
            out = work / f"{name}-{precision}"
            epochs: list[dict] = []

            def on_epoch_end(record, net, epochs=epochs):
                logits, labels = predict_logits(net, dataset.test, dataset.mean, dataset.std,
                                                next(net.parameters()).device)
                epochs.append({**record, "test_accuracy": (logits.argmax(1) == labels).float().mean().item()})
                if epochs[-1]["test_accuracy"] >= TARGET:
                    raise _Reached

            try:
                fit(model, dataset, cfg.train, out, progress=False, on_epoch_end=on_epoch_end)
            except _Reached:
                pass
            except Exception as e:  # noqa: BLE001 - one failing configuration is reported, the rest still run
                rows.append({"model": name, "precision": precision, "status": f"failed: {type(e).__name__}: {e}"})
                continue
            write_json(out / "model.json", model_description(cfg, model, dataset))  # a loadable run directory
            write_json(out / "config.json", {"config": cfg.to_dict()})
            seen = sum(e["train_images_per_s"] * e["epoch_time_s"] for e in epochs)
            train_s = sum(e["epoch_time_s"] for e in epochs)
            reached = next((i for i, e in enumerate(epochs) if e["test_accuracy"] >= TARGET), None)
            rows.append({
                "model": name, "precision": precision, "status": "ok", "epochs": len(epochs),
                "train_images_per_s": seen / max(train_s, 1e-9), "train_time_s": train_s,
                "time_to_99_s": sum(e["epoch_time_s"] for e in epochs[:reached + 1]) if reached is not None else None,
                "epochs_to_99": reached + 1 if reached is not None else None,
                "final_test_accuracy": epochs[-1]["test_accuracy"] if epochs else None,
                "batch_size": cfg.train.batch_size, "device": args.device, "channels_last": args.channels_last,
            })
    return rows


def bench_inference(run_dir: Path, args, start: float) -> list[dict]:
    from leanvision.accel.bench import BenchConfig, bench_run
    from leanvision.errors import LeanvisionError
    from leanvision.measure import get_runtime
    from leanvision.measure.runtimes import RUNTIMES

    common = dict(batch_sizes=(1, 1000), accuracy_batch_size=1000, repeats=50, warmup=10,
                  price_per_hour=args.price_per_hour)
    available = [n for n in RUNTIMES.names() if get_runtime(n).is_available()[0]]
    rows = []
    eager = [n for n in available if n != "torch-compile"]
    if eager:
        rows += bench_run(run_dir, BenchConfig(runtimes=tuple(eager), precisions=("fp32", "bf16", "fp16"),
                                               device=args.device, **common))
    if "onnxruntime" in available:
        rows += bench_run(run_dir, BenchConfig(runtimes=("onnxruntime",), device="cpu", **common))
    if "torch-compile" in available and time.perf_counter() - start < 0.8 * args.budget_s:
        try:  # TorchInductor on CUDA needs triton: a missing toolchain is a row, not the end of the report
            rows += bench_run(run_dir, BenchConfig(runtimes=("torch-compile",), precisions=("fp32", "bf16"),
                                                   device=args.device, **common))
        except LeanvisionError as e:
            rows.append({"runtime": "torch-compile", "precision": "-", "status": f"unsupported: {e}"})
    elif "torch-compile" in available:
        rows.append({"runtime": "torch-compile", "precision": "-", "status": "skipped: time budget"})
    return rows


def print_training(rows: list[dict]) -> None:
    device = rows[0].get("device", "") if rows else ""
    print(f"training on MNIST, {device}, time to {TARGET:.0%} test accuracy (training time only; checked each epoch)")
    header = f"{'model':<15}{'dtype':<7}{'batch':>6}{'images/s':>11}{'to 99% (s)':>12}{'epochs':>8}{'test acc':>10}"
    print(f"{header}  status")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['model']:<15}{r['precision']:<7}{'':>6}{'-':>11}{'-':>12}{'-':>8}{'-':>10}  {r['status']}")
            continue
        to99 = f"{r['time_to_99_s']:.1f}" if r["time_to_99_s"] is not None else "not reached"
        print(f"{r['model']:<15}{r['precision']:<7}{r['batch_size']:>6}{r['train_images_per_s']:>11,.0f}{to99:>12}"
              f"{r['epochs']:>8}{r['final_test_accuracy']:>10.4f}  ok")


if __name__ == "__main__":
    sys.exit(main())
