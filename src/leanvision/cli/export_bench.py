"""The `export` and `bench` subcommands' handlers: call `accel.export.export_run` / `accel.bench.bench_run`, format.

Their flags are generated in `cli.build_parser` from `config.ExportConfig` / `config.BenchConfig` (+ `RunSource`).
Heavy imports (torch) happen when a command runs, not when the CLI starts.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from ..cliparse import config_from_flags
from ..config import BenchConfig, ExportConfig, RunSource


def cmd_export(ns: Any) -> int:
    from ..accel.export import export_run

    config, source = config_from_flags(ns, ExportConfig), config_from_flags(ns, RunSource)
    r = export_run(ns.run_dir, config.out, fmt=config.format, opset=config.opset, data_dir=source.data_dir,
                   weights=source.weights)
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
    from ..accel.bench import bench_run
    from ..device import resolve_device
    from ..measure.env import environment

    config, source = config_from_flags(ns, BenchConfig), config_from_flags(ns, RunSource)
    if config.device == "auto":  # named concretely in the JSON environment
        config = dataclasses.replace(config, device=str(resolve_device(config.device)))
    rows = bench_run(ns.run_dir, config, data_dir=source.data_dir, weights=source.weights)
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
