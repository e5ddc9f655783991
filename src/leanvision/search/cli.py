"""The `leanvision search` subcommand (`search_parser`, `cmd_search`, wired in by `leanvision.cli`): flags ->
`engine.search`, a short summary on stdout (Optuna stays unimported until the command runs)."""

from __future__ import annotations

import json
import sys
from typing import Any

from jsonargparse import ArgumentParser


def search_parser() -> ArgumentParser:
    p = ArgumentParser(description="Search architecture, training and compression choices for the most accurate "
                                   "model within a latency/size budget, on measured numbers (Optuna). Re-running the "
                                   "same command continues the study. Example: leanvision search --dataset mnist "
                                   "--max-latency-ms 0.05 --minutes 20 --out search/mnist", exit_on_error=False)
    p.add_argument("--dataset", type=str, default="digits", help="registered name, image folder, or .npz file")
    p.add_argument("--data-dir", type=str, default=None, help="where dataset files live")
    p.add_argument("--space", type=str, default="default", help="default, or a space YAML file")
    p.add_argument("--objectives", type=str, default="accuracy,latency",
                   help="comma-separated: accuracy plus any of latency, throughput, size, macs")
    p.add_argument("--max-latency-ms", type=float, default=None, help="constraint: batch-1 median latency (ms)")
    p.add_argument("--max-size-kb", type=float, default=None, help="constraint: model file size (kB)")
    p.add_argument("--min-accuracy", type=float, default=None, help="constraint: validation accuracy (0.99 = 99%%)")
    p.add_argument("--runtime", type=str, default="onnxruntime", help="runtime to time: onnxruntime, torch, ...")
    p.add_argument("--trials", type=int, default=None, help="the study's total trials (default 20 without "
                                                            "--minutes)")
    p.add_argument("--minutes", type=float, default=None, help="stop starting trials after this many minutes")
    p.add_argument("--storage", type=str, default=None, help="postgresql://... (several machines), or a .journal "
                                                             "file (default: OUT/study.journal)")
    p.add_argument("--study-name", type=str, default="leanvision-search", help="study in the storage")
    p.add_argument("--workers", type=int, default=1, help="local worker processes on the study")
    p.add_argument("--sampler", type=str, default="tpe", help="tpe (multi-objective, constraint-aware) | random")
    p.add_argument("--stop-after", type=int, default=3, help="stop a trial dominated at an epoch rung by this "
                                                             "many trials (0: never stop early)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (worker i uses seed + 1000 i)")
    p.add_argument("--threads", type=int, default=None, help="threads for timing (default: all cores)")
    p.add_argument("--repeats", type=int, default=50, help="timed batch-1 calls per measurement, after warm-up")
    p.add_argument("--compare", type=str, default=None, help="run directories (e.g. registry models trained with "
                                                             "`leanvision train`), comma-separated, measured and "
                                                             "scored with the Pareto set")
    p.add_argument("--no-warm-start", action="store_true", help="do not start from the registry designs the space "
                                                                "can express (fastnet with the fast recipe, ...)")
    p.add_argument("--out", type=str, required=True, help="output directory (journal, trials, pareto/, report)")
    p.add_argument("--no-progress", action="store_true", help="no per-trial lines on stderr")
    p.add_argument("--json", action="store_true", help="print results.json's content")
    return p


def cmd_search(ns: Any) -> int:
    from .engine import search  # lazy: `leanvision --help` stays fast (Optuna, torch)

    trials = ns.trials if ns.trials is not None or ns.minutes is not None else 20
    result = search(dataset=ns.dataset, data_dir=ns.data_dir, space=ns.space, objectives=ns.objectives,
                    max_latency_ms=ns.max_latency_ms, max_size_kb=ns.max_size_kb, min_accuracy=ns.min_accuracy,
                    runtime=ns.runtime, trials=trials, minutes=ns.minutes, storage=ns.storage,
                    study_name=ns.study_name, workers=ns.workers, sampler=ns.sampler, stop_after=ns.stop_after,
                    seed=ns.seed, threads=ns.threads, repeats=ns.repeats, out=ns.out, progress=not ns.no_progress,
                    warm_start=not ns.no_warm_start,
                    compare=tuple(p.strip() for p in (ns.compare or "").split(",") if p.strip()))
    if ns.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(result["answer"])
    for p in result["pareto"]:
        lo, hi = p["test_accuracy_95ci"]
        print(f"  trial {p['trial']:>4}: test {100 * p['test_accuracy']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}], "
              f"{p['latency_ms']:.4f} ms, {p['size_kb']:.1f} kB -> {p['run_dir']}")
    print(f"report: {ns.out}/report.md", file=sys.stderr)
    return 0
