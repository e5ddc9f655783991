"""Does `leanvision search` pay? Multi-fidelity TPE vs random sampling, and the found front vs the registry models.

In one process, on one machine:
  1. the search twice with the same wall budget: (a) TPE with multi-fidelity early stopping (`stop_after=3`, the
     default) and (b) random sampling without early stopping; hypervolume (validation accuracy x ORT batch-1
     latency, one common reference) over wall time for both, and the time each needed to reach 95% of the smaller
     final hypervolume, and the time each needed to reach random sampling's final hypervolume (both start from the
     same warm-start trials, which alone come close to the smaller final hypervolume);
  2. registry models trained in the same run (fastnet with the `fast` recipe, seed-baseline with default
     settings for `--registry-epochs`), then every candidate (registry models and both searches' Pareto sets)
     re-measured together, interleaved over `--rounds` rounds: ORT batch-1 median latency, and batch-256
     throughput in both ORT CPU modes (`onnxruntime`, `onnxruntime-streams`; each model in its faster mode), test
     accuracy with 95% Wilson intervals;
  3. checks: does the multi-fidelity front dominate or match every registry model (accuracy >= and latency <=),
     and the best batch-256 throughput among front models with >= 99.0% test accuracy, as a multiple of
     seed-baseline's.
Writes benchmarks/out/search.json (and each search's own report under --out).

Real run (about 2 x 20 min + registry training on 2 cores); the registry models may be trained beforehand (their
accuracy does not need a quiet machine) and are then only re-timed:
  python benchmarks/search.py --dataset mnist --data-dir ../shared/data --registry-dir benchmarks/out/search-registry \
      --registry-only
  python benchmarks/search.py --dataset mnist --data-dir ../shared/data --minutes 20 \
      --registry-dir benchmarks/out/search-registry
Correctness check in about a minute (digits, tiny space, a few trials each, one registry model):
  python benchmarks/search.py --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.data import load_dataset
from leanvision.measure import measure_latency, wilson_interval
from leanvision.recipes import resolve_recipe
from leanvision.rundir import load_run
from leanvision.runs import train_run
from leanvision.runtimes import get_runtime, predict_logits
from leanvision.search import search
from leanvision.search.report import hypervolume_history

TINY_SPACE = {"architecture": {"stages": {"choices": [1, 2]}, "width": [4, 12], "kernel_size": 3},
              "training": {"epochs": {"choices": [1, 2]}}, "compression": {"prune": False}}


def registry_runs(names: list[str], dataset, out: Path, epochs: int, reuse: bool = False) -> dict[str, Path]:
    runs = {}
    for name in names:
        if reuse and (out / name / "model.json").is_file() and (out / name / "result.json").is_file():
            runs[name] = out / name  # trained earlier (--registry-dir): only the timing must be quiet
            continue
        if name == "fastnet-fast":
            recipe = resolve_recipe("fast", dataset.input_shape, "cpu")
            cfg = RunConfig(model=recipe.model, model_kwargs=dict(recipe.model_kwargs),
                            data=DataConfig(dataset=dataset.name),
                            train=TrainConfig(**{**recipe.train, "device": "cpu"}))
        else:
            cfg = RunConfig(model=name, data=DataConfig(dataset=dataset.name),
                            train=TrainConfig(epochs=epochs, device="cpu"))
        train_run(cfg, out / name, progress=False, dataset=dataset, overwrite=True)
        runs[name] = out / name
    return runs


def remeasure(candidates: dict[str, Path], dataset, rounds: int, repeats: int) -> dict[str, dict]:
    shape = tuple(dataset.input_shape)
    x1 = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    x256 = torch.randn((256, *shape), generator=torch.Generator().manual_seed(1))
    loaded = {name: load_run(path) for name, path in candidates.items()}
    preds = {name: {rt: get_runtime(rt).prepare(run.model, torch.zeros((2, *shape)))
                    for rt in ("onnxruntime", "onnxruntime-streams")} for name, run in loaded.items()}
    lat: dict[str, list[float]] = {n: [] for n in loaded}
    thr: dict[str, dict[str, list[float]]] = {n: {"onnxruntime": [], "onnxruntime-streams": []} for n in loaded}
    names = list(loaded)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            p = preds[name]
            lat[name].append(measure_latency(lambda: p["onnxruntime"](x1), warmup=10, repeats=repeats).median_ms)
            for rt in ("onnxruntime", "onnxruntime-streams"):
                ms = measure_latency(lambda: p[rt](x256), warmup=2, repeats=5).median_ms
                thr[name][rt].append(256 / (ms / 1e3))
    rows = {}
    for name, run in loaded.items():
        logits, labels = predict_logits(run.model, dataset.test, dataset.mean, dataset.std, torch.device("cpu"))
        correct, total = int((logits.argmax(1) == labels).sum()), len(labels)
        best_mode = max(thr[name], key=lambda rt: statistics.median(thr[name][rt]))
        rows[name] = {"run_dir": str(candidates[name]), "test_accuracy": correct / total,
                      "test_accuracy_95ci": list(wilson_interval(correct, total)),
                      "latency_b1_ms": statistics.median(lat[name]), "latency_b1_ms_rounds": lat[name],
                      "throughput_b256": statistics.median(thr[name][best_mode]), "throughput_mode": best_mode,
                      "throughput_b256_by_mode": {rt: statistics.median(v) for rt, v in thr[name].items()},
                      "int8": bool(getattr(run.model, "onnx_path", None))}
    return rows


def time_to(history: list[dict], target: float) -> float | None:
    return next((h["elapsed_s"] for h in history if h["hypervolume"] >= target), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="digits, tiny space, a few trials: correctness only")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--minutes", type=float, default=20.0, help="wall budget per strategy")
    ap.add_argument("--registry", default="fastnet-fast,seed-baseline,seed-shallow,lenet5,compact,dsconv,resnet8",
                    help="registry models to compare (seed-l2 and seed-dropout share seed-baseline's graph)")
    ap.add_argument("--registry-dir", default=None,
                    help="train the registry models here, or reuse those already trained there (their accuracy "
                         "does not depend on a quiet machine; their timing is re-taken in this run)")
    ap.add_argument("--registry-only", action="store_true", help="only train the registry models (into "
                                                                  "--registry-dir) and stop")
    ap.add_argument("--objectives", default="accuracy,latency,throughput",
                    help="search objectives (batch-1 latency alone is call overhead for these tiny nets; "
                         "throughput lets the front hold the fast-at-batch-256 models)")
    ap.add_argument("--registry-epochs", type=int, default=3, help="epochs for registry models without a recipe")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the final re-measurement")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/out/search")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out + ("-tiny" if args.tiny else ""))
    if out.exists():
        shutil.rmtree(out)
    dataset_name = "digits" if args.tiny else args.dataset
    common = dict(dataset=dataset_name, data_dir=args.data_dir, repeats=10 if args.tiny else args.repeats,
                  progress=not args.tiny, threads=args.threads, objectives=args.objectives)
    names = ["compact"] if args.tiny else [n.strip() for n in args.registry.split(",") if n.strip()]
    registry_dir = Path(args.registry_dir) if args.registry_dir else out / "registry"
    if args.registry_only:
        full = load_dataset(dataset_name, args.data_dir)
        registry_runs(names, full, registry_dir, 1 if args.tiny else args.registry_epochs, reuse=True)
        print(f"registry models trained in {registry_dir}: {', '.join(names)}")
        return 0
    budget = dict(trials=3, minutes=None) if args.tiny else dict(trials=None, minutes=args.minutes)
    space = TINY_SPACE if args.tiny else "default"
    strategies = {"multi-fidelity-tpe": dict(sampler="tpe", stop_after=3),
                  "random-no-stopping": dict(sampler="random", stop_after=0)}
    results = {}
    for name, strategy in strategies.items():
        tick = time.perf_counter()
        results[name] = search(**common, **budget, **strategy, space=space, out=str(out / name),
                               final_rounds=2 if args.tiny else 5)
        results[name]["bench_wall_s"] = time.perf_counter() - tick
    all_done = [t for r in results.values() for t in r["trials"] if t["state"] == "COMPLETE" and t.get("feasible")]
    ref = 1.1 * max(t["values"][1] for t in all_done)
    histories = {n: hypervolume_history(r["trials"], ref) for n, r in results.items()}
    finals = {n: (h[-1]["hypervolume"] if h else 0.0) for n, h in histories.items()}
    target = 0.95 * min(finals.values())
    # Both strategies start from the same warm-start trials (the registry's fastnet designs), which alone reach most
    # of the final hypervolume, so "95% of the smaller final" is met within the first trials by both; the telling
    # target is random sampling's own final hypervolume: how soon does each strategy reach what random reached?
    baseline = finals["random-no-stopping"]
    comparison = {n: {"final_hypervolume": finals[n], "time_to_target_s": time_to(histories[n], target),
                      "time_to_random_final_s": time_to(histories[n], baseline),
                      "trials": len(results[n]["trials"]), "counts": results[n]["counts"]} for n in results}
    full = load_dataset(dataset_name, args.data_dir)
    registry = registry_runs(names, full, registry_dir, 1 if args.tiny else args.registry_epochs,
                             reuse=args.registry_dir is not None)
    candidates = {f"registry:{n}": p for n, p in registry.items()}
    for sname, r in results.items():
        for p in r["pareto"]:
            candidates[f"{sname}:trial-{p['trial']}"] = Path(p["run_dir"])
    rows = remeasure(candidates, full, 2 if args.tiny else args.rounds, 10 if args.tiny else args.repeats)
    front = {n: v for n, v in rows.items() if n.startswith("multi-fidelity-tpe:")}
    dominance = {}
    for n, v in rows.items():
        if n.startswith("registry:"):
            by = [f for f, w in front.items() if w["test_accuracy"] >= v["test_accuracy"]
                  and w["latency_b1_ms"] <= v["latency_b1_ms"]]
            dominance[n] = {"dominated_or_matched_by": by, "ok": bool(by)}
    seed = rows.get("registry:seed-baseline")
    accurate = [v for v in front.values() if v["test_accuracy"] >= 0.99]
    ratio = (max(v["throughput_b256"] for v in accurate) / seed["throughput_b256"]) if seed and accurate else None
    summary = {"mode": "tiny" if args.tiny else "real", "dataset": dataset_name, "budget": budget,
               "threads": torch.get_num_threads(), "cores": os.cpu_count(), "hypervolume_reference_ms": ref,
               "hypervolume_target": target, "strategies": comparison, "candidates": rows,
               "front_vs_registry": dominance, "throughput_vs_seed_baseline_at_99": ratio,
               "environment": results["multi-fidelity-tpe"]["machine"]}
    Path("benchmarks/out").mkdir(parents=True, exist_ok=True)
    dest = Path("benchmarks/out") / ("search-tiny.json" if args.tiny else "search.json")
    dest.write_text(json.dumps(summary, indent=2, default=str))
    print(f"search benchmark ({summary['mode']}, {dataset_name}, {torch.get_num_threads()} threads): -> {dest}")
    for n, c in comparison.items():
        t, r = c["time_to_target_s"], c["time_to_random_final_s"]
        print(f"  {n:<20} trials {c['trials']:>3}  final HV {c['final_hypervolume']:.4g}  time to 95% of the "
              f"smaller final HV: {'-' if t is None else f'{t:.0f} s'}  time to random's final HV: "
              f"{'-' if r is None else f'{r:.0f} s'}")
    for n, v in sorted(rows.items(), key=lambda kv: kv[1]["latency_b1_ms"]):
        lo, hi = v["test_accuracy_95ci"]
        print(f"  {n:<32} test {100 * v['test_accuracy']:6.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]  ORT b1 "
              f"{1000 * v['latency_b1_ms']:8.1f} us  b256 {v['throughput_b256']:>10,.0f} img/s "
              f"({v['throughput_mode']})")
    for n, d in dominance.items():
        by = ", ".join(d["dominated_or_matched_by"])
        print(f"  {n}: {'dominated/matched by ' + by if d['ok'] else 'NOT matched by the front'}")
    print(f"  best b256 throughput at >= 99.0% test accuracy / seed-baseline's: "
          f"{'n/a' if ratio is None else f'{ratio:.1f}x'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
