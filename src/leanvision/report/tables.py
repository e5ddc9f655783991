"""The numbers of a study as flat rows: Pareto flags, ranking, CSV columns, and the display cells shared by HTML/MD.

Nothing here computes a measurement: every value comes from the `study` dict; cells print "n/a" where it has none.
(Over 300 lines on purpose: every table of the report takes its cells from here, so HTML, Markdown and CSV agree.)
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..pareto import pareto_front

FRONTS = {"latency": "latency_b1_median_ms", "params": "params", "macs": "macs"}
"""Pareto front name -> the key minimised against accuracy (maximised)."""

BASE_COLUMNS = [
    "rank", "name", "status", "model", "base", "description",
    "accuracy", "accuracy_ci95_low", "accuracy_ci95_high", "accuracy_mean", "accuracy_std", "accuracies", "seeds",
    "test_total", "params", "trainable_params", "macs", "weight_bytes_fp32", "file_bytes",
    "latency_b1_median_ms", "latency_b1_p95_ms", "throughput_images_per_s", "peak_memory_bytes",
    "train_time_s", "train_images_per_s", "epochs", "pareto_latency", "pareto_params", "pareto_macs",
]
TAIL_COLUMNS = ["error", "run_dir", "diagnosis"]
_NESTED = {"runtimes", "history", "accuracy_ci95", "accuracies", "diagnosis", "pareto"}


def is_ok(variant: dict) -> bool:
    return variant.get("status") == "ok"


def number(value: Any) -> float | None:
    """`value` as a finite-or-infinite float, or None when missing, NaN or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def accuracy_of(variant: dict) -> float | None:
    acc = number(variant.get("accuracy"))
    return acc if acc is not None else number(variant.get("accuracy_mean"))


def pareto_flags(variants: Sequence[dict]) -> dict[str, list[bool]]:
    """Pareto membership of each variant (same order) on accuracy (max) vs latency, params and MACs (min).

    Only variants with status "ok" and both numbers present compete; the others get False, as do variants the
    diagnosis marked `did_not_learn` (near-chance accuracy: no trade-off worth a star).

    Example: `pareto_flags(study["variants"])["latency"][0]` is True when the first variant is on the latency front.
    """
    ok = [i for i, v in enumerate(variants) if is_ok(v) and not v.get("did_not_learn")]
    flags = {}
    for front, key in FRONTS.items():
        points = [{"accuracy": accuracy_of(variants[i]), key: number(variants[i].get(key))} for i in ok]
        members = {ok[j] for j in pareto_front(points, {"accuracy": "max", key: "min"})}
        flags[front] = [i in members for i in range(len(variants))]
    return flags


def runtime_columns(variants: Sequence[dict]) -> dict[str, list[str]]:
    """Runtime -> metric keys seen in any variant ("torch" first, then in order of appearance)."""
    found: dict[str, list[str]] = {}
    for variant in variants:
        for runtime, metrics in (variant.get("runtimes") or {}).items():
            keys = found.setdefault(str(runtime), [])
            for key, value in (metrics or {}).items() if isinstance(metrics, dict) else ():
                if key not in keys and not isinstance(value, (dict, list, tuple)):
                    keys.append(key)
    order = sorted(found, key=lambda r: (r != "torch", list(found).index(r)))
    return {r: found[r] for r in order}


def ranked(variants: Sequence[dict]) -> list[int]:
    """Indices of the ok variants by accuracy (desc), then batch-1 latency (asc), then plan order."""

    def key(i: int) -> tuple[float, float, int]:
        acc = accuracy_of(variants[i])
        lat = number(variants[i].get("latency_b1_median_ms"))
        return (-acc if acc is not None else math.inf, lat if lat is not None else math.inf, i)

    return sorted((i for i, v in enumerate(variants) if is_ok(v)), key=key)


