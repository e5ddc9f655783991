"""Evaluation and prediction on a trained run: accuracy, per-class precision/recall, confusion matrix, top-k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import LeanvisionError
from .runs import Run
from .train import normalizer, predict_logits


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support (fractions), their macro and support-weighted averages
    (`macro_avg`, `weighted_avg`, as scikit-learn's classification_report) and the confusion matrix as nested lists."""
    k = len(classes)
    cm = confusion_matrix(logits.argmax(1), labels, k)
    tp = cm.diag().double()
    predicted = cm.sum(0).double()
    actual = cm.sum(1).double()
    per_class = []
    for i, name in enumerate(classes):
        precision = (tp[i] / predicted[i]).item() if predicted[i] > 0 else 0.0
        recall = (tp[i] / actual[i]).item() if actual[i] > 0 else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        per_class.append({"class": name, "precision": precision, "recall": recall, "f1": f1,
                          "support": int(actual[i])})
    total = int(cm.sum())
    averages = {}
    for kind in ("macro", "weighted"):  # scikit-learn's classification_report (0 where a class was never predicted)
        weights = [1.0] * k if kind == "macro" else [p["support"] for p in per_class]
        norm = sum(weights) or 1.0
        averages[f"{kind}_avg"] = {key: sum(w * p[key] for w, p in zip(weights, per_class)) / norm
                                   for key in ("precision", "recall", "f1")} | {"support": total}
    return {
        "accuracy": tp.sum().item() / total if total else 0.0,
        "correct": int(tp.sum()),
        "total": total,
        "per_class": per_class,
        **averages,
        "confusion_matrix": cm.tolist(),
    }


def evaluate_table(metrics: dict[str, Any]) -> str:
    """Per-class precision, recall and F1 in % (2 decimals) with support, then macro and weighted averages."""
    rows = [(p["class"], p) for p in metrics["per_class"]]
    rows += [("macro avg", metrics["macro_avg"]), ("weighted avg", metrics["weighted_avg"])]
    width = max(len("class"), *(len(str(name)) for name, _ in rows))
    header = f"{'class':<{width}}  {'precision (%)':>13}  {'recall (%)':>10}  {'F1 (%)':>7}  {'support':>7}"
    lines = [header]
    for i, (name, p) in enumerate(rows):
        if i == len(metrics["per_class"]):
            lines.append("-" * len(header))
        lines.append(f"{name:<{width}}  {100 * p['precision']:>13.2f}  {100 * p['recall']:>10.2f}  "
                     f"{100 * p['f1']:>7.2f}  {p['support']:>7d}")
    return "\n".join(lines)


def evaluate_run(run: Run, *, split: str = "test", data_dir: str | None = None, plot: bool = True) -> dict[str, Any]:
    """Evaluate a loaded run on its dataset's `split` (test, val or train); writes confusion_matrix.png if `plot`.

    Example: `evaluate_run(load_run("runs/compact"))["accuracy"]`.
    """
    dataset = run.load_dataset(data_dir)
    data = getattr(dataset, split, None)
    if data is None or len(data) == 0:
        raise LeanvisionError(f"Dataset {dataset.name!r} has no {split} split. Use --split val or train.")
    device = next(run.model.parameters()).device
    logits, labels = predict_logits(run.model, data, dataset.mean, dataset.std, device)
    metrics = classification_metrics(logits, labels, run.meta["classes"])
    metrics.update(split=split, dataset=dataset.name)
    if plot:
        png = plot_confusion_matrix(metrics, run.path / f"confusion_matrix_{split}.png")
        metrics["confusion_matrix_png"] = str(png)
    return metrics


def plot_confusion_matrix(metrics: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .io import atomic_write_bytes

    cm = np.array(metrics["confusion_matrix"])
    names = [p["class"] for p in metrics["per_class"]]
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), dpi=110)
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{metrics['split']} accuracy {metrics['accuracy']:.2%} (n={metrics['total']})", fontsize=9)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def predict_files(run: Run, paths: list[str], top_k: int = 1) -> list[dict[str, Any]]:
    """Classify image files of any size or mode, preprocessed exactly as the training images were."""
    from .data import load_image_files

    classes = run.meta["classes"]
    if not 1 <= top_k:
        raise LeanvisionError(f"Invalid --top-k {top_k}. Expected an integer >= 1.")
    top_k = min(top_k, len(classes))
    c, h, w = run.input_shape
    images = load_image_files(list(paths), (h, w), c)
    device = next(run.model.parameters()).device
    normalize = normalizer(run.meta["mean"], run.meta["std"], device)
    with torch.no_grad():
        probs = torch.softmax(run.model(normalize(images)).float(), dim=1).cpu()
    values, indices = probs.topk(top_k, dim=1)
    return [
        {"file": str(p), "predictions": [{"class": classes[i], "probability": v}
                                         for v, i in zip(values[n].tolist(), indices[n].tolist())]}
        for n, p in enumerate(paths)
    ]
