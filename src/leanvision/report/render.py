"""The study as one self-contained HTML page and as Markdown: same sections, same cells, every string escaped."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from .lead import lead
from .tables import (
    Column,
    diagnoses,
    display_columns,
    failed_variants,
    legend_line,
    summary_lines,
)

PLOT_CAPTIONS = {
    "accuracy_vs_latency": "Test accuracy vs batch-1 latency, one panel per measured runtime (ONNX Runtime first, "
                           "shared axes); red step line = that runtime's Pareto front, bars = 95% CI, gold ring = the "
                           "model to deploy.",
    "accuracy_vs_params": "Test accuracy vs parameter count; red step line = Pareto front.",
    "accuracy_vs_macs": "Test accuracy vs MACs per image; red step line = Pareto front.",
    "training_curves": "Validation accuracy and training loss per epoch, one line per successful variant.",
}
WIDE_PLOTS = {"accuracy_vs_latency", "training_curves"}  # full page width; the others two to a row
DETAIL_HEADERS = ["Variant", "Model", "Base", "Description", "Epochs", "Test images", "Run dir"]
DETAIL_KEYS = ["name", "model", "base", "description", "epochs", "test_total", "run_dir"]
FAILED_HEADERS = ["Variant", "Model", "Status", "Error", "Run dir"]
FAILED_KEYS = ["name", "model", "status", "error", "run_dir"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:1.5rem auto;
max-width:1400px;padding:0 1rem;color:#1f2328;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.3rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;font-size:.92rem}
dl.summary dt{font-weight:600;color:#57606a}dl.summary dd{margin:0}
.legend{font-size:.85rem;color:#57606a}.scroll{overflow-x:auto}
.answer{border:2px solid #1a7f37;border-radius:8px;background:#f0fff4;padding:.6rem 1.1rem;margin:1rem 0 1.2rem}
.answer h2{margin:.2rem 0 .4rem;border:0;font-size:1.15rem;color:#1a7f37}
.answer .headline{font-size:1.3rem;margin:.2rem 0 .5rem}
.answer dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}
.answer dt{font-weight:600;color:#57606a}.answer dd{margin:0}
.tablebox{overflow-x:auto;width:fit-content;max-width:100%;border:1px solid #d0d7de;margin:.5rem 0 .3rem}
.tablebox table{margin:0;border-collapse:separate;border-spacing:0}
.tablebox th,.tablebox td{border:0;border-right:1px solid #d0d7de;border-bottom:1px solid #d0d7de;position:static}
.tablebox th{vertical-align:bottom}.tablebox th.group{text-align:center;border-bottom:1px solid #d0d7de}
.tablebox .s1,.tablebox .s2{position:sticky;z-index:1;background:#fff}
.tablebox th.s1,.tablebox th.s2{background:#f6f8fa;z-index:2}
.tablebox tbody tr:nth-child(even) .s1,.tablebox tbody tr:nth-child(even) .s2{background:#fafbfc}
.tablebox tbody tr:hover .s1,.tablebox tbody tr:hover .s2{background:#eef4ff}
.tablebox .s1{left:0;min-width:3.2rem;max-width:3.2rem;width:3.2rem;box-sizing:border-box}
.tablebox .s2{left:3.2rem;box-shadow:2px 0 0 #afb8c1}
.tablebox.one .s1{width:auto;max-width:none;box-shadow:2px 0 0 #afb8c1}
.hint{font-size:.8rem;color:#57606a;margin:0 0 .5rem}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(600px,1fr));gap:1rem 1.5rem}
.plots figure.wide{grid-column:1/-1}.plots figure img{width:100%}
table{border-collapse:collapse;font-size:.86rem;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0;text-align:left;font-weight:600;cursor:default}
tbody tr:nth-child(even){background:#fafbfc}tbody tr:hover{background:#eef4ff}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.star{text-align:center;color:#cf222e}tr.front td:first-child{border-left:3px solid #cf222e}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{font-size:.85rem;color:#57606a}.error{color:#cf222e;font-family:ui-monospace,monospace}
ul li{margin:.2rem 0}.muted{color:#57606a}
"""


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _e(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _html_table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None,
                row_classes: list[str] | None = None) -> str:
    """`rows` are already-escaped cell strings."""
    classes = classes or [""] * len(headers)
    head = "".join(f'<th class="{c}">{_e(h)}</th>' for h, c in zip(headers, classes))
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="{c}">{cell}</td>' for cell, c in zip(row, classes)) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def results_table_html(columns: list[Column], cells: list[list[str]], classes: list[str],
                       row_classes: list[str] | None = None) -> str:
    """The wide results table in its own horizontally scrolling box (the page never scrolls sideways): rank and
    variant stay in view (sticky), grouped runtime columns sit under one spanning header. `cells` are escaped."""
    grouped = any(c.group for c in columns)
    sticky = ["s1", "s2"] + [""] * (len(columns) - 2)
    top, sub, i = [], [], 0
    while i < len(columns):
        c = columns[i]
        if not c.group:
            span = ' rowspan="2"' if grouped else ""
            top.append(f'<th class="{classes[i]} {sticky[i]}"{span}>{_e(c.header)}</th>')
            i += 1
            continue
        j = i
        while j < len(columns) and columns[j].group == c.group:
            sub.append(f'<th class="{classes[j]}" title="{_e(columns[j].header)}">{_e(columns[j].short)}</th>')
            j += 1
        top.append(f'<th class="group" colspan="{j - i}">{_e(c.group)}</th>')
        i = j
    head = f"<tr>{''.join(top)}</tr>" + (f"<tr>{''.join(sub)}</tr>" if sub else "")
    body = []
    for r, row in enumerate(cells):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="{c} {s}">{cell}</td>'
                                           for cell, c, s in zip(row, classes, sticky)) + "</tr>")
    return (f'<div class="tablebox" id="results-table"><table><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
            "</table></div>")


