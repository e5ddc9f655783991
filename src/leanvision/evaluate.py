"""Evaluation and prediction on a trained run: accuracy, per-class precision/recall, confusion matrix, top-k.

Their typed results (`Evaluation`, `ClassMetrics`, `Prediction`, returned by the Python API) live here with the code
that computes them; that is why the module is a little over 300 lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .data.images import EMPTY_FILE, GRAY_MODES, IMAGE_EXTENSIONS, convert_image, decode_files, image_files, probe_files
from .data.normalize import normalizer
from .errors import LeanvisionError
from .io import atomic_write_bytes
from .measure.stats import wilson_interval
from .results import Result
from .rundir import Run
from .runtimes.eager import predict_logits


@dataclass(kw_only=True)
class ClassMetrics(Result):
    """Precision, recall, F1 (fractions) and support of one class, or an average (`class_name` None). Precision is
    None for a class never predicted (undefined)."""

    aliases: ClassVar[dict[str, str]] = {"class_name": "class"}

    class_name: str | None = None
    precision: float | None
    recall: float
    f1: float
    support: int


@dataclass(kw_only=True)
class Evaluation(Result):
    """`evaluate`'s result: accuracy (`correct`/`total`) on `split`, per-class and macro/weighted-average
    precision/recall/F1 (as scikit-learn's classification_report), the confusion matrix (counts, row = true class),
    and the plot's path when one was written. `accuracy_interval`: its 95% Wilson interval."""

    nested: ClassVar[dict[str, type[Result]]] = {"per_class": ClassMetrics, "macro_avg": ClassMetrics,
                                                 "weighted_avg": ClassMetrics}

    accuracy: float
    correct: int
    total: int
    per_class: list[ClassMetrics] = field(default_factory=list)
    macro_avg: ClassMetrics | None = None
    weighted_avg: ClassMetrics | None = None
    confusion_matrix: list[list[int]] = field(default_factory=list)
    split: str | None = None
    dataset: str | None = None
    confusion_matrix_png: str | None = None

    @property
    def accuracy_interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)


