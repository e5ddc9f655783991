"""The answer a report leads with: which model to deploy, on which runtime, what it measured and what it costs.

The rule, stated in the report itself: among the variants that learned, take the most accurate one (the reference)
and every variant whose test accuracy lies inside the reference's 95% interval (indistinguishable on this test set);
deploy the one with the lowest batch-1 latency on its fastest measured runtime (ties: ONNX Runtime, then the more
accurate). Every number comes from the study dict; nothing is estimated here.

The search report uses `choose` and `cost_line` on its own Pareto set, so both reports say it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .tables import accuracy_of, mib, ms, number, primary_runtime, ranked, results_table, runtime_order

RULE = ("the fastest model (batch-1 latency on its fastest measured runtime) whose test accuracy lies inside the 95% "
        "interval of the most accurate model")


def measured_runtimes(variant: dict, study: dict | None = None) -> dict[str, dict]:
    """Runtime -> metrics with a batch-1 median latency. A variant without a `runtimes` dict but with top-level
    latency counts as measured on the study's headline runtime (named "headline" when the study does not say)."""
    found = {str(name): metrics for name, metrics in (variant.get("runtimes") or {}).items()
             if isinstance(metrics, dict) and number(metrics.get("latency_b1_median_ms")) is not None}
    if not found and number(variant.get("latency_b1_median_ms")) is not None:
        name = (primary_runtime(study) if study is not None else None) or "headline"
        found[name] = {k: variant.get(k) for k in ("latency_b1_median_ms", "latency_b1_p95_ms",
                                                   "throughput_images_per_s")}
    return {name: found[name] for name in runtime_order(list(found))}


def fastest_runtime(variant: dict, study: dict | None = None) -> tuple[str, dict] | None:
    """(runtime, metrics) with the lowest batch-1 median latency; ties go to the runtime listed first (ONNX Runtime)."""
    runtimes = measured_runtimes(variant, study)
    if not runtimes:
        return None
    name = min(runtimes, key=lambda n: (float(runtimes[n]["latency_b1_median_ms"]), list(runtimes).index(n)))
    return name, runtimes[name]


def choose(candidates: Sequence[dict]) -> tuple[int, int] | None:
    """(index of the model to deploy, index of the most accurate) among `candidates`, each a dict with "accuracy",
    optional "ci_low" and "latency_ms" (already on its deploy runtime), listed most accurate first; None if empty."""
    if not candidates:
        return None
    reference = candidates[0]
    floor = number(reference.get("ci_low"))
    floor = number(reference["accuracy"]) if floor is None else floor
    eligible = [i for i, c in enumerate(candidates) if number(c["accuracy"]) >= floor]
    pick = min(eligible, key=lambda i: (float(candidates[i]["latency_ms"]), -float(candidates[i]["accuracy"]), i))
    return pick, 0


def cost_line(chosen: dict, reference: dict, size_key: str, size_text: str) -> str:
    """"-0.30 pp accuracy, 4.10x faster (batch-1 latency), 0.25x the size (file)" (chosen against reference)."""
    if chosen is reference:
        return "it is also the most accurate model: nothing is traded"
    delta = 100 * (float(chosen["accuracy"]) - float(reference["accuracy"]))
    speed = float(reference["latency_ms"]) / float(chosen["latency_ms"])
    parts = [f"{delta:+.2f} pp accuracy",
             f"{speed:.2f}x faster (batch-1 latency)" if speed >= 1 else f"{1 / speed:.2f}x slower (batch-1 latency)"]
    a, b = number(chosen.get(size_key)), number(reference.get(size_key))
    if a is not None and b:
        parts.append(f"{a / b:.2f}x the size ({size_text})")
    return ", ".join(parts)


def _where(metrics: dict) -> str:
    parts = [metrics.get("precision"), metrics.get("device"),
             f"{metrics['threads']} threads" if metrics.get("threads") is not None else None]
    return ", ".join(str(p) for p in parts if p)


