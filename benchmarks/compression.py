"""Does compression pay on a real CPU? int8, channel pruning and distillation of the compact net on MNIST.

In one process: train `compact` (3 epochs, Adam 3e-3, onecycle), then
  (a) static int8 (ONNX Runtime QDQ, calibrated on 512 training images) against the fp32 model in ONNX Runtime:
      throughput at batch 256 (target >= 2x) and test accuracy drop (target <= 0.3 pp). Both models are timed in
      both of ORT's CPU modes: `onnxruntime` (one session, intra-op threads) and `onnxruntime-streams` (one
      single-thread session per thread, each on a shard of the batch); the throughput ratio takes each model in its
      faster mode, and the ratio within each mode is recorded too;
  (b) 50% structured channel pruning (L1) + 2 epochs of fine-tuning: speed-up in ONNX Runtime and eager PyTorch at
      batch 1 and 256 (target >= 1.5x) and accuracy drop (target <= 0.5 pp); both models are BN-folded, so the
      speed-up is the pruning's alone;
  (c) distillation: the reference `seed-shallow` model (Conv2D(32) -> Dense; 216,650 parameters but 0.41M MACs, 5.8x
      fewer than the compact teacher's 2.37M) trained 6 epochs alone, then distilled from the trained compact
      (alpha 0.5, T 4) by `leanvision optimize` from the same seed: same initial weights, batch order and schedule,
      so the per-seed differences are paired; mean test accuracy over 3 seeds (target: distilled > alone).
      Students smaller than the teacher in both parameters and MACs (compact width 4 or 8: 2k/9k parameters) did not
      gain beyond seed noise (width 4, 6 epochs: +0.06 pp mean at 1 thread, -0.07 pp at 2 threads; width 8,
      6 epochs: +0.04 and -0.04 pp on two seeds): they cannot fit the teacher's function (the "capacity gap");
      1-3 epoch schedules gained less or lost.
Speeds are measured with leanvision's own runtimes and `measure_latency`, fp32 and int8 interleaved over several
rounds; each speed-up is the median over rounds of the ratio within a round, because the VM's CPU capacity drifts.

Usage: python benchmarks/compression.py [--data-dir ../shared/data] [--threads N] [--rounds 7]
       [--student seed-shallow] [--student-epochs 6] [--alpha 0.5] [--temperature 4]
Writes benchmarks/out/compression.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.data import load_dataset
from leanvision.measure import environment, measure_latency
from leanvision.optimize import optimize_run
from leanvision.runs import load_run, train_run
from leanvision.runtimes import get_runtime
from leanvision.techniques import DistillConfig, fold_conv_bn_

SHAPE = (1, 28, 28)


def speeds(models: dict[str, tuple[torch.nn.Module, str]], batch_size: int, rounds: int) -> dict[str, list[float]]:
    """Images/s of each `label: (model, runtime)` in each of `rounds` interleaved rounds (median of 20 calls each).

    Every round prepares fresh sessions: one ORT session can be 30% faster or slower than another of the same model
    for its whole life (measured here), so a speed-up from a single pair of sessions would be a coin toss."""
    x = torch.randn((batch_size, *SHAPE), generator=torch.Generator().manual_seed(0))
    repeats = 20 if batch_size > 1 else 200
    per_round: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(rounds):
        predicts = {label: get_runtime(runtime).prepare(m, x[:2]) for label, (m, runtime) in models.items()}
        for label, predict in predicts.items():
            stats = measure_latency(lambda: predict(x), warmup=3, repeats=repeats)
            per_round[label].append(batch_size / (stats.median_ms / 1e3))
    return per_round


def ratio(per_round: dict[str, list[float]], new: str | list[str], old: str | list[str]) -> float:
    """Median over rounds of (best of `new`) / (best of `old`) images/s in the same round: paired, so a slower
    stretch of the shared CPU slows both sides of each ratio alike."""
    new, old = ([x] if isinstance(x, str) else x for x in (new, old))
    return statistics.median(max(per_round[n][i] for n in new) / max(per_round[o][i] for o in old)
                             for i in range(len(per_round[new[0]])))


def folded(run_dir: Path) -> torch.nn.Module:
    model = load_run(run_dir).model
    fold_conv_bn_(model, SHAPE)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--threads", type=int, default=None, help="torch and ORT threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--seeds", type=int, default=3, help="distillation seeds")
    parser.add_argument("--student", default="seed-shallow", help="distillation student model")
    parser.add_argument("--student-epochs", type=int, default=6, help="distillation student training epochs")
    parser.add_argument("--alpha", type=float, default=DistillConfig.alpha, help="distillation soft-target weight")
    parser.add_argument("--temperature", type=float, default=DistillConfig.temperature,
                        help="distillation temperature")
    parser.add_argument("--dataset", default="mnist", help="mnist (the benchmark) or digits (a quick smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "compression.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start, load_before = time.perf_counter(), os.getloadavg()
    dataset = load_dataset(args.dataset, args.data_dir, download=False)
    work = Path(tempfile.mkdtemp(prefix="leanvision-compression-"))
    train = TrainConfig(epochs=3, learning_rate=3e-3, schedule="onecycle")
    base_cfg = RunConfig(model="compact", data=DataConfig(args.dataset, args.data_dir), train=train)
    base = train_run(base_cfg, work / "compact", progress=False, dataset=dataset)
    print(f"compact: test accuracy {base['test_accuracy']:.4f}, {base['train_time_s']:.0f} s")

    # (a) static int8 against fp32, both in ONNX Runtime
    int8 = optimize_run(work / "compact", ["quantize:mode=int8"], work / "int8", dataset=dataset, progress=False)
    fp32_model, int8_model = folded(work / "compact"), load_run(work / "int8").model
    both = {"fp32": fp32_model, "int8": int8_model}
    # batch 256 in both ORT modes: one session with intra-op threads, and one single-thread session per thread
    modes = ("onnxruntime", "onnxruntime-streams")
    b256 = speeds({f"{name} {rt}": (m, rt) for rt in modes for name, m in both.items()}, 256, args.rounds)
    b1 = speeds({name: (m, "onnxruntime") for name, m in both.items()}, 1, args.rounds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # context: how the int8 gain depends on the thread count
    one_thread = speeds({name: (m, "onnxruntime") for name, m in both.items()}, 256, args.rounds)
    torch.set_num_threads(threads)
    int8_row = {
        "fp32_accuracy": int8["source_test_accuracy"], "int8_accuracy": int8["test_accuracy"],
        "accuracy_drop_pp": (int8["source_test_accuracy"] - int8["test_accuracy"]) * 100,
        "b256_images_per_s_median": {k: statistics.median(v) for k, v in b256.items()}, "b256_per_round": b256,
        # the target: each model in its faster ORT mode, round by round
        "throughput_speedup_b256": ratio(b256, [f"int8 {rt}" for rt in modes], [f"fp32 {rt}" for rt in modes]),
        "speedup_b256_by_mode": {rt: ratio(b256, f"int8 {rt}", f"fp32 {rt}") for rt in modes},
        "latency_speedup_b1": ratio(b1, "int8", "fp32"),
        "b1_images_per_s_median": {k: statistics.median(v) for k, v in b1.items()},
        "one_thread_b256": {**{k: statistics.median(v) for k, v in one_thread.items()},
                            "speedup": ratio(one_thread, "int8", "fp32")},
        "file_bytes": {"fp32_onnx": int8["steps"][-1]["quantization"]["fp32_onnx_bytes"],
                       "int8_onnx": int8["file_bytes"]},
        "coverage": int8["steps"][-1]["quantization"]["coverage"], "summary": int8["steps"][-1]["summary"],
    }
    print(f"(a) {int8_row['summary']}")

    # (b) 50% structured pruning + 2 epochs of fine-tuning, both models folded
    pruned = optimize_run(work / "compact", ["prune:ratio=0.5,finetune_epochs=2", "fold"], work / "pruned",
                          dataset=dataset, progress=False)
    pruned_model = load_run(work / "pruned").model
    prune_row = {"base_accuracy": pruned["source_test_accuracy"], "pruned_accuracy": pruned["test_accuracy"],
                 "accuracy_drop_pp": (pruned["source_test_accuracy"] - pruned["test_accuracy"]) * 100,
                 "params": [pruned["steps"][0]["params"], pruned["num_params"]],
                 "macs": [pruned["steps"][0]["macs"], pruned["macs"]], "speedup": {}}
    for runtime in ("onnxruntime", "torch"):
        for bs in (1, 256):
            s = speeds({"base": (fp32_model, runtime), "pruned": (pruned_model, runtime)}, bs, args.rounds)
            prune_row["speedup"][f"{runtime}_b{bs}"] = {"base_images_per_s": statistics.median(s["base"]),
                                                        "pruned_images_per_s": statistics.median(s["pruned"]),
                                                        "speedup": ratio(s, "pruned", "base")}
    print(f"(b) {pruned['steps'][1]['summary']}")

    # (c) distillation: the student trained alone, then the same run distilled by `leanvision optimize` (same
    # architecture, seed, initial weights, batch order and schedule; only the loss differs)
    student_train = TrainConfig(epochs=args.student_epochs, learning_rate=3e-3, schedule="onecycle")
    alone, distilled = [], []
    spec = f"distill:teacher={work / 'compact'},alpha={args.alpha},temperature={args.temperature}"
    for seed in range(args.seeds):
        cfg = RunConfig(model=args.student, data=DataConfig(args.dataset, args.data_dir),
                        train=dataclasses.replace(student_train, seed=seed))
        alone.append(train_run(cfg, work / f"alone{seed}", progress=False, dataset=dataset)["test_accuracy"])
        kd = optimize_run(work / f"alone{seed}", [spec], work / f"kd{seed}", dataset=dataset, progress=False)
        distilled.append(kd["test_accuracy"])
    distill_row = {"student": f"{args.student}, {args.student_epochs} epochs", "alpha": args.alpha,
                   "temperature": args.temperature, "student_params": kd["num_params"], "student_macs": kd["macs"],
                   "teacher_params": base["num_params"], "teacher_macs": pruned["steps"][0]["macs"],
                   "teacher_accuracy": base["test_accuracy"], "alone": alone, "distilled": distilled,
                   "alone_mean": statistics.mean(alone), "distilled_mean": statistics.mean(distilled),
                   "gain_pp": (statistics.mean(distilled) - statistics.mean(alone)) * 100,
                   "paired_gain_pp": [(d - a) * 100 for a, d in zip(alone, distilled)]}

    targets = {
        "int8_throughput_x": (int8_row["throughput_speedup_b256"], ">= 2.0", int8_row["throughput_speedup_b256"] >= 2),
        **{f"int8_throughput_x_{rt}": (v, "(info)", None) for rt, v in int8_row["speedup_b256_by_mode"].items()},
        "int8_throughput_x_1_thread": (int8_row["one_thread_b256"]["speedup"], "(info)", None),
        "int8_accuracy_drop_pp": (int8_row["accuracy_drop_pp"], "<= 0.3", int8_row["accuracy_drop_pp"] <= 0.3),
        **{f"prune_speedup_{k}": (v["speedup"], ">= 1.5", v["speedup"] >= 1.5) if k.endswith("b256")
           else (v["speedup"], "(info)", None) for k, v in prune_row["speedup"].items()},
        "prune_accuracy_drop_pp": (prune_row["accuracy_drop_pp"], "<= 0.5", prune_row["accuracy_drop_pp"] <= 0.5),
        "distill_gain_pp": (distill_row["gain_pp"], "> 0", distill_row["gain_pp"] > 0),
    }
    print(f"\n{'metric':<40}{'value':>10}  {'target':<8} met")
    for name, (value, target, met) in targets.items():
        print(f"{name:<40}{value:>10.3f}  {target:<8} {'' if met is None else 'yes' if met else 'NO'}")
    print(f"distillation: alone {alone} vs distilled {distilled}; paired gains (pp) {distill_row['paired_gain_pp']}")
    report = {"base": base, "int8": int8_row, "prune": prune_row, "distill": distill_row,
              "targets": {k: {"value": v, "target": t, "met": m} for k, (v, t, m) in targets.items()},
              "threads": torch.get_num_threads(), "rounds": args.rounds, "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "wall_time_s": time.perf_counter() - start,
              "environment": environment(torch.device("cpu")), "work_dir": str(work)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"{report['wall_time_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
