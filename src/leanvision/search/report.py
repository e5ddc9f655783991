"""The search's outputs: results.json (settings, machine, every trial, the re-measured Pareto set, hypervolume over
time), results.csv (one row per trial) and report.md (the answer first, then the front and every trial)."""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
from pathlib import Path
from typing import Any

from ..report.lead import RULE, choose, cost_line
from ..report.render import CSS
from . import deps

UNITS = {"accuracy": "val accuracy", "latency": "ms (batch 1)", "throughput": "img/s (batch 256)", "size": "kB",
         "macs": "MACs"}


def hypervolume_2d(points: list[tuple[float, float]], reference_cost: float) -> float:
    """Area dominated by (accuracy to maximize, cost to minimize) points above accuracy 0 and below
    `reference_cost`."""
    pts = sorted((c, a) for a, c in points if c < reference_cost)
    area, best = 0.0, 0.0
    for i, (cost, acc) in enumerate(pts):
        best = max(best, acc)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else reference_cost
        area += best * (nxt - cost)
    return area


def hypervolume_history(trials: list[dict[str, Any]], reference_cost: float | None = None,
                        second: str = "latency") -> list[dict[str, float]]:
    """Hypervolume of the feasible completed trials (accuracy x the second objective) after each completion, by
    elapsed time. A second objective to maximize (throughput) counts as its inverse (time per image)."""
    done = sorted((t for t in trials if t["state"] == "COMPLETE" and t.get("feasible") and len(t["values"]) >= 2),
                  key=lambda t: t["completed_at"])
    if not done:
        return []
    invert = second == "throughput"
    done = [{**t, "values": [t["values"][0], 1.0 / t["values"][1] if invert else t["values"][1]]} for t in done]
    ref = reference_cost if reference_cost is not None else 1.1 * max(t["values"][1] for t in done)
    start = min(t["started_at"] for t in trials if t.get("started_at") is not None)
    history, points = [], []
    for t in done:
        points.append((t["values"][0], t["values"][1]))
        history.append({"elapsed_s": t["completed_at"] - start, "trials": len(points),
                        "hypervolume": hypervolume_2d(points, ref), "reference_cost": ref})
    return history


def trial_records(trials: list[Any], objectives: tuple[str, ...]) -> list[dict[str, Any]]:
    records = []
    for t in trials:
        a = t.user_attrs
        records.append({
            "number": t.number, "state": t.state.name, "values": list(t.values) if t.values else None,
            "feasible": all(c <= 0 for c in a.get("constraints", [0.0])) if t.values else None,
            "params": t.params, "val_accuracy": a.get("val_accuracy"), "latency_ms": a.get("latency_ms"),
            "size_kb": a.get("size_kb"), "macs": a.get("macs"), "num_params": a.get("params"),
            "throughput_images_per_s": a.get("throughput_images_per_s"), "run_dir": a.get("run_dir"),
            "stopped": a.get("stopped"), "error": a.get("error"), "measured": a.get("measured"),
            "worker": a.get("worker"), "wall_s": a.get("wall_s"),
            "started_at": t.datetime_start.timestamp() if t.datetime_start else None,
            "completed_at": t.datetime_complete.timestamp() if t.datetime_complete else None,
            "rungs": {k: v for k, v in a.items() if k.startswith("rung_")},
        })
    return records


def answer(settings: Any, final: list[dict[str, Any]], counts: dict[str, int], threads: int, machine: dict,
           compared: list[dict[str, Any]] | None = None) -> str:
    limits = [f"latency <= {settings.max_latency_ms} ms" if settings.max_latency_ms is not None else None,
              f"size <= {settings.max_size_kb} kB" if settings.max_size_kb is not None else None,
              f"validation accuracy >= {100 * settings.min_accuracy:.2f}%" if settings.min_accuracy is not None
              else None]
    limits = [x for x in limits if x]
    budget = (f"{sum(counts.values())} trials ({counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} "
              f"stopped early, {counts.get('FAIL', 0)} failed)")
    where = (f"{settings.runtime}, batch 1, fp32 input, CPU, {threads} threads, machine {machine.get('id')} "
             f"({machine.get('cpu')})")
    if not final:
        return (f"No trial met {' and '.join(limits) or 'the objectives'} on {settings.dataset} after {budget}. "
                "Relax the constraints or give a larger budget.")
    best = final[0]
    lo, hi = best["test_accuracy_95ci"]
    return (f"{'Under ' + ' and '.join(limits) + ', t' if limits else 'T'}he most accurate model found for "
            f"{settings.dataset} is trial {best['trial']} ({_describe(best)}): {100 * best['test_accuracy']:.2f}% "
            f"test accuracy [{100 * lo:.2f}, {100 * hi:.2f}] (95% Wilson, {best['test_total']} images), "
            f"{best['latency_ms']:.4f} ms median latency re-measured on {where}, {best['size_kb']:.1f} kB. "
            f"The Pareto set has {len(final)} model(s) ({', '.join(settings.objectives)}), saved as run directories "
            f"in {Path(settings.out) / 'pareto'}; search budget: {budget}. {_versus(settings, best, compared or [])}")