@dataclass(kw_only=True)
class Prediction(Result):
    """`predict`'s result for one image: `predictions` (top-k `{"class", "probability"}`, best first) and `label`
    (the best class), or `error` for an input that could not be read. `file` names a file input."""

    file: str | None = None
    predictions: list[dict[str, Any]] | None = None
    mean_brightness: float | None = None
    inverted_polarity: bool | None = None
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.predictions[0]["class"] if self.predictions else None

    @property
    def probability(self) -> float | None:
        return self.predictions[0]["probability"] if self.predictions else None


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
        precision = (tp[i] / predicted[i]).item() if predicted[i] > 0 else None  # never predicted: undefined
        recall = (tp[i] / actual[i]).item() if actual[i] > 0 else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision and precision + recall > 0 else 0.0
        per_class.append({"class": name, "precision": precision, "recall": recall, "f1": f1,
                          "support": int(actual[i])})
    total = int(cm.sum())
    averages = {}
    for kind in ("macro", "weighted"):  # scikit-learn's classification_report (0 where a class was never predicted)
        weights = [1.0] * k if kind == "macro" else [p["support"] for p in per_class]
        norm = sum(weights) or 1.0
        averages[f"{kind}_avg"] = {key: sum(w * (p[key] or 0.0) for w, p in zip(weights, per_class)) / norm
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
        precision = "n/a" if p["precision"] is None else f"{100 * p['precision']:.2f}"  # class never predicted
        lines.append(f"{name:<{width}}  {precision:>13}  {100 * p['recall']:>10.2f}  "
                     f"{100 * p['f1']:>7.2f}  {p['support']:>7d}")
    return "\n".join(lines)


def evaluate_run(run: Run, *, split: str = "test", data_dir: str | None = None, plot: bool = True) -> dict[str, Any]:
    """Evaluate a loaded run on its dataset's `split` (test, val or train); writes confusion_matrix.png if `plot`.

    Example: `evaluate_run(load_run("runs/compact"))["accuracy"]`.
    """
    dataset = run.load_dataset(data_dir)
    data = getattr(dataset, split, None)
    if data is None or len(data) == 0:
        raise LeanvisionError(f"Dataset {dataset.name!r} has no {split} split. Use split='val' or 'train'.")
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


POLARITY_MIN_SKEW = 0.15  # training mean this far from mid-grey: images have a clear polarity (digits, MNIST)
POLARITY_MIN_GAP = 0.25  # an image's mean this far from the training mean, and its inverse twice closer: inverted


def expand_inputs(items: list[Any]) -> list[Any]:
    """Paths stay paths, folders become their image files (recursively, sorted; hidden ones skipped), 4-D arrays or
    tensors become their images; anything else (PIL images, 2-D/3-D arrays or tensors) is kept as one image."""
    import os

    import numpy as np

    out: list[Any] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if path.is_dir():
                out += image_files(path) or [("folder", str(path))]
            else:
                out.append(str(path))
        elif isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
            out += list(item)
        else:
            out.append(item)
    return out


def _to_uint8_hwc(array: Any, channels_first: bool):
    import numpy as np

    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if a.ndim == 3:
        if channels_first and a.shape[0] in (1, 3, 4):
            a = a.transpose(1, 2, 0)
        elif a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
            a = a.transpose(1, 2, 0)
        if a.shape[-1] == 1:
            a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise LeanvisionError(f"Invalid image array of shape {tuple(array.shape)}: expected (H, W), (H, W, C) or "
                              "(C, H, W) with C in 1, 3, 4.")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):  # floats in [0, 1] (as ToTensor gives), else taken as 0..255
        a = np.nan_to_num(a) * (255.0 if a.size and float(np.nanmax(a)) <= 1.0 else 1.0)
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def decode_inputs(items: list[Any], size_hw: tuple[int, int], channels: int
                  ) -> tuple[list[str], torch.Tensor, list[int], dict[int, str]]:
    """Decode `expand_inputs(items)` like the training images: (names, uint8 (N_ok, C, H, W), the indices that
    decoded, {index: error} for those that did not)."""
    from PIL import Image

    entries = expand_inputs(list(items))
    names, arrays, errors = [], {}, {}
    paths = {i: e for i, e in enumerate(entries) if isinstance(e, str)}
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            names.append(entry)
            if not Path(entry).is_file():
                errors[i] = "file not found"
        elif isinstance(entry, tuple):  # ("folder", path) without images
            names.append(entry[1])
            errors[i] = "folder holds no image files (" + "|".join(e[1:] for e in IMAGE_EXTENSIONS) + ")"
        else:
            names.append(f"<{type(entry).__name__} {i}>")
            try:
                img = entry if isinstance(entry, Image.Image) else Image.fromarray(
                    _to_uint8_hwc(entry, channels_first=isinstance(entry, torch.Tensor)))
                arrays[i] = torch.from_numpy(convert_image(img, size_hw, channels))
            except LeanvisionError as e:
                errors[i] = str(e)
            except Exception as e:  # noqa: BLE001 - one bad input is reported, the others go on
                errors[i] = f"{type(e).__name__}: {e}"
    readable = [i for i in paths if i not in errors]
    if readable:
        images, ok, texts = decode_files([paths[i] for i in readable], size_hw, channels)
        for j, i in enumerate(readable):
            if ok[j]:
                arrays[i] = images[j]
            else:
                errors[i] = texts[j] if texts[j] == EMPTY_FILE else f"not a readable image ({texts[j]})"
    order = sorted(arrays)
    stacked = torch.stack([arrays[i] for i in order]) if order else torch.empty((0, channels, *size_hw),
                                                                                 dtype=torch.uint8)
    return names, stacked, order, errors


def inverted_polarity(images: torch.Tensor, train_mean: list[float]) -> list[bool]:
    """Per image: does it look like the inverse of the training images (e.g. a dark digit on white when training
    digits were light on black)? Only decided when the training mean is clearly off mid-grey."""
    mu = sum(train_mean) / len(train_mean)
    if abs(mu - 0.5) < POLARITY_MIN_SKEW or len(images) == 0:
        return [False] * len(images)
    means = images.float().mean(dim=(1, 2, 3)) / 255
    return [abs(m - mu) > POLARITY_MIN_GAP and abs((1 - m) - mu) < abs(m - mu) / 2 for m in means.tolist()]