def answer_html(study: dict) -> str:
    """The block the page leads with: which model to deploy, on which runtime, its numbers and its cost."""
    answer = lead(study)
    if answer is None:
        return ('<section class="answer" id="answer"><h2>Answer</h2><p class="headline">No model to recommend: no '
                "variant that learned has a test accuracy and a measured latency.</p></section>")
    where = f" ({_e(answer['where'])})" if answer["where"] else ""
    return (f'<section class="answer" id="answer"><h2>Answer</h2><p class="headline">Deploy <strong>'
            f"{_e(answer['variant'])}</strong> on <strong>{_e(answer['runtime'])}</strong>{where}.</p><dl>"
            + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in answer["lines"]) + "</dl></section>")


def answer_markdown(study: dict) -> list[str]:
    answer = lead(study)
    if answer is None:
        return ["**Answer:** no model to recommend: no variant that learned has a test accuracy and a measured "
                "latency.", ""]
    where = f" ({_m(answer['where'])})" if answer["where"] else ""
    return [f"**Answer: deploy {_m(answer['variant'])} on {_m(answer['runtime'])}**{where}.", "",
            *(f"- **{_m(k)}:** {_m(v)}" for k, v in answer["lines"]), ""]


def render_html(study: dict, rows: list[dict], pngs: dict[str, bytes]) -> str:
    """One self-contained page: inline CSS, plots as base64 data URIs, no scripts, fonts or links to load."""
    title = study.get("title") or "leanvision study"
    columns = display_columns(study)
    ok_rows = [r for r in rows if r.get("rank") is not None]
    classes = ["star" if c.header.startswith("Pareto") else "num" if c.numeric else "" for c in columns]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        answer_html(study),
        '<dl class="summary">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in summary_lines(study)),
        "</dl>",
        "<h2>Results</h2>",
        f'<p class="legend">{_e(legend_line(study))}</p>',
    ]
    if ok_rows:
        cells = [[_e(c.cell(r)) for c in columns] for r in ok_rows]
        fronts = ["front" if r.get("pareto_latency") else "" for r in ok_rows]
        out.append(results_table_html(columns, cells, classes, fronts))
        out.append('<p class="hint">Wide table: scroll it sideways; rank and variant stay in view. '
                   "Every column is also in results.csv.</p>")
    else:
        out.append('<p class="muted">No variant finished successfully.</p>')
    out.append("<h2>Findings</h2>")
    findings = [str(f) for f in study.get("findings") or []]
    out.append("<ul>" + "".join(f"<li>{_e(f)}</li>" for f in findings) + "</ul>" if findings
               else '<p class="muted">The study recorded no findings.</p>')
    diag = diagnoses(study)
    if diag:
        out.append("<h3>Diagnosis per variant</h3><ul>")
        out += [f"<li><strong>{_e(name)}</strong>: {_e(' '.join(sentences))}</li>" for name, sentences in diag]
        out.append("</ul>")
    out.append('<h2>Plots</h2><div class="plots">')
    for name, png in pngs.items():
        data = base64.b64encode(png).decode("ascii")
        wide = ' class="wide"' if name in WIDE_PLOTS else ""
        out.append(f'<figure{wide}><img alt="{_e(name)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{_e(PLOT_CAPTIONS.get(name, name))}</figcaption></figure>")
    out.append("</div>")
    out.append("<h2>Failed variants</h2>")
    failed = failed_variants(study)
    if failed:
        cells = [[_e(v.get(k)) if k != "error" else f'<span class="error">{_e(v.get(k))}</span>' for k in FAILED_KEYS]
                 for v in failed]
        out.append(_html_table(FAILED_HEADERS, cells))
    else:
        out.append('<p class="muted">None: every variant finished.</p>')
    out.append("<h2>Variants</h2>")
    out.append(_html_table(DETAIL_HEADERS, [[_e(v.get(k)) for k in DETAIL_KEYS] for v in study.get("variants") or []]))
    out += _html_key_values("Dataset", study.get("dataset") or {})
    out += _html_key_values("Settings", study.get("settings") or {})
    out += _html_key_values("Environment", study.get("environment") or {})
    out.append("</body></html>\n")
    return "\n".join(out)


def _html_key_values(title: str, mapping: dict) -> list[str]:
    if not mapping:
        return []
    notes = mapping.get("notes") if isinstance(mapping.get("notes"), list) else None
    rows = [[_e(k), _e(v)] for k, v in mapping.items() if not (k == "notes" and notes is not None)]
    out = [f"<h2>{_e(title)}</h2>", _html_table(["Key", "Value"], rows)]
    if notes:
        out.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return out


# ---- Markdown -----------------------------------------------------------------------------------------------------


def _m(value: Any) -> str:
    """Escape for a Markdown table cell or line: plain text (`8x8 -> 28x28` stays as typed), `<` backslash-escaped
    so no raw HTML tag can form, pipes escaped, one line."""
    text = _text(value).replace("\\", "\\\\").replace("<", "\\<").replace("|", "\\|")
    return " ".join(text.split())


def _md_table(headers: list[str], rows: list[list[str]], numeric: list[bool] | None = None) -> list[str]:
    numeric = numeric or [False] * len(headers)
    return [
        "| " + " | ".join(_m(h) for h in headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
        *("| " + " | ".join(_m(c) for c in row) + " |" for row in rows),
        "",
    ]


def render_markdown(study: dict, rows: list[dict], plot_paths: dict[str, str]) -> str:
    """The same report in Markdown; plots are referenced by relative path (e.g. `plots/accuracy_vs_latency.png`)."""
    title = study.get("title") or "leanvision study"
    columns = display_columns(study)
    ok_rows = [r for r in rows if r.get("rank") is not None]
    out = [f"# {_m(title)}", "", *answer_markdown(study)]
    out += [f"- **{_m(k)}:** {_m(v)}" for k, v in summary_lines(study)]
    out += ["", "## Results", "", _m(legend_line(study)), ""]
    if ok_rows:
        out += _md_table([c.header for c in columns], [[c.cell(r) for c in columns] for r in ok_rows],
                         [c.numeric for c in columns])
    else:
        out += ["No variant finished successfully.", ""]
    out += ["## Findings", ""]
    findings = [str(f) for f in study.get("findings") or []]
    out += [f"- {_m(f)}" for f in findings] or ["The study recorded no findings."]
    diag = diagnoses(study)
    if diag:
        out += ["", "### Diagnosis per variant", ""]
        out += [f"- **{_m(name)}**: {_m(' '.join(sentences))}" for name, sentences in diag]
    out += ["", "## Plots", ""]
    for name, rel in plot_paths.items():
        out += [f"![{_m(PLOT_CAPTIONS.get(name, name))}]({rel})", "", f"*{_m(PLOT_CAPTIONS.get(name, name))}*", ""]
    out += ["## Failed variants", ""]
    failed = failed_variants(study)
    out += _md_table(FAILED_HEADERS, [[v.get(k) for k in FAILED_KEYS] for v in failed]) if failed else [
        "None: every variant finished.", ""]
    out += ["## Variants", ""]
    out += _md_table(DETAIL_HEADERS, [[v.get(k) for k in DETAIL_KEYS] for v in study.get("variants") or []])
    for section in ("dataset", "settings", "environment"):
        mapping = study.get(section) or {}
        if not mapping:
            continue
        notes = mapping.get("notes") if isinstance(mapping.get("notes"), list) else None
        out += [f"## {section.capitalize()}", ""]
        items = [[k, v] for k, v in mapping.items() if not (k == "notes" and notes is not None)]
        out += _md_table(["Key", "Value"], items)
        if notes:
            out += [f"- {_m(n)}" for n in notes] + [""]
    return "\n".join(out).rstrip() + "\n"