def results_table(study: dict) -> list[dict]:
    """One flat row per variant: ok ones ranked (rank 1 = most accurate), then failed ones (rank None) in plan order.

    Keys are `csv_columns(study)`: scalar metrics as given, `accuracy_ci95_low/high`, `pareto_latency/params/macs`,
    `{runtime}_{metric}` per runtime (e.g. `onnxruntime_latency_b1_median_ms`, None where a variant lacks it),
    and any other scalar the variant carries.
    """
    variants = list(study.get("variants") or [])
    flags = pareto_flags(variants)
    runtimes = runtime_columns(variants)
    columns = csv_columns(study)
    settings_seeds = study.get("settings", {}).get("seeds")
    order = ranked(variants)
    order += [i for i in range(len(variants)) if not is_ok(variants[i])]
    rows = []
    for rank, i in enumerate(order, start=1):
        v = variants[i]
        ci = v.get("accuracy_ci95") or [None, None]
        accs = v.get("accuracies")
        row = {c: None for c in columns}
        row.update({k: val for k, val in v.items() if k not in _NESTED and not isinstance(val, (dict, list, tuple))})
        row.update(
            rank=rank if is_ok(v) else None,
            accuracy_ci95_low=ci[0] if len(ci) > 0 else None,
            accuracy_ci95_high=ci[1] if len(ci) > 1 else None,
            accuracies=";".join(str(a) for a in accs) if isinstance(accs, (list, tuple)) else accs,
            seeds=len(accs) if isinstance(accs, (list, tuple)) and accs else settings_seeds,
            diagnosis=" ".join(str(s) for s in v.get("diagnosis") or []) or None,
            **{f"pareto_{front}": flags[front][i] for front in FRONTS},
        )
        for runtime, keys in runtimes.items():
            metrics = (v.get("runtimes") or {}).get(runtime) or {}
            for key in keys:
                row[f"{runtime}_{key}"] = metrics.get(key) if isinstance(metrics, dict) else None
        rows.append(row)
    return rows


def csv_columns(study: dict) -> list[str]:
    variants = list(study.get("variants") or [])
    columns = list(BASE_COLUMNS)
    for runtime, keys in runtime_columns(variants).items():
        columns += [f"{runtime}_{key}" for key in keys]
    for v in variants:  # anything else the runner added, so the CSV never drops a number
        for k, val in v.items():
            if k not in _NESTED and k not in columns and k not in TAIL_COLUMNS and not isinstance(val, (dict, list)):
                columns.append(k)
    return columns + TAIL_COLUMNS


def to_csv(study: dict, rows: list[dict] | None = None) -> str:
    rows = results_table(study) if rows is None else rows
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns(study), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


# ---- display ------------------------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ",.2f", suffix: str = "") -> str:
    x = number(value)
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def human(value: Any) -> str:
    """11180160 -> "11.18 M"; 387466 -> "387.47 K"; 950 -> "950"."""
    x = number(value)
    if x is None:
        return "n/a"
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= factor:
            return f"{x / factor:.2f} {unit}"
    return f"{x:g}"


def percent(value: Any) -> str:
    x = number(value)
    return "n/a" if x is None else f"{100 * x:.2f}"


def accuracy_cell(row: dict) -> str:
    seeds = number(row.get("seeds")) or 1
    if seeds > 1 and number(row.get("accuracy_std")) is not None:
        mean = row.get("accuracy_mean") if number(row.get("accuracy_mean")) is not None else row.get("accuracy")
        return f"{percent(mean)} ± {percent(row['accuracy_std'])} (n={seeds:g})"
    text = percent(row.get("accuracy"))
    if number(row.get("accuracy_ci95_low")) is not None and number(row.get("accuracy_ci95_high")) is not None:
        text += f" [{percent(row['accuracy_ci95_low'])}, {percent(row['accuracy_ci95_high'])}]"
    return text


def ms(value: Any) -> str:
    """Milliseconds rounded for reading: 123 ms, 12.3 ms, 0.41 ms, 0.0523 ms."""
    x = number(value)
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3g}"


def latency_cell(median: Any, p95: Any) -> str:
    return "n/a" if number(median) is None else f"{ms(median)} ({ms(p95)})"


def kib(value: Any) -> str:
    x = number(value)
    return "n/a" if x is None else f"{x / 2**10:,.1f}"


def mib(value: Any) -> str:
    x = number(value)
    return "n/a" if x is None else f"{x / 2**20:,.1f}"


@dataclass
class Column:
    header: str  # the full header (Markdown, and HTML when the column has no group)
    cell: Callable[[dict], str]
    numeric: bool = True
    group: str = ""  # HTML: columns sharing a group sit under one spanning header cell ...
    short: str = ""  # ... and show this shorter header below it