def _versus(settings: Any, best: dict[str, Any], compared: list[dict[str, Any]]) -> str:
    """How the answer compares with the `compare` runs measured with it (within the same limits)."""
    if not compared:
        return "No other models were compared (pass compare=run directories, e.g. registry models)."
    within = [c for c in compared if (settings.max_latency_ms is None or c["latency_ms"] <= settings.max_latency_ms)
              and (settings.max_size_kb is None or c["size_kb"] <= settings.max_size_kb)]
    if not within:
        return f"None of the {len(compared)} compared model(s) meets the same limits."
    rival = max(within, key=lambda c: c["test_accuracy"])
    delta = 100 * (best["test_accuracy"] - rival["test_accuracy"])
    speed = rival["latency_ms"] / best["latency_ms"]
    verdict = "beats" if delta > 0 and speed >= 1 else "does not dominate"
    return (f"It {verdict} the most accurate compared model within the limits, {rival['model']} "
            f"({100 * rival['test_accuracy']:.2f}%, {rival['latency_ms']:.4f} ms, same measurement): "
            f"{delta:+.2f} pp test accuracy at {speed:.2f}x its speed.")


def _val(p: dict[str, Any]) -> float:
    return p["val_accuracy"] if p.get("val_accuracy") is not None else p["test_accuracy"]  # results before val


def _val_low(p: dict[str, Any]) -> float | None:
    if p.get("val_accuracy") is None or not p.get("val_total"):
        return None
    return deps.wilson_interval(round(p["val_accuracy"] * p["val_total"]), p["val_total"])[0]


def _near_chance(p: dict[str, Any]) -> bool:
    return p.get("num_classes") is not None and deps.near_chance(_val(p), p["num_classes"])


def deploy(result: dict[str, Any]) -> dict[str, Any] | None:
    """The report's answer on the re-measured Pareto set, by the study report's rule (`leanvision.report.lead`):
    {"trial", "runtime", "where", "lines": [(label, text)], "reference"}; None when the set is empty. The most
    accurate model is the search's (by validation accuracy, the Pareto set's order), and the rule reads validation
    accuracy too (its 95% Wilson interval on the validation images): the test split only reports, it never chooses."""
    chance = [p["trial"] for p in result["pareto"] if _near_chance(p)]
    final = [p for p in result["pareto"] if p["trial"] not in chance]  # models that did not learn are no answer
    candidates = [{"accuracy": _val(p), "ci_low": _val_low(p), "latency_ms": p["latency_ms"],
                   "size_kb": p.get("size_kb")} for p in final]
    picked = choose(candidates)
    if picked is None:
        return None
    (i, ref), m = picked, result["measurement"]
    p, r = final[i], final[ref]
    runtime = m["runtime"]
    where = f"{m['device']}, {m['input_dtype']} input, {m['threads']} threads, machine {result['machine'].get('id')}"
    lo, hi = p["test_accuracy_95ci"]
    accuracy = (f"{100 * p['test_accuracy']:.2f} % top-1 on the test split ({p['test_total']} images), 95% Wilson "
                f"interval [{100 * lo:.2f}, {100 * hi:.2f}]")
    if p.get("val_accuracy") is not None:
        accuracy += f"; validation {100 * p['val_accuracy']:.2f} %"
    record = next((t for t in result["trials"] if t["number"] == p["trial"]), {})
    throughput = record.get("throughput_images_per_s")
    speed = (f"{p['latency_ms']:.4f} ms median at batch {m['batch_size']} on {runtime}, re-measured with the Pareto "
             f"set ({len(p.get('latency_ms_rounds') or [])} interleaved rounds); "
             + (f"{throughput:,.0f} images/s at batch 256 (measured during the search)" if throughput is not None
                else "throughput not measured (it is measured when throughput is an objective)"))
    size = ", ".join(x for x in (f"{p['size_kb']:.1f} kB" if p.get("size_kb") is not None else None,
                                 f"{p['params']:,} parameters" if p.get("params") is not None else None,
                                 f"{p['macs']:,} MACs per image" if p.get("macs") is not None else None) if x)
    rlo, rhi = r["test_accuracy_95ci"]
    tested = [{**c, "accuracy": q["test_accuracy"]} for c, q in zip(candidates, final)]  # reported on test
    cost = cost_line(tested[i], tested[ref], "size_kb", "model file")
    if i != ref:
        cost += (f" against the most accurate model, trial {r['trial']} ({100 * r['test_accuracy']:.2f} % "
                 f"[{100 * rlo:.2f}, {100 * rhi:.2f}], {r['latency_ms']:.4f} ms)")
    return {"trial": p["trial"], "runtime": runtime, "where": where, "reference": r["trial"], "lines": [
        ("Model", f"{_describe(p)}; run directory {p['run_dir']}"),
        ("Accuracy", accuracy), ("Speed", speed), ("Size", size or "n/a"), ("Cost", cost),
        ("Why", f"{RULE} (most accurate by validation accuracy, as the search ranks them); {len(final)} Pareto "
                "model(s) compared, all timed on one runtime."
                + (f" Left out as near chance (did not learn): trial(s) {', '.join(map(str, chance))}." if chance
                   else "")),
    ]}


