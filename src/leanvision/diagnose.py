"""Plain-language diagnosis of a study: what each variant bought or cost relative to its base, measured.

Rules (all from numbers in the study, none typed in):
- "faster" means the variant's batch-1 median latency is below its base's by more than the measured spread: the
  smaller of the two p95 - median gaps (a busy machine can blow up one side's tail; a gap larger than the steadier
  side's spread is still real), and at least NOISE_FLOOR of the base's median (variants are timed one after another,
  so drift between their timing windows is noise too); otherwise the difference is "within the measured spread".
- A measured speed-up more than DISTURBED_MACS_FACTOR x the MAC ratio, while the slower side's p95 is over
  DISTURBED_TAIL x its median, is flagged as disturbed timing (re-time with --remeasure), not reported as a gain.
- A variant whose test accuracy is near chance (`health.near_chance`) "did not learn": it is named in the findings
  and kept off the headlines and the Pareto fronts (`did_not_learn: true`).
- Accuracy differences are "within noise" when the two 95% Wilson intervals overlap.
"""

from __future__ import annotations

from typing import Any

from .health import near_chance
from .measure.env import x86_without_int8_dot

NOISE_FLOOR = 0.10  # relative: latency differences under 10% between separately timed variants are not claimed
DISTURBED_MACS_FACTOR = 3.0  # a speed-up this many times the MAC ratio is suspicious ...
DISTURBED_TAIL = 1.5  # ... when the slower side's p95 is over this many times its median (a busy machine)


def _pp(a: float, b: float) -> str:
    return f"{(a - b) * 100:+.2f} pp"


def _fewer_more(base: float, value: float, what: str) -> str:
    """'2.22x fewer MACs' or '4.20x more MACs' (never '0.24x fewer'); 'the same MACs' when equal."""
    if not base or not value:
        return f"n/a {what}"
    if base == value:
        return f"the same {what}"
    return f"{base / value:.2f}x fewer {what}" if value < base else f"{value / base:.2f}x more {what}"


def _overlap(a: dict, b: dict) -> bool:
    (lo1, hi1), (lo2, hi2) = a["accuracy_ci95"], b["accuracy_ci95"]
    return lo1 <= hi2 and lo2 <= hi1


def int8_cpu_reason(cpu: dict | None) -> str | None:
    """Why int8 cannot gain much on this CPU, from `measure.env.cpu_features` as recorded when it was measured; None
    when the CPU has int8 dot-product instructions (or nothing was recorded)."""
    if not x86_without_int8_dot(cpu):
        return None
    return (f"this CPU has no int8 dot-product instructions (no VNNI or AMX; {cpu['cpu_isa']} only): its int8 kernels "
            "take several instructions per multiply-add where VNNI takes one, so int8 gains less here, and at this "
            "model's size the quantize/dequantize steps and layout changes cost the rest (a CPU with VNNI or AMX gains "
            "more)")


def latency_verdict(v: dict, base: dict, runtime: str = "torch") -> tuple[str, float]:
    """('faster' | 'slower' | 'same', base/variant latency ratio) on `runtime`'s batch-1 latency."""
    rv, rb = v["runtimes"].get(runtime), base["runtimes"].get(runtime)
    if not rv or not rb:
        return "unknown", float("nan")
    return spread_verdict(rv["latency_b1_median_ms"], rv["latency_b1_p95_ms"], rb["latency_b1_median_ms"],
                          rb["latency_b1_p95_ms"])


def spread_verdict(median_ms: float, p95_ms: float, base_median_ms: float, base_p95_ms: float) -> tuple[str, float]:
    """('faster' | 'slower' | 'same', base/variant time ratio) of two separately timed medians: a difference within
    the measured spread (the smaller p95 - median gap of the two, at least NOISE_FLOOR of the base's median) is
    'same'. The smaller gap: a busy machine inflates one side's tail, and a gap beyond the steadier side's spread
    (e.g. 0.052 ms vs 0.232 ms) is real even when the other side's p95 is far out."""
    spread = max(min(p95_ms - median_ms, base_p95_ms - base_median_ms), NOISE_FLOOR * base_median_ms)
    delta = base_median_ms - median_ms
    ratio = base_median_ms / median_ms if median_ms else float("nan")
    if abs(delta) <= spread:
        return "same", ratio
    return ("faster" if delta > 0 else "slower"), ratio