def runtime_order(names: Sequence[str]) -> list[str]:
    """ONNX Runtime first, then its other flavours, then the rest in the given order."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (n != "onnxruntime", not n.startswith("onnxruntime"), names.index(n)))


def display_columns(study: dict) -> list[Column]:
    """The ranked table's columns, with unit, batch size, precision, device and runtime in the headers."""
    settings, env = study.get("settings") or {}, study.get("environment") or {}
    tag = ", ".join(str(x) for x in (settings.get("precision"), env.get("device")) if x)
    primary = ", ".join(str(x) for x in (primary_runtime(study), settings.get("precision"), env.get("device")) if x)
    tag, rt_tag = (f" [{tag}]" if tag else ""), (f" [{primary}]" if primary else "")
    lat_bs, tp_bs = settings.get("latency_batch_size", 1), settings.get("throughput_batch_size")
    rows = [r for r in results_table(study) if r["rank"] is not None]
    kinds = []
    if any((number(r.get("seeds")) or 1) > 1 and number(r.get("accuracy_std")) is not None for r in rows):
        kinds.append("mean ± std over n seeds")
    if any(number(r.get("accuracy_ci95_low")) is not None for r in rows):
        kinds.append("[95% CI]")
    acc_header = "Accuracy %" + (f" ({' or '.join(kinds)})" if kinds else "")
    star = {True: "★", False: ""}
    runtimes = runtime_columns(study.get("variants") or [])
    seed_note = " (seed 0)" if (settings.get("seeds") or 1) > 1 else ""  # runtimes measure seed 0's model
    columns = [
        Column("Rank", lambda r: str(r["rank"])),
        Column("Variant", lambda r: str(r["name"]), numeric=False),
        Column(acc_header, accuracy_cell),
    ]
    for name in runtime_order(list(runtimes)):  # ONNX Runtime first: what a deployment runs
        group = f"{name}{tag}"
        columns.append(Column(
            f"{name} latency ms, batch {lat_bs}, median (p95){tag}",
            lambda r, n=name: latency_cell(r.get(f"{n}_latency_b1_median_ms"), r.get(f"{n}_latency_b1_p95_ms")),
            group=group, short=f"latency ms, batch {lat_bs}, median (p95)"))
        if "throughput_images_per_s" in runtimes[name]:
            columns.append(Column(
                f"{name} throughput images/s, batch {tp_bs if tp_bs is not None else 'n/a'}{tag}",
                lambda r, n=name: fmt(r.get(f"{n}_throughput_images_per_s"), ",.0f"),
                group=group, short=f"images/s, batch {tp_bs if tp_bs is not None else 'n/a'}"))
        columns.append(Column(f"{name} accuracy %{seed_note}", lambda r, n=name: percent(r.get(f"{n}_accuracy")),
                              group=group, short=f"accuracy %{seed_note}"))
    if not runtimes:  # an older study without per-runtime figures: the headline ones
        columns += [
            Column(f"Latency ms, batch {lat_bs}, median (p95){rt_tag}",
                   lambda r: latency_cell(r.get("latency_b1_median_ms"), r.get("latency_b1_p95_ms"))),
            Column(f"Throughput images/s, batch {tp_bs if tp_bs is not None else 'n/a'}{rt_tag}",
                   lambda r: fmt(r.get("throughput_images_per_s"), ",.0f")),
        ]
    lat_front = f"Pareto: latency ({primary_runtime(study)})" if primary_runtime(study) else "Pareto: latency"
    columns += [
        Column("Params", lambda r: human(r.get("params"))),
        Column("MACs / image", lambda r: human(r.get("macs"))),
        Column("Weights KiB (fp32)", lambda r: kib(r.get("weight_bytes_fp32"))),
        Column("File KiB", lambda r: kib(r.get("file_bytes"))),
        Column("Peak memory MiB", lambda r: mib(r.get("peak_memory_bytes"))),
        Column("Train time s", lambda r: fmt(r.get("train_time_s"), ",.1f")),
        Column(lat_front, lambda r: star[bool(r.get("pareto_latency"))], numeric=False),
        Column("Pareto: params", lambda r: star[bool(r.get("pareto_params"))], numeric=False),
        Column("Pareto: MACs", lambda r: star[bool(r.get("pareto_macs"))], numeric=False),
    ]
    return columns


def primary_runtime(study: dict) -> str | None:
    """The runtime of the top-level latency figures: `settings["runtime"]` if given, else the runtime whose
    batch-1 median equals the top-level one in every ok variant that has both, else None (not stated)."""
    settings = study.get("settings") or {}
    if settings.get("runtime"):
        return str(settings["runtime"])
    ok = [v for v in study.get("variants") or [] if is_ok(v) and number(v.get("latency_b1_median_ms")) is not None]
    for name in runtime_columns(ok):
        pairs = [(v["latency_b1_median_ms"], ((v.get("runtimes") or {}).get(name) or {}).get("latency_b1_median_ms"))
                 for v in ok]
        pairs = [(a, b) for a, b in pairs if number(b) is not None]
        if pairs and all(math.isclose(float(a), float(b), rel_tol=1e-9) for a, b in pairs):
            return name
    return None


