"""PNG plots of a study (matplotlib Agg, rendered to bytes; nothing here touches the disk or pyplot's global state)."""

from __future__ import annotations

import io
from typing import Any

from .tables import accuracy_of, is_ok, number, pareto_flags, primary_runtime

DPI = 110
SCATTERS = {  # plot name -> (variant key, Pareto front, x-axis label)
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


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(1, ncols)
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


def scatter_png(study: dict, name: str) -> bytes:
    """Accuracy (%) against one cost, the Pareto front as a step line, front points labelled by name."""
    key, front, xlabel = SCATTERS[name]
    settings = study.get("settings") or {}
    variants = list(study.get("variants") or [])
    flags = pareto_flags(variants)[front]
    points = []  # (x, accuracy %, ci low %, ci high %, name, on front)
    for i, v in enumerate(variants):
        x, acc = number(v.get(key)), accuracy_of(v)
        if is_ok(v) and x is not None and acc is not None:
            ci = v.get("accuracy_ci95") or []
            lo, hi = (number(ci[0]), number(ci[1])) if len(ci) == 2 else (None, None)
            points.append((x, 100 * acc, lo and 100 * lo, hi and 100 * hi, str(v.get("name")), flags[i]))
    fig, ax = _figure(7.5, 5.0)
    xlabel = xlabel.format(bs=settings.get("latency_batch_size", 1))
    what = {"accuracy_vs_latency": "latency", "accuracy_vs_params": "parameters", "accuracy_vs_macs": "MACs"}[name]
    ax.set_title(f"Test accuracy vs {what} ({_context(study)})", fontsize=10)
    if not points:
        return _no_data(fig, ax, f"no successful variant has accuracy and {key}")
    if not all(p[0] > 0 for p in points):  # a log axis cannot show zero or negative costs
        xlabel = xlabel.replace(", log scale", "").replace(" (log scale)", "")
    for x, y, lo, hi, label, on_front in points:
        color = "tab:red" if on_front else "tab:blue"
        if lo is not None and hi is not None:
            ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="none", ecolor=color,
                        alpha=0.45, capsize=3, linewidth=1)
        ax.scatter([x], [y], s=42 if on_front else 26, color=color, zorder=3, edgecolors="white", linewidths=0.6)
        ax.annotate(label, (x, y), xytext=(5, 5), textcoords="offset points",
                    fontsize=8.5 if on_front else 7, color="black" if on_front else "grey",
                    fontweight="bold" if on_front else "normal")
    front_points = sorted((p[0], p[1]) for p in points if p[5])
    if front_points:
        xs, ys = zip(*front_points)
        ax.step(xs, ys, where="post", color="tab:red", linewidth=1.2, alpha=0.8, zorder=2, label="Pareto front")
        ax.scatter([], [], color="tab:blue", s=26, label="other variants")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    if all(p[0] > 0 for p in points):
        _log_x(ax, units=key != "latency_b1_median_ms")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("test accuracy (%)" + (" with 95% CI" if any(p[2] is not None for p in points) else ""), fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, which="major", alpha=0.3)
    ax.margins(x=0.12, y=0.1)
    return _png(fig)


def training_curves_png(study: dict) -> bytes:
    """Validation accuracy (%) and training loss against epoch, one line per successful variant."""
    curves = []
    for v in study.get("variants") or []:
        history = [h for h in v.get("history") or [] if isinstance(h, dict) and number(h.get("epoch")) is not None]
        if is_ok(v) and history:
            curves.append((str(v.get("name")), history))
    fig, (acc_ax, loss_ax) = _figure(11.0, 4.6, ncols=2)
    fig.suptitle(f"Training curves ({_context(study)})", fontsize=10)
    if not curves:
        loss_ax.set_axis_off()
        return _no_data(fig, acc_ax, "no successful variant has a training history")
    colors = _colors(len(curves))
    for (name, history), color in zip(curves, colors):
        for ax, key, scale in ((acc_ax, "val_accuracy", 100.0), (loss_ax, "train_loss", 1.0)):
            pts = [(h["epoch"], scale * number(h.get(key))) for h in history if number(h.get(key)) is not None]
            if pts:
                ax.plot(*zip(*pts), color=color, linewidth=1.3, marker="o" if len(pts) < 30 else None,
                        markersize=2.5, label=name)
    acc_ax.set_ylabel("validation accuracy (%)", fontsize=9)
    loss_ax.set_ylabel("training loss", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    handles, labels = acc_ax.get_legend_handles_labels()
    if not handles:
        handles, labels = loss_ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, max(1, len(labels))),
               fontsize=8, frameon=False)
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
    ax.tick_params(axis="x", which="minor", labelsize=7, labelcolor="dimgrey")


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