def _describe(row: dict[str, Any]) -> str:
    a, c = row.get("arch") or {}, row.get("compress") or {}
    text = (f"{a.get('stages')} stage(s) {a.get('widths')}, {a.get('block')} {a.get('kernel_size')}x"
            f"{a.get('kernel_size')}, {a.get('downsample')}, {'BN' if a.get('batchnorm') else 'no BN'}, "
            f"{a.get('head')}")
    if c.get("prune_ratio"):
        text += f", pruned {c['prune_ratio']:.2f}"
    if c.get("int8"):
        text += ", int8"
    return text


def write_outputs(settings: Any, study: Any, trials: list[Any], final: list[dict[str, Any]], machine: dict,
                  threads: int, wall_s: float, elsewhere: list[int] | None = None,
                  compared: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = Path(settings.out)
    records = trial_records(trials, settings.objectives)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    result = {
        "answer": answer(settings, final, counts, threads, machine, compared or []),
        "study_name": settings.study_name, "storage": _storage_label(settings),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
        "objectives": list(settings.objectives), "directions": [d.name.lower() for d in study.directions],
        "machine": machine, "measurement": {"runtime": settings.runtime, "batch_size": 1, "threads": threads,
                                            "device": "cpu", "input_dtype": "float32", "unit": "ms",
                                            "statistic": "median after warm-up"},
        "counts": counts, "wall_time_s_this_call": wall_s,
        "pareto": final, "compared": compared or [], "pareto_elsewhere": list(elsewhere or []), "trials": records,
        "hypervolume": hypervolume_history(records, second=(list(settings.objectives) + ["latency"])[1]),
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    deps.write_json(out / "results.json", result)
    _write_csv(out / "results.csv", records)
    return write_report(result, out)


def write_report(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """search.png, report.md and report.html from a search's results (the dict of results.json); `result["plot"]`
    is set to the plot's file name (None for a single-objective search). Returns `result`."""
    result["plot"] = _plot(result, out / "search.png")
    (out / "report.md").write_text(_markdown(result))
    (out / "report.html").write_text(_html(result, out / result["plot"] if result["plot"] else None))
    return result


def _plot(result: dict[str, Any], path: Path) -> str | None:
    """search.png: every complete trial (validation accuracy vs the second objective; infeasible ones grey), the
    Pareto trials circled, and the hypervolume over wall time. None for a single-objective search."""
    objectives = result["objectives"]
    done = [t for t in result["trials"] if t["state"] == "COMPLETE" and t["values"]]
    if len(objectives) < 2 or not done:
        return None
    import matplotlib  # lazy: the plotting library loads only when a report is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hv) = plt.subplots(1, 2, figsize=(13, 5.5))
    for feasible, colour, label in ((True, "tab:blue", "feasible trial"), (False, "0.7", "infeasible trial")):
        pts = [t for t in done if bool(t["feasible"]) == feasible]
        if pts:
            ax.scatter([t["values"][1] for t in pts], [100 * t["values"][0] for t in pts], c=colour, s=30,
                       label=label)
    front = {p["trial"] for p in result["pareto"]}
    chosen = [t for t in done if t["number"] in front]
    if chosen:
        ax.scatter([t["values"][1] for t in chosen], [100 * t["values"][0] for t in chosen], facecolors="none",
                   edgecolors="tab:red", s=110, linewidths=1.6, label="Pareto set")
    answer = deploy(result)
    picked = [t for t in done if answer is not None and t["number"] == answer["trial"]]
    if picked:
        ax.scatter([picked[0]["values"][1]], [100 * picked[0]["values"][0]], marker="*", s=320, c="goldenrod",
                   edgecolors="black", linewidths=0.6, zorder=4, label=f"deploy (trial {answer['trial']})")
    timed = objectives[1] in ("latency", "throughput")
    ax.set_xlabel(f"{objectives[1]} ({UNITS[objectives[1]]}" + (f", {result['measurement']['runtime']})" if timed
                                                                 else ")"))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{len(done)} complete trials")
    ax.legend(fontsize=10)
    history = result["hypervolume"]
    if history:
        hv.step([h["elapsed_s"] for h in history], [h["hypervolume"] for h in history], where="post")
    hv.set_xlabel("wall time since the first trial (s)")
    hv.set_ylabel(f"hypervolume (accuracy x {objectives[1]})")
    hv.set_title("hypervolume over time")
    for a in (ax, hv):
        a.xaxis.label.set_size(12)
        a.yaxis.label.set_size(12)
        a.title.set_size(13)
        a.tick_params(labelsize=10.5)
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _storage_label(settings: Any) -> str:
    return deps.redact(settings.storage) if settings.storage else str(Path(settings.out) / "study.journal")


CSV_FIELDS = ("number", "state", "val_accuracy", "latency_ms", "size_kb", "macs", "num_params",
              "throughput_images_per_s", "feasible", "wall_s", "run_dir", "stopped", "error", "params")


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({**r, "params": ";".join(f"{k}={v}" for k, v in r["params"].items())})
    path.write_text(buf.getvalue())


def _fmt(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def _sections(result: dict[str, Any]) -> list[tuple[str, list[str], list[str], list[list[str]]]]:
    """(title, paragraphs, headers, rows) of the report after the answer: the one content of report.md and .html."""
    m = result["measurement"]
    intro = [f"Latency: {m['statistic']}, {m['runtime']}, batch {m['batch_size']}, {m['threads']} threads, machine "
             f"{result['machine'].get('id')}. Selection used validation accuracy only; test accuracy was computed "
             "once, for the Pareto set and the compared models."]
    if result["pareto_elsewhere"]:
        intro.append(f"Pareto trials {', '.join(map(str, result['pareto_elsewhere']))} ran on another machine: their "
                     "run directories are there, so they were not re-measured here (run the search command with the "
                     "same storage there, or copy their directories).")
    rows = []
    for p in result["pareto"]:
        lo, hi = p["test_accuracy_95ci"]
        rows.append([str(p["trial"]), f"{100 * p['test_accuracy']:.2f}", f"[{100 * lo:.2f}, {100 * hi:.2f}]",
                     _fmt(p["val_accuracy"] and 100 * p["val_accuracy"], ".2f"), f"{p['latency_ms']:.4f}",
                     _fmt(p["size_kb"], ".1f"), _fmt(p["macs"], ","), _describe(p), p["run_dir"]])
    sections = [("Pareto set (re-measured together, interleaved)", intro,
                 ["trial", "test acc (%)", "95% CI", "val acc (%)", "latency (ms)", "size (kB)", "MACs", "model",
                  "run dir"], rows)]
    if result["compared"]:
        rows = []
        for c in result["compared"]:
            lo, hi = c["test_accuracy_95ci"]
            rows.append([str(c["model"]), f"{100 * c['test_accuracy']:.2f}", f"[{100 * lo:.2f}, {100 * hi:.2f}]",
                         f"{c['latency_ms']:.4f}", f"{c['size_kb']:.1f}", c["run_dir"]])
        sections.append(("Compared models (measured with the Pareto set)", [],
                         ["model", "test acc (%)", "95% CI", "latency (ms)", "size (kB)", "run dir"], rows))
    rows = []
    for r in result["trials"]:
        note = r.get("stopped") or r.get("error") or ("infeasible" if r.get("feasible") is False else "")
        rows.append([str(r["number"]), r["state"], _fmt(r["val_accuracy"] and 100 * r["val_accuracy"], ".2f"),
                     _fmt(r["latency_ms"], ".4f"), _fmt(r["size_kb"], ".1f"), _fmt(r["macs"], ","), str(note)])
    text = []
    if result["hypervolume"]:
        h = result["hypervolume"][-1]
        text.append(f"Hypervolume (accuracy x {result['objectives'][1]}, reference {h['reference_cost']:.4g}): "
                    f"{h['hypervolume']:.4g} after {h['trials']} complete trials, {h['elapsed_s']:.0f} s.")
    sections.append(("Every trial", text, ["#", "state", "val acc (%)", "latency (ms)", "size (kB)", "MACs", "note"],
                     rows))
    return sections


def _markdown(result: dict[str, Any]) -> str:
    answer = deploy(result)
    lines = [f"# Search: {result['study_name']}", ""]
    if answer is None:
        lines += [f"**Answer: no model to deploy** ({_no_answer(result)}).", ""]
    else:
        lines += [f"**Answer: deploy trial {answer['trial']} on {answer['runtime']}** ({answer['where']}).", ""]
        lines += [f"- **{k}:** {v.replace('|', '/')}" for k, v in answer["lines"]] + [""]
    lines += [result["answer"]]
    if result.get("plot"):
        lines += ["", f"![trials, Pareto set and hypervolume over time]({result['plot']})"]
    for title, paragraphs, headers, rows in _sections(result):
        lines += ["", f"## {title}", ""]
        for text in paragraphs:
            lines += [text, ""]
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _html(result: dict[str, Any], plot: Path | None) -> str:
    """report.html: the same content as report.md, self-contained (the plot embedded), every string escaped."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(result['study_name'])}</title>"
             f"<style>{CSS}</style></head><body><h1>Search: {e(result['study_name'])}</h1>",
             _answer_html(deploy(result), _no_answer(result)), f"<p>{e(result['answer'])}</p>"]
    if plot is not None and plot.is_file():
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f"<figure><img alt='trials, Pareto set and hypervolume over time' "
                     f"src='data:image/png;base64,{data}'><figcaption>Every complete trial (validation accuracy, "
                     "latency as timed during the search), the Pareto set circled, the model to deploy starred; "
                     "hypervolume over wall time.</figcaption></figure>")
    for title, paragraphs, headers, rows in _sections(result):
        parts.append(f"<h2>{e(title)}</h2>" + "".join(f"<p>{e(t)}</p>" for t in paragraphs))
        sticky = ["s1"] + [""] * (len(headers) - 1)  # the first column stays in view when the box scrolls
        head = "".join(f"<th class='{s}'>{e(h)}</th>" for h, s in zip(headers, sticky))
        body = "".join("<tr>" + "".join(f"<td class='{s}'>{e(c)}</td>" for c, s in zip(row, sticky)) + "</tr>"
                       for row in rows)
        parts.append(f"<div class='tablebox one'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                     "</div>")
    return "".join(parts) + "</body></html>\n"


def _no_answer(result: dict[str, Any]) -> str:
    """Why there is no model to deploy."""
    return ("every Pareto model is near chance: none learned; give trials a longer schedule or a larger budget"
            if result["pareto"] else "the Pareto set is empty")


def _answer_html(answer: dict[str, Any] | None, why: str = "") -> str:
    """The block the page leads with (the same as report.md's), every string escaped."""
    e = html.escape
    if answer is None:
        return ("<section class='answer' id='answer'><h2>Answer</h2><p class='headline'>No model to deploy: "
                f"{e(why)}.</p></section>")
    return (f"<section class='answer' id='answer'><h2>Answer</h2><p class='headline'>Deploy <strong>trial "
            f"{answer['trial']}</strong> on <strong>{e(answer['runtime'])}</strong> ({e(answer['where'])}).</p><dl>"
            + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in answer["lines"]) + "</dl></section>")