def summary_lines(study: dict) -> list[tuple[str, str]]:
    """(label, text) lines for the header: dataset, training, measurement, environment, run. Only given values."""
    d, s, e = study.get("dataset") or {}, study.get("settings") or {}, study.get("environment") or {}

    def join(*parts: tuple[str, Any]) -> str:
        kept = [(label, value) for label, value in parts if value not in (None, "")]
        return ", ".join(f"{label}{value}" for label, value in kept)

    shape = d.get("input_shape")
    lines = [
        ("Dataset", join(("", d.get("name")), ("train ", d.get("num_train")), ("val ", d.get("num_val")),
                         ("test ", d.get("num_test")),
                         ("input ", "×".join(map(str, shape)) if isinstance(shape, (list, tuple)) else shape),
                         ("classes ", d.get("num_classes")))),
        ("Settings", join(*((f"{k} ", ", ".join(map(str, v)) if k == "runtimes" else v) for k, v in s.items()
                            if (k == "runtimes" and isinstance(v, list)) or not isinstance(v, (dict, list))
                            and not (k == "runtime" and isinstance(s.get("runtimes"), list))))),
        ("Measurement", join(("device ", e.get("device")), ("precision ", s.get("precision")),
                             ("headline runtime ", primary_runtime(study)),
                             ("latency batch ", s.get("latency_batch_size")),
                             ("throughput batch ", s.get("throughput_batch_size")),
                             ("repeats ", s.get("repeats")), ("warm-up ", s.get("warmup")),
                             ("threads ", e.get("threads", e.get("torch_threads"))))),
        ("Environment", join(("CPU ", e.get("cpu", e.get("cpu_model"))), ("vector ISA ", e.get("cpu_isa")),
                             ("int8 dot product ", (e.get("cpu_int8") or "none (no VNNI/AMX)")
                              if "cpu_isa" in e else None),
                             ("native bf16 ", (e.get("cpu_bf16") or "none") if "cpu_isa" in e else None),
                             ("GPU ", e.get("gpu_name")),
                             ("threads ", e.get("threads", e.get("torch_threads"))), ("python ", e.get("python")),
                             ("torch ", e.get("torch")), ("onnxruntime ", e.get("onnxruntime")))),
        ("Run", join(("started ", study.get("started")), ("finished ", study.get("finished")),
                     ("wall time ", fmt(study.get("wall_time_s"), ",.1f", " s")
                      if number(study.get("wall_time_s")) is not None else None))),
    ]
    return [(label, text) for label, text in lines if text]


def legend_line(study: dict) -> str:
    s, e = study.get("settings") or {}, study.get("environment") or {}
    runtime = primary_runtime(study)
    parts = [
        "Accuracy: top-1 on the test split" + (f" (n={_test_total(study)})" if _test_total(study) else "") + ", in %.",
        f"Latency: wall-clock ms per batch of {s.get('latency_batch_size', 1)} image(s), median (p95)"
        + (f" over {s['repeats']} repeats" if s.get("repeats") is not None else "")
        + (f" after {s['warmup']} warm-up runs" if s.get("warmup") is not None else "") + ".",
        f"Throughput: images/s at batch {s.get('throughput_batch_size', 'n/a')}.",
        "Measured on " + ", ".join(x for x in (
            f"device {e['device']}" if e.get("device") else "",
            f"precision {s['precision']}" if s.get("precision") else "",
            f"{e.get('threads', e.get('torch_threads'))} threads" if e.get("threads", e.get("torch_threads")) else "",
            f"runtime {runtime}" if runtime else "runtime as recorded by the study",
        ) if x) + "; per-runtime columns name their runtime.",
        "MACs: multiply-accumulates for one image, forward pass. Weights: fp32 parameters and buffers in KiB.",
        "Peak memory: as recorded by the study, in MiB (n/a = not measured).",
        "★ = Pareto-optimal: no other variant is at least as accurate and at least as cheap on that axis.",
    ]
    return " ".join(parts)


def _test_total(study: dict) -> Any:
    totals = {v.get("test_total") for v in study.get("variants") or [] if is_ok(v) and v.get("test_total")}
    return totals.pop() if len(totals) == 1 else None


def failed_variants(study: dict) -> list[dict]:
    return [v for v in study.get("variants") or [] if not is_ok(v)]


def diagnoses(study: dict) -> list[tuple[str, list[str]]]:
    return [(str(v.get("name")), [str(s) for s in v.get("diagnosis") or []])
            for v in study.get("variants") or [] if v.get("diagnosis")]
