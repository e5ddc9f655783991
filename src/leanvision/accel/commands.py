"""The `export` and `bench` subcommands: parse flags, call `accel.export.export_run` / `accel.bench.bench_run`, format.

`install(commands, extra)` adds them to the CLI's command table (`leanvision.cli`), so the CLI module only holds a
two-line hook. Heavy imports (torch) happen when a command runs, not when the CLI starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jsonargparse import ArgumentParser

from ..errors import LeanvisionError


def _csv(text: str, cast: type = str, flag: str = "") -> tuple:
    try:
        values = tuple(cast(v.strip()) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise LeanvisionError(f"Invalid {flag} {text!r}. Expected comma-separated values, e.g. 1,256.") from None
    if not values:
        raise LeanvisionError(f"Invalid {flag} {text!r}. Expected at least one value.")
    if cast is int and min(values) < 1:
        raise LeanvisionError(f"{flag} expects positive integers, received {text!r} (e.g. 1,256).")
    return values


def cmd_export(ns: Any) -> int:
    from .export import export_run

    r = export_run(ns.run_dir, ns.out, fmt=ns.format, opset=ns.opset, data_dir=ns.data_dir, weights=ns.weights)
    if ns.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"exported {r['path']} ({r['format']} opset {r['opset']}, {r['file_bytes']:,} bytes, "
              f"batch dimension {'dynamic' if r['dynamic_batch'] else 'FIXED'})")
        print(f"{r['split']} accuracy on {r['images']} images on cpu: {r['reference']} "
              f"{r['reference_accuracy'] * 100:.2f}%, exported file in ONNX Runtime "
              f"{r['onnxruntime_accuracy'] * 100:.2f}% (difference {r['difference_pp']:.2f} pp, "
              f"predictions agree on {r['prediction_agreement'] * 100:.2f}%, max |logit diff| "
              f"{r['max_abs_logit_diff']:.2e})")
    if not r["parity_ok"]:
        ref = "PyTorch's" if r["torch_accuracy"] is not None else "the run's own int8 model's"
        print(f"error: ONNX Runtime accuracy differs from {ref} by {r['difference_pp']:.2f} pp (> "
              f"{r['tolerance_pp']} pp allowed); the export is not faithful. Try another --opset.", file=sys.stderr)
        return 1
    return 0


def cmd_bench(ns: Any) -> int:
    from ..device import resolve_device
    from ..measure.env import environment
    from .bench import BenchConfig, bench_run

    device = str(resolve_device(ns.device)) if ns.device == "auto" else ns.device
    config = BenchConfig(runtimes=_csv(ns.runtime, str, "--runtime"), precisions=_csv(ns.precision, str, "--precision"),
                         batch_sizes=_csv(ns.batch_sizes, int, "--batch-sizes"), repeats=ns.repeats, warmup=ns.warmup,
                         device=device, price_per_hour=ns.price_per_hour, threads=ns.threads)
    rows = bench_run(ns.run_dir, config, data_dir=ns.data_dir, weights=ns.weights)
    if ns.json:
        print(json.dumps({"run_dir": ns.run_dir, "environment": environment(config.device), "rows": rows}, indent=2,
                         default=str))
        return 0
    print(format_table(rows, ns.run_dir, config.price_per_hour))
    return 0


COLUMNS = (  # (header, key, format); units in the headers, every row names runtime, dtype, batch, device, threads
    ("runtime", "runtime", "{}"), ("dtype", "precision", "{}"), ("batch", "batch_size", "{}"),
    ("device", "device", "{}"), ("threads", "threads", "{}"), ("latency median (ms)", "latency_median_ms", "{:.3f}"),
    ("latency p95 (ms)", "latency_p95_ms", "{:.3f}"), ("throughput (img/s)", "images_per_s", "{:,.0f}"),
    ("accuracy (%)", "accuracy", "{:.2%}"), ("1st call (ms)", "first_call_ms", "{:,.1f}"),
    ("energy (J/img)", "energy_per_image_j", "{:.3g}"), ("cost (USD/1M img)", "cost_per_million_images_usd", "{:.4f}"),
)


def format_table(rows: list[dict], run_dir: str, price: float | None) -> str:
    """One plain-text table of bench rows, with the units and the caveats under it."""
    columns = [c for c in COLUMNS if price is not None or c[1] != "cost_per_million_images_usd"]
    cells = [[h for h, _, _ in columns] + ["status"]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = row.get(key)
            if value is None and key == "energy_per_image_j" and row["status"] == "ok":
                value = "n/m"  # not measurable here: the reason is printed below the table
            line.append(fmt.format(value).replace("%", "") if isinstance(value, (int, float)) else str(value or "-"))
        cells.append(line + [row["status"]])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
    text = [f"leanvision bench {run_dir}"]
    for c in cells:
        text.append("  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths)))
                    + "  " + c[-1])
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        r = ok[0]
        text.append(f"latency: per batch, median and p95 of {r['repeats']} timed calls after {r['warmup']} warm-up "
                    "calls; "
                    f"'1st call' is timed apart (compilation, lazy init); accuracy: {r['accuracy_split']} split, "
                    f"{r['accuracy_images']} images, through each runtime and dtype")
        measured = r["energy_per_image_j"] is not None
        text.append(f"energy: measured ({r['energy_note']})" if measured else f"energy: {r['energy_note']}")
    if price is not None:
        text.append(f"cost per 1M images = {price} USD/hour / 3600 / images_per_s * 1e6 (machine fully busy)")
    return "\n".join(text)


def _export_parser() -> ArgumentParser:
    p = ArgumentParser(description="Export a run's model (ONNX, dynamic batch) and check ONNX Runtime's accuracy "
                                   "against PyTorch's (fails beyond 0.1 pp).", exit_on_error=False)
    p.add_argument("run_dir", type=str, help="run directory written by `leanvision train` or `optimize`")
    p.add_argument("--format", type=str, default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--out", type=str, default=None, help="output file (default: RUN_DIR/model.onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 runs in ONNX Runtime, TensorRT, OpenVINO)")
    p.add_argument("--weights", type=str, default="best", choices=["best", "last"],
                   help="best (validation) or last epoch's weights")
    p.add_argument("--data-dir", type=str, default=None, help="where the run's dataset lives, if moved")
    p.add_argument("--json", action="store_true", help="print the export summary as JSON")
    return p


def _bench_parser() -> ArgumentParser:
    p = ArgumentParser(description="Latency, throughput, accuracy, energy and cost of a run per runtime, precision "
                                   "and batch size, in one table.", exit_on_error=False)
    p.add_argument("run_dir", type=str, help="run directory written by `leanvision train` or `optimize`")
    p.add_argument("--runtime", type=str, default="all", help="all, or runtime names comma-separated: torch, "
                                                              "torch-compile, onnxruntime, openvino")
    p.add_argument("--runtimes", dest="runtime", type=str, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--precision", type=str, default="fp32", help="comma-separated: fp32,bf16,fp16 (fp16: CUDA)")
    p.add_argument("--batch-sizes", type=str, default="1,256", help="comma-separated images per call")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per batch size")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per batch size after the first call")
    p.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N | mps | tpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's current setting)")
    p.add_argument("--price-per-hour", type=float, default=None, help="machine price in USD/hour: adds the cost "
                                                                      "per million images")
    p.add_argument("--weights", type=str, default="best", choices=["best", "last"],
                   help="best (validation) or last epoch's weights")
    p.add_argument("--data-dir", type=str, default=None, help="where the run's dataset lives, if moved")
    p.add_argument("--json", action="store_true", help="print the rows and environment as JSON")
    return p


def install(commands: dict[str, Any], extra: dict[str, Any]) -> None:
    """Add `export` and `bench` to the CLI: `commands` maps name -> handler, `extra` name -> parser registration."""
    commands.update(export=cmd_export, bench=cmd_bench)
    extra["export"] = lambda sub: sub.add_subcommand("export", _export_parser(), help="export a run to ONNX")
    extra["bench"] = lambda sub: sub.add_subcommand("bench", _bench_parser(), help="benchmark a run per runtime")
