"""PNG plots of a study (matplotlib Agg, rendered to bytes; nothing here touches the disk or pyplot's global state)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

from ..pareto import pareto_front
from .tables import accuracy_of, is_ok, number, pareto_flags, primary_runtime

DPI = 110
SCATTERS = {  # plot name -> (variant key, Pareto front, x-axis label); latency: one panel per measured runtime
    "accuracy_vs_latency": ("latency_b1_median_ms", "latency", "latency, batch {bs}, median (ms, log scale)"),
    "accuracy_vs_params": ("params", "params", "parameters (log scale)"),
    "accuracy_vs_macs": ("macs", "macs", "MACs per image, forward pass (log scale)"),
}
PLOT_NAMES = [*SCATTERS, "training_curves"]


def render_plots(study: dict) -> dict[str, bytes]:
    """Plot name -> PNG bytes for every name in `PLOT_NAMES` (a plot without data says so instead of failing)."""
    pngs = {name: scatter_png(study, name) for name in SCATTERS}
    pngs["training_curves"] = training_curves_png(study)
    return pngs


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, share: bool = False) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(nrows, ncols, sharex=share, sharey=share)
    return fig, axes


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _context(study: dict) -> str:
    settings, env = study.get("settings") or {}, study.get("environment") or {}
    parts = [(study.get("dataset") or {}).get("name"), env.get("device"), settings.get("precision"),
             primary_runtime(study)]
    return ", ".join(str(p) for p in parts if p)


def _no_data(fig: Any, ax: Any, text: str) -> bytes:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="grey", transform=ax.transAxes)
    ax.set_axis_off()
    return _png(fig)


def _points(study: dict, cost: Callable[[dict], Any], flags: list[bool] | None) -> list[tuple]:
    """(x, accuracy %, ci low %, ci high %, name, on front) of the ok variants that have both numbers; `flags` None
    computes the front here, on these points (variants that did not learn stay off it)."""
    points = []
    for i, v in enumerate(study.get("variants") or []):
        x, acc = number(cost(v)), accuracy_of(v)
        if is_ok(v) and x is not None and acc is not None:
            ci = v.get("accuracy_ci95") or []
            lo, hi = (number(ci[0]), number(ci[1])) if len(ci) == 2 else (None, None)
            points.append([x, 100 * acc, lo and 100 * lo, hi and 100 * hi, str(v.get("name")),
                           bool(flags[i]) if flags is not None else False, bool(v.get("did_not_learn"))])
    if flags is None:
        competing = [i for i, p in enumerate(points) if not p[6]]
        front = pareto_front([{"accuracy": points[i][1], "cost": points[i][0]} for i in competing],
                             {"accuracy": "max", "cost": "min"})
        for j in front:
            points[competing[j]][5] = True
    return [tuple(p[:6]) for p in points]


def _draw(ax: Any, points: list[tuple], log_units: bool, chosen: str | None = None) -> None:
    """One accuracy-vs-cost panel: CI bars, points (front red and labelled bold), the front as a step line, and the
    model the report tells to deploy ringed in gold."""
    for x, y, lo, hi, label, on_front in points:
        color = "tab:red" if on_front else "tab:blue"
        if lo is not None and hi is not None:
            ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="none", ecolor=color,
                        alpha=0.45, capsize=3, linewidth=1.2)
        ax.scatter([x], [y], s=60 if on_front else 40, color=color, zorder=3, edgecolors="white", linewidths=0.6)
        if label == chosen:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="goldenrod", linewidths=2.2, zorder=4,
                       label="deploy (the report's answer)")
        text = ax.annotate(label if len(label) <= 28 else label[:27] + "…", (x, y), xytext=(6, 6),
                           textcoords="offset points", fontsize=11 if on_front else 9.5,
                           color="black" if on_front else "dimgrey", fontweight="bold" if on_front else "normal")
        text.set_clip_on(True)  # a long name near the edge is cut at the axes, not widening the figure
    front_points = sorted((p[0], p[1]) for p in points if p[5])
    if front_points:
        xs, ys = zip(*front_points)
        ax.step(xs, ys, where="post", color="tab:red", linewidth=1.4, alpha=0.8, zorder=2, label="Pareto front")
        ax.scatter([], [], color="tab:blue", s=40, label="other variants")
        ax.legend(loc="lower right", fontsize=10, frameon=False)
    if all(p[0] > 0 for p in points):
        _log_x(ax, units=log_units)
    ax.tick_params(labelsize=10.5)
    ax.grid(True, which="major", alpha=0.3)
    ax.margins(x=0.15, y=0.1)


def _ylabel(points: list[tuple]) -> str:
    return "test accuracy (%)" + (" with 95% CI" if any(p[2] is not None for p in points) else "")


def latency_png(study: dict) -> bytes:
    """Accuracy against batch-1 latency, one panel per measured runtime (ONNX Runtime first), shared axes so the
    runtimes compare at a glance; each panel has its own Pareto front."""
    from .lead import lead, measured_runtimes, runtime_order

    settings = study.get("settings") or {}
    bs = settings.get("latency_batch_size", 1)
    variants = [v for v in study.get("variants") or [] if is_ok(v)]
    names = runtime_order([r for v in variants for r in measured_runtimes(v, study)])
    answer = lead(study)
    n = max(1, len(names))
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    fig, axes = _figure(10.0 if n == 1 else 14.0, 6.2 if n == 1 else 5.6 * nrows + 0.4, ncols=ncols, nrows=nrows,
                        share=True)
    axes = list(getattr(axes, "flat", [axes]))
    context = ", ".join(str(p) for p in ((study.get("dataset") or {}).get("name"), settings.get("precision"))
                        if p)
    fig.suptitle(f"Test accuracy vs latency, batch {bs}, median, per runtime ({context})", fontsize=14)
    if not names:
        for ax in axes[1:]:
            ax.set_axis_off()
        return _no_data(fig, axes[0], "no successful variant has accuracy and a measured latency")
    for ax, name in zip(axes, names):
        points = _points(study, lambda v, r=name: (measured_runtimes(v, study).get(r) or {}).get(
            "latency_b1_median_ms"), None)
        metrics = next((measured_runtimes(v, study)[name] for v in variants if name in measured_runtimes(v, study)),
                       {})
        where = ", ".join(str(x) for x in (metrics.get("device"), metrics.get("precision"),
                                           f"{metrics['threads']} threads" if metrics.get("threads") else None) if x)
        ax.set_title(name + (f" ({where})" if where else ""), fontsize=13, fontweight="bold")
        chosen = answer["variant"] if answer and answer["runtime"] == name else None
        _draw(ax, points, log_units=False, chosen=chosen)
        log = all(p[0] > 0 for p in points)
        ax.set_xlabel(f"latency, batch {bs}, median (ms{', log scale' if log else ''})", fontsize=12)
        ax.set_ylabel(_ylabel(points), fontsize=12)
        ax.tick_params(labelleft=True, labelbottom=True)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    fig.tight_layout(rect=(0, 0, 1, 0.97 if nrows > 1 else 0.95))
    return _png(fig)


def scatter_png(study: dict, name: str) -> bytes:
    """Accuracy (%) against one cost, the Pareto front as a step line, front points labelled by name."""
    if name == "accuracy_vs_latency":
        return latency_png(study)
    key, front, xlabel = SCATTERS[name]
    flags = pareto_flags(list(study.get("variants") or []))[front]
    points = _points(study, lambda v: v.get(key), flags)
    fig, ax = _figure(7.0, 5.0)
    what = {"accuracy_vs_params": "parameters", "accuracy_vs_macs": "MACs"}[name]
    ax.set_title(f"Test accuracy vs {what} ({_context(study)})", fontsize=12)
    if not points:
        return _no_data(fig, ax, f"no successful variant has accuracy and {key}")
    if not all(p[0] > 0 for p in points):  # a log axis cannot show zero or negative costs
        xlabel = xlabel.replace(" (log scale)", "")
    _draw(ax, points, log_units=True)
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel(_ylabel(points), fontsize=11)
    return _png(fig)


def training_curves_png(study: dict) -> bytes:
    """Validation accuracy (%) and training loss against epoch, one line per successful variant."""
    curves = []
    for v in study.get("variants") or []:
        history = [h for h in v.get("history") or [] if isinstance(h, dict) and number(h.get("epoch")) is not None]
        if is_ok(v) and history:
            curves.append((str(v.get("name")), history))
    fig, (acc_ax, loss_ax) = _figure(14.0, 5.4, ncols=2)
    fig.suptitle(f"Training curves ({_context(study)})", fontsize=13)
    if not curves:
        loss_ax.set_axis_off()
        return _no_data(fig, acc_ax, "no successful variant has a training history")
    colors = _colors(len(curves))
    for (name, history), color in zip(curves, colors):
        for ax, key, scale in ((acc_ax, "val_accuracy", 100.0), (loss_ax, "train_loss", 1.0)):
            pts = [(h["epoch"], scale * number(h.get(key))) for h in history if number(h.get(key)) is not None]
            if pts:
                ax.plot(*zip(*pts), color=color, linewidth=1.6, marker="o" if len(pts) < 30 else None,
                        markersize=3.5, label=name)
    acc_ax.set_ylabel("validation accuracy (%)", fontsize=12)
    loss_ax.set_ylabel("training loss", fontsize=12)
    from matplotlib.ticker import MaxNLocator

    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=12)
        ax.tick_params(labelsize=10.5)
        ax.grid(True, alpha=0.3)
    handles, labels = acc_ax.get_legend_handles_labels()
    if not handles:
        handles, labels = loss_ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, max(1, len(labels))),
               fontsize=10.5, frameon=False)
    return _png(fig)


def _log_x(ax: Any, units: bool) -> None:
    """Log x axis with plain tick labels (0.2, 0.5, 1, 2 or 10K, 200K, 1M), minor labels only at 2x and 5x."""
    import math

    from matplotlib.ticker import FuncFormatter

    def label(value: float, minor: bool) -> str:
        if value <= 0:
            return ""
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6)
        if minor and mantissa not in (2.0, 5.0):
            return ""
        if units:
            for factor, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
                if value >= factor:
                    return f"{value / factor:g}{unit}"
        return f"{value:g}"

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: label(v, False)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: label(v, True)))
    ax.tick_params(axis="x", which="minor", labelsize=9, labelcolor="dimgrey")


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