def disturbed_timing(v: dict, base: dict, runtime: str = "torch") -> str | None:
    """A sentence when `runtime`'s measured batch-1 gap between `v` and `base` is far beyond their MAC ratio while
    the slower side's timings were spread out (p95 >> median): the timing was disturbed, not the model faster."""
    rv, rb = v["runtimes"].get(runtime), base["runtimes"].get(runtime)
    if not rv or not rb or not v.get("macs") or not base.get("macs"):
        return None
    verdict, ratio = latency_verdict(v, base, runtime)
    if verdict not in ("faster", "slower"):
        return None
    speedup, macs_ratio = (ratio, base["macs"] / v["macs"]) if verdict == "faster" else (1 / ratio,
                                                                                         v["macs"] / base["macs"])
    slow = rb if verdict == "faster" else rv
    tail = slow["latency_b1_p95_ms"] / slow["latency_b1_median_ms"] if slow["latency_b1_median_ms"] else 0.0
    if speedup <= DISTURBED_MACS_FACTOR * max(macs_ratio, 1.0) or tail <= DISTURBED_TAIL:
        return None
    return (f"measured {speedup:.2f}x {verdict} but the MAC ratio is only {macs_ratio:.2f}x and the slower side's p95 "
            f"is {tail:.1f}x its median: the timing was disturbed (busy machine?), not a real gain; re-time with "
            "`leanvision study ... --remeasure` on a quiet machine")


def did_not_learn(v: dict, num_classes: int | None) -> bool:
    """True for an ok variant whose test accuracy is near chance (`health.near_chance`)."""
    return bool(num_classes) and v.get("accuracy") is not None and near_chance(v["accuracy"], num_classes)


def diagnose_variant(v: dict, base: dict, env: dict | None = None) -> list[str]:
    """Sentences on accuracy, size, compute and speed of `v` against `base`, with reasons when known (`env`: the
    study's `measure.environment`, for reasons that depend on the CPU)."""
    out = []
    cpu_reason = int8_cpu_reason(env)
    acc = f"accuracy {_pp(v['accuracy'], base['accuracy'])} vs {base['name']}"
    overlap = _overlap(v, base)
    acc += " (within the 95% intervals: not a measurable difference)" if overlap else " (outside the 95% intervals)"
    out.append(acc + ".")
    quantized = any(r.get("precision") == "int8" for r in v["runtimes"].values())  # int8 run from `optimize`
    same_arch = v["params"] == base["params"] and v["macs"] == base["macs"] and not quantized
    if quantized:
        out.append(f"int8 ONNX model: {v['params']:,} parameters, {v['macs']:,} MACs, {v['file_bytes'] / 1e3:,.1f} kB "
                   f"vs {base['file_bytes'] / 1e3:,.1f} kB on disk; ONNX Runtime only (PyTorch cannot run it); the "
                   "quantize line above says which layers run int8 kernels.")
    elif same_arch and v.get("techniques"):
        out.append(f"Same parameters ({v['params']:,}) and MACs ({v['macs']:,}) as {base['name']}: the compression "
                   "kept the dense shapes (e.g. zeroed weights), so dense runtimes run it at the same speed.")
    elif same_arch:
        out.append(f"Same parameters ({v['params']:,}) and MACs ({v['macs']:,}) as {base['name']}: this technique "
                   "changes training only, so it cannot change inference cost.")
    else:
        out.append(f"{_fewer_more(base['params'], v['params'], 'parameters')} ({v['params']:,} vs {base['params']:,}), "
                   f"{_fewer_more(base['macs'], v['macs'], 'MACs')} ({v['macs']:,} vs {base['macs']:,}).")
    for runtime in v["runtimes"]:
        verdict, ratio = latency_verdict(v, base, runtime)
        lat = v["runtimes"][runtime]["latency_b1_median_ms"]
        blat = base["runtimes"].get(runtime, {}).get("latency_b1_median_ms")
        if verdict == "unknown" or blat is None:
            continue
        text = f"{runtime} batch-1 latency {lat:.3f} ms vs {blat:.3f} ms"
        disturbed = disturbed_timing(v, base, runtime)
        if disturbed:
            out.append(f"{text}: {disturbed}.")
            continue
        if verdict == "faster":
            out.append(f"{text}: {ratio:.2f}x faster.")
        elif verdict == "slower":
            reason = ""
            if quantized and cpu_reason:
                reason = f" Reason: {cpu_reason}."
            elif quantized:
                reason = (" Reason: at this size the quantize/dequantize steps and layout changes cost more than "
                          "the int8 arithmetic saves.")
            elif v["macs"] > base["macs"]:
                reason = " Reason: more MACs than the base."
            elif v["macs"] < base["macs"]:
                reason = (" Reason: fewer MACs but more, smaller layers; at batch 1 the per-layer overhead of the "
                          "runtime outweighs the arithmetic saved.")
            out.append(f"{text}: {1 / ratio:.2f}x SLOWER.{reason}")
        else:
            meant_cheaper = v["params"] < base["params"] or v["macs"] < base["macs"]
            if quantized:
                reason = cpu_reason or ("at batch 1 this small model's time is per-layer overhead, which int8 kernels "
                                        "do not reduce")
                out.append(f"{text}: NOT measurably faster (difference within the measured spread). Reason: {reason}.")
            elif meant_cheaper:
                reason = " more MACs than the base." if v["macs"] >= base["macs"] else (
                    " fewer MACs, but at this size batch-1 time is dominated by per-layer overhead, not arithmetic.")
                out.append(f"{text}: NOT measurably faster (difference within the measured spread). Reason:{reason}")
            elif not same_arch:
                out.append(f"{text}: no measurable difference.")
            else:
                out.append(f"{text}: no measurable difference, as expected for the same architecture.")
        if verdict in ("faster", "slower") and same_arch:
            gap = f"{ratio:.2f}x faster" if verdict == "faster" else f"{1 / ratio:.2f}x slower"
            out[-1] = (f"{text}: the same inference graph as the base, so this gap ({gap}) is run-to-run timing "
                       "noise, not a real difference.")
    return out


