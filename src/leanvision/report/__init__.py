"""Render a finished `leanvision study` as HTML, Markdown, JSON, CSV and PNG plots.

`write_report(study, out_dir)` writes, each file atomically:

- `report.html`: one self-contained page (inline CSS, plots as base64 data URIs, no scripts or network) that leads
  with the answer (`lead.py`: the model to deploy, its runtime, numbers and cost against the most accurate variant);
  the wide results table scrolls in its own box with rank and variant sticky;
- `report.md`: the same content in Markdown, pointing at `plots/*.png`;
- `results.json`: the study as given plus `"pareto": {"latency", "params", "macs"}` flags on each variant;
- `results.csv`: one flat row per variant (ok ones ranked first, failed ones after);
- `plots/accuracy_vs_latency.png` (one panel per measured runtime, ONNX Runtime first), `plots/accuracy_vs_params.png`,
  `plots/accuracy_vs_macs.png`, `plots/training_curves.png`.

Every printed number comes from the `study` dict; missing values show as "n/a", never as a guess.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ..io import atomic_write_bytes, atomic_write_text, write_json
from .plots import PLOT_NAMES, render_plots
from .render import render_html, render_markdown
from .tables import FRONTS, pareto_flags, results_table, to_csv

__all__ = ["write_report", "pareto_flags", "results_table", "PLOT_NAMES"]


def write_report(study: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the report files into `out_dir` (created if needed) and return their paths.

    Keys of the result: "html", "md", "json", "csv", and one per plot ("accuracy_vs_latency", "accuracy_vs_params",
    "accuracy_vs_macs", "training_curves"). `study` is not modified.

    Example: `write_report(study, "studies/digits")["html"]` -> `Path("studies/digits/report.html")`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = results_table(study)
    pngs = render_plots(study)
    paths: dict[str, Path] = {}
    for name, png in pngs.items():
        paths[name] = out_dir / "plots" / f"{name}.png"
        atomic_write_bytes(paths[name], png)
    paths["json"] = out_dir / "results.json"
    write_json(paths["json"], with_pareto(study))
    paths["csv"] = out_dir / "results.csv"
    atomic_write_text(paths["csv"], to_csv(study, rows))
    paths["md"] = out_dir / "report.md"
    atomic_write_text(paths["md"], render_markdown(study, rows, {name: f"plots/{name}.png" for name in pngs}))
    paths["html"] = out_dir / "report.html"
    atomic_write_text(paths["html"], render_html(study, rows, pngs))
    return paths


def with_pareto(study: dict) -> dict:
    """A deep copy of `study` whose variants each carry `"pareto": {"latency": bool, "params": bool, "macs": bool}`."""
    result = copy.deepcopy(study)
    variants = result.get("variants") or []
    flags = pareto_flags(variants)
    for i, variant in enumerate(variants):
        variant["pareto"] = {front: flags[front][i] for front in FRONTS}
    return result