def _colour_inputs(entries: list[Any], order: list[int]) -> list[bool]:
    """Per decoded input (indices `order` into `expand_inputs` entries): was it a colour image (mode/shape)?"""
    from PIL import Image

    paths = [i for i in order if isinstance(entries[i], str)]
    modes = {i: (info[2] if info else "L") for i, (info, _) in zip(paths, probe_files([entries[i] for i in paths]))}
    out = []
    for i in order:
        entry = entries[i]
        if i in modes:
            out.append(modes[i] not in GRAY_MODES)
        elif isinstance(entry, Image.Image):
            out.append(entry.mode not in GRAY_MODES)
        else:
            shape = tuple(getattr(entry, "shape", ()))
            chans = shape[0] if isinstance(entry, torch.Tensor) and len(shape) == 3 else (
                shape[-1] if len(shape) == 3 else 1)
            out.append(chans in (3, 4))
    return out


def polarity_warning(results: list[dict[str, Any]], train_mean: list[float]) -> str | None:
    """One line when some predicted images look inverted against the training statistics, naming the fix."""
    colour = sum(1 for r in results if r.get("converted_from_colour"))
    converted = (f"converted {colour} colour image(s) to grayscale: the model was trained on 1-channel images, so "
                 "predictions on colour photos may not be meaningful") if colour else None
    flagged = [r for r in results if r.get("inverted_polarity")]
    if not flagged:
        return converted and converted + "."
    mu = sum(train_mean) / len(train_mean)
    kind = "light on dark" if mu < 0.5 else "dark on light"
    names = ", ".join(f"{r['file']} ({r['mean_brightness']:.2f})" for r in flagged[:3])
    predicted = sum(1 for r in results if "predictions" in r)
    return (f"{len(flagged)} of {predicted} image(s) look inverted: the training images are {kind} (mean brightness "
            f"{mu:.2f}), these are not: {names}{', ...' if len(flagged) > 3 else ''}. Their predictions are not "
            "meaningful; invert them first (e.g. PIL.ImageOps.invert)." + (f" Also {converted}." if converted else ""))


def predict_images(run: Run, items: list[Any], top_k: int = 1, batch_size: int = 256) -> list[dict[str, Any]]:
    """Classify image files, folders (recursively), PIL images, numpy arrays or tensors, preprocessed exactly as the
    training images were. One result per image, in order: `{"file", "predictions": [{"class", "probability"}],
    "mean_brightness", "inverted_polarity"}`, or `{"file", "error"}` for one that could not be read (the others go on).

    Example: `predict_images(load_run("runs/compact"), ["digit.png", np.zeros((28, 28), np.uint8)], top_k=3)`.
    """
    classes = run.meta["classes"]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise LeanvisionError(f"Invalid top_k={top_k}. Expected an integer >= 1.")
    top_k = min(top_k, len(classes))
    c, h, w = run.input_shape
    names, images, order, errors = decode_inputs(items, (h, w), c)
    device = next(run.model.parameters()).device
    normalize = normalizer(run.meta["mean"], run.meta["std"], device)
    probs = []
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            probs.append(torch.softmax(run.model(normalize(images[lo:lo + batch_size])).float(), dim=1).cpu())
    results: list[dict[str, Any]] = [{"file": name} for name in names]
    if order:
        values, indices = torch.cat(probs).topk(top_k, dim=1)
        # colour inputs into a 1-channel model were converted to grayscale: not the training domain, so the
        # polarity check (made for grayscale inputs like the training data) is skipped for them
        colour = _colour_inputs(expand_inputs(list(items)), order) if c == 1 else [False] * len(order)
        inverted = [flag and not col for flag, col in zip(inverted_polarity(images, run.meta["mean"]), colour)]
        brightness = (images.float().mean(dim=(1, 2, 3)) / 255).tolist()
        for n, i in enumerate(order):
            results[i].update(
                predictions=[{"class": classes[k], "probability": v}
                             for v, k in zip(values[n].tolist(), indices[n].tolist())],
                mean_brightness=brightness[n], inverted_polarity=inverted[n])
            if colour[n]:
                results[i]["converted_from_colour"] = True
    for i, error in errors.items():
        results[i]["error"] = error
    return results


def predict_files(run: Run, paths: list[str], top_k: int = 1) -> list[dict[str, Any]]:
    """`predict_images` for paths (files or folders); unreadable ones are `{"file", "error"}` entries."""
    return predict_images(run, list(paths), top_k=top_k)