def diagnose(study: dict[str, Any]) -> dict[str, Any]:
    """Fill `variant["diagnosis"]` for every ok variant with a base, and `study["findings"]`; returns `study`."""
    ok = {v["name"]: v for v in study["variants"] if v.get("status") == "ok"}
    findings: list[str] = []
    for v in study["variants"]:
        v.setdefault("diagnosis", [])
        base = ok.get(v.get("base") or "")
        if v.get("status") == "ok" and base is not None:
            v["diagnosis"] = [*v.get("technique_steps", []), *diagnose_variant(v, base, study.get("environment"))]
    num_classes = (study.get("dataset") or {}).get("num_classes")
    for v in ok.values():
        v["did_not_learn"] = did_not_learn(v, num_classes)
        if v["did_not_learn"]:
            why = "; ".join(v.get("warnings") or []) or (f"test accuracy {v['accuracy']:.2%} is near chance "
                                                        f"({1 / num_classes:.2%})")
            findings.append(f"{v['name']} did not learn: {why} It is left out of the headlines and Pareto fronts.")
        elif v.get("warnings"):
            findings.append(f"{v['name']}: {'; '.join(v['warnings'])}")
    learned = {name: v for name, v in ok.items() if not v["did_not_learn"]}
    if learned:
        best = max(learned.values(), key=lambda v: v["accuracy"])
        timed = [v for v in learned.values() if "torch" in v["runtimes"]] or list(learned.values())  # not int8 ONNX
        fastest = min(timed, key=lambda v: v["latency_b1_median_ms"])
        findings.append(f"Most accurate: {best['name']} at {best['accuracy']:.2%} test accuracy "
                        f"({best['params']:,} parameters, {best['macs']:,} MACs per image).")
        tied = [o["name"] for o in timed if o is not fastest and latency_verdict(o, fastest)[0] == "same"]
        head = (f"{fastest['name']} at {fastest['latency_b1_median_ms']:.3f} ms median, "
                f"{fastest['accuracy']:.2%} accuracy")
        if tied:
            findings.append(f"Fastest at batch 1 (torch eager, fp32, CPU): no measurable winner: {head} is tied "
                            f"within the measured spread with {', '.join(tied)}.")
        else:
            findings.append(f"Fastest at batch 1 (torch eager, fp32, CPU): {head}.")
    for v in study["variants"]:
        base = ok.get(v.get("base") or "")
        if v.get("status") != "ok" or base is None or not v["name"].startswith("seed-"):
            continue
        verdict, ratio = latency_verdict(v, base)
        if v["params"] == base["params"] and v["macs"] == base["macs"]:
            verdict = "same"  # identical inference graph: a measured gap can only be timing noise
        speed = {"faster": f"{ratio:.2f}x faster", "slower": f"{1 / ratio:.2f}x slower",
                 "same": "no measurable speed change", "unknown": "speed not measured"}[verdict]
        findings.append(f"{v['name']} ({v.get('description', '')}): accuracy {_pp(v['accuracy'], base['accuracy'])}"
                        f"{' (within noise)' if _overlap(v, base) else ''}, parameters {v['params']:,} vs "
                        f"{base['params']:,}, {speed} at batch 1 on this data.")
    failed = [v["name"] for v in study["variants"] if v.get("status") != "ok"]
    if failed:
        findings.append(f"Failed variants (see their errors): {', '.join(failed)}.")
    study["findings"] = findings
    return study