def lead(study: dict) -> dict[str, Any] | None:
    """The study's answer: {"headline": str, "lines": [(label, text)], "variant", "runtime", "where", "reference"};
    None when no variant that learned has an accuracy and a measured latency."""
    variants = list(study.get("variants") or [])
    rows = {r["name"]: r for r in results_table(study)}
    candidates, left_out = [], []
    for i in ranked(variants):
        v = variants[i]
        fast, acc = fastest_runtime(v, study), accuracy_of(v)
        if v.get("did_not_learn"):
            left_out.append(str(v.get("name")))
        if v.get("did_not_learn") or fast is None or acc is None:
            continue
        ci = v.get("accuracy_ci95") or []
        candidates.append({"variant": v, "row": rows.get(v.get("name"), {}), "runtime": fast[0],
                           "metrics": fast[1], "accuracy": acc, "ci_low": ci[0] if len(ci) == 2 else None,
                           "latency_ms": fast[1]["latency_b1_median_ms"]})
    picked = choose(candidates)
    if picked is None:
        return None
    chosen, reference = candidates[picked[0]], candidates[picked[1]]
    # sizes compared like for like: the files when both have one, else the fp32 weights
    size_key = "file_bytes" if all(number(c["variant"].get("file_bytes")) for c in (chosen, reference)) \
        else "weight_bytes_fp32"
    for c in (chosen, reference):
        c["size"] = number(c["variant"].get(size_key))
    v, m, runtime = chosen["variant"], chosen["metrics"], chosen["runtime"]
    settings = study.get("settings") or {}
    where = _where(m)
    headline = f"Deploy {v.get('name')} on {runtime}" + (f" ({where})" if where else "") + "."
    acc_text = _accuracy_text(chosen)
    rt_acc = number(m.get("accuracy"))
    if rt_acc is not None:
        seed_note = " (seed 0's model)" if (number(settings.get("seeds")) or 1) > 1 else ""
        acc_text += f"; {100 * rt_acc:.2f} % as run on {runtime}{seed_note}"
    p95 = number(m.get("latency_b1_p95_ms"))
    speed = f"{ms(m['latency_b1_median_ms'])} ms median" + (f" (p95 {ms(p95)} ms)" if p95 is not None else "")
    speed += f" at batch {settings.get('latency_batch_size', 1)}"
    tp = number(m.get("throughput_images_per_s"))
    if tp is not None:
        speed += f"; {tp:,.0f} images/s at batch {settings.get('throughput_batch_size', 'n/a')}"
    speed += f" (on {runtime})"
    size_parts = [f"{number(v.get('params')):,.0f} parameters" if number(v.get("params")) is not None else None,
                  f"file {_size(v.get('file_bytes'))}" if number(v.get("file_bytes")) is not None else None,
                  f"fp32 weights {_size(v.get('weight_bytes_fp32'))}"
                  if number(v.get("weight_bytes_fp32")) is not None else None]
    ref = reference["variant"]
    ref_text = (f"{ref.get('name')}: {_accuracy_text(reference, short=True)}, {ms(reference['latency_ms'])} ms "
                f"on {reference['runtime']}")
    cost = cost_line(chosen, reference, "size", "file" if size_key == "file_bytes" else "fp32 weights")
    lines = [
        ("Accuracy", acc_text),
        ("Speed", speed),
        ("Size", ", ".join(p for p in size_parts if p) or "n/a"),
        ("Cost", cost if chosen is reference else f"{cost} against the most accurate variant ({ref_text})"),
        ("Why", f"{RULE}; {len(candidates)} variant(s) compared, each on its fastest measured runtime"
                f" ({', '.join(runtime_order([c['runtime'] for c in candidates]))})"
                + (f"; left out as near chance (did not learn): {', '.join(left_out)}" if left_out else "") + "."),
    ]
    return {"headline": headline, "lines": lines, "variant": v.get("name"), "runtime": runtime, "where": where,
            "reference": ref.get("name")}


def _accuracy_text(candidate: dict, short: bool = False) -> str:
    """"95.00 % top-1 on the test split (359 images), 95% interval [93.00, 96.00]" or, over seeds,
    "95.00 ± 1.00 % (mean ± std over 3 seeds), 95% interval [...]" (the interval where the study gives one)."""
    v, row = candidate["variant"], candidate["row"]
    seeds = number(row.get("seeds")) or 1
    if seeds > 1 and number(v.get("accuracy_std")) is not None:
        text = f"{100 * candidate['accuracy']:.2f} ± {100 * float(v['accuracy_std']):.2f} % (mean ± std over " \
               f"{seeds:g} seeds)"
    else:
        text = f"{100 * candidate['accuracy']:.2f} %"
        if not short:
            text += " top-1 on the test split" + (f" ({v['test_total']} images)" if v.get("test_total") else "")
    ci = v.get("accuracy_ci95") or []
    if len(ci) == 2 and number(ci[0]) is not None and number(ci[1]) is not None:
        interval = f"[{100 * float(ci[0]):.2f}, {100 * float(ci[1]):.2f}]"
        text += f" {interval}" if short else f", 95% interval {interval}"
    return text


def _size(value: Any) -> str:
    x = number(value)
    if x is None:
        return "n/a"
    return f"{mib(x)} MiB" if x >= 2**20 else f"{x / 2**10:,.1f} KiB"
