"""CPU acceptance: is ONNX Runtime's fp32 batch-1 latency at least 2x lower than PyTorch eager's?

Trains the `compact` model for one epoch on MNIST with the CLI (`leanvision train --dataset mnist --model compact
--epochs 1`) into a temporary run directory (or uses `--run-dir`), then measures both runtimes with
`leanvision.accel.bench` in one process: fp32, batch 1, same inputs, same thread count for both (torch's intra-op
threads = ONNX Runtime's intra_op_num_threads), once per thread setting. Each runtime is measured twice, alternating
(torch, ort, torch, ort), and the better median of the two is kept, so a burst of load from other processes does not
decide the result. Prints the latencies, the ratio and the test accuracy through both runtimes, and writes
benchmarks/out/ort_vs_eager.json.

Usage: python benchmarks/ort_vs_eager.py [--data-dir ../shared/data] [--threads 1,2] [--repeats 500] [--run-dir D]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "ort_vs_eager.json"
TARGET = 2.0  # eager median / ONNX Runtime median, batch 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="folder holding mnist/")
    parser.add_argument("--run-dir", default=None, help="an existing run directory (skips training)")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and torch's)")
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    import torch

    from leanvision.accel.bench import BenchConfig, bench_run
    from leanvision.cli import main as cli
    from leanvision.measure import environment

    default_threads = torch.get_num_threads()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, default_threads})
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="leanvision-ort-")) / "compact"
    if not args.run_dir:
        code = cli(["train", "--dataset", "mnist", "--data-dir", str(Path(args.data_dir) / "mnist"), "--model",
                    "compact", "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(run_dir)])
        if code != 0:
            return code
    results = []
    for n in threads:
        best: dict[str, dict] = {}
        for _ in range(2):  # alternate, keep each runtime's better median
            for runtime in ("torch", "onnxruntime"):
                config = BenchConfig(runtimes=(runtime,), batch_sizes=(1,), repeats=args.repeats, warmup=50, threads=n)
                row = bench_run(run_dir, config)[0]
                if runtime not in best or row["latency_median_ms"] < best[runtime]["latency_median_ms"]:
                    best[runtime] = row
        ratio = best["torch"]["latency_median_ms"] / best["onnxruntime"]["latency_median_ms"]
        results.append({"threads": n, "torch": best["torch"], "onnxruntime": best["onnxruntime"],
                        "eager_over_ort": ratio, "meets_target": ratio >= TARGET})
    torch.set_num_threads(default_threads)
    report = {"run_dir": str(run_dir), "target_ratio": TARGET, "environment": environment("cpu"), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"compact, MNIST 1 epoch; fp32, batch 1, cpu ({report['environment']['cpu_model']}); median (p95) ms per "
          f"call over {args.repeats} calls")
    print(f"{'threads':>7}  {'torch eager ms':>16}  {'onnxruntime ms':>16}  {'eager/ORT':>9}  "
          f"{'test acc torch/ORT':>19}")
    for r in results:
        t, o = r["torch"], r["onnxruntime"]
        print(f"{r['threads']:>7}  {t['latency_median_ms']:>7.3f} ({t['latency_p95_ms']:>6.3f})  "
              f"{o['latency_median_ms']:>7.3f} ({o['latency_p95_ms']:>6.3f})  {r['eager_over_ort']:>8.2f}x  "
              f"{t['accuracy']:>9.4f}/{o['accuracy']:.4f}  {'meets' if r['meets_target'] else 'BELOW'} {TARGET}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
