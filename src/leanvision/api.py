"""The Python API behind `import leanvision`: one function per CLI command, taking Python objects.

    import leanvision as lv
    result = lv.train(model="compact", dataset="digits", epochs=3, out="runs/compact")
    run = lv.load_run("runs/compact")
    lv.evaluate(run)["accuracy"], lv.predict(run, ["digit.png", pil_image, numpy_array])

Every function here is a thin layer over the module that does the work (runs, evaluate, optimize, accel.export,
accel.bench, study), so the CLI and the API behave the same. Things that look wrong (a collapsed validation accuracy,
a loss spike, a compression step that lost accuracy, inverted images) are also raised as Python warnings.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from .config import DataConfig, RunConfig, TrainConfig
from .errors import LeanvisionError
from .rundir import CUSTOM_PREFIX, Run, load_run

__all__ = ["train", "evaluate", "predict", "optimize", "export", "bench", "study"]


class LeanvisionWarning(UserWarning):
    """A result that looks wrong (see leanvision.health); the message names the fix."""


def _warn(lines: list[str] | None) -> None:
    for line in lines or []:
        warnings.warn(line, LeanvisionWarning, stacklevel=3)


def _as_run(run: Run | str | Path, model: nn.Module | None = None) -> Run:
    return run if isinstance(run, Run) else load_run(run, model=model)


TRAIN_ARGUMENTS = ("config", "model", "dataset", "out", "resume", "overwrite", "progress")  # besides the options


def train(config: RunConfig | dict | None = None, *, model: str | nn.Module | None = None, dataset: Any = None,
          out: str | Path | None = None, resume: bool = False, overwrite: bool = False, progress: bool = False,
          **options: Any) -> dict[str, Any]:
    """Train a model into a run directory; returns result.json's content plus `run_dir`.

    `config`: a `RunConfig`, or its dict form (`{"model": ..., "data": {...}, "train": {...}}`); `options` are any
    `DataConfig`/`TrainConfig` field (`epochs=3`, `learning_rate=3e-3`, `image_size=32`, ...) or `model_kwargs`,
    applied on top. `model`: a registered name, a spec file, or your own `nn.Module` instance. A custom module is
    trained in place and its weights saved (safetensors); the run records the class name only, since leanvision
    never imports code named in a file: reload it with `load_run(run_dir, model=YourNet(...))`. `dataset`: a
    registered name, folder or .npz path, or an already loaded `leanvision.data.Dataset`. `resume=True` continues
    the run in `out`, `overwrite=True` replaces it (as the CLI's --resume and --overwrite).

    Example: `train(model="compact", dataset="digits", epochs=3, out="runs/compact")["test_accuracy"]`.
    """
    from .runs import _data_kwargs, train_run

    if isinstance(config, dict):
        cfg = RunConfig.from_dict(config)
    elif isinstance(config, RunConfig) or config is None:
        cfg = config or RunConfig()
    else:
        raise LeanvisionError(f"Invalid config of type {type(config).__name__}: expected a RunConfig or a dict.")
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - data_fields - train_fields - {"model_kwargs"})
    if unknown:
        raise LeanvisionError(f"Unknown option(s) {', '.join(unknown)}. Expected some of: "
                              f"{', '.join(sorted(data_fields | train_fields | {'model_kwargs', *TRAIN_ARGUMENTS}))}.")
    loaded = None
    if dataset is not None and not isinstance(dataset, (str, Path)):
        loaded, dataset = dataset, (dataset.source or {}).get("name", dataset.name)
    data = {**dataclasses.asdict(cfg.data), **{k: v for k, v in options.items() if k in data_fields}}
    if dataset is not None:
        data["dataset"] = str(dataset)
    train_values = {**dataclasses.asdict(cfg.train), **{k: v for k, v in options.items() if k in train_fields}}
    module = model if isinstance(model, nn.Module) else None
    name = custom_module_name(module) if module is not None else (model or cfg.model)
    cfg = RunConfig(model=str(name), model_kwargs=dict(options.get("model_kwargs", cfg.model_kwargs)),
                    data=DataConfig(**data), train=TrainConfig(**train_values))
    if module is not None and cfg.model_kwargs:
        raise LeanvisionError("model_kwargs apply to registered models only; configure your nn.Module yourself.")
    if loaded is None:
        from .data import load_dataset

        loaded = load_dataset(**_data_kwargs(cfg))
    out = Path(out) if out is not None else Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(name)).stem)
    result = train_run(cfg, out, resume=resume, overwrite=overwrite, progress=progress, dataset=loaded,
                       model=module)
    _warn(result.get("warnings"))
    return {**result, "run_dir": str(out)}


def custom_module_name(module: nn.Module) -> str:
    """How a run records a user's own module: `custom:<module>.<class>` (a record, never imported)."""
    cls = type(module)
    return f"{CUSTOM_PREFIX}{cls.__module__}.{cls.__qualname__}"


def evaluate(run: Run | str | Path, *, split: str = "test", data_dir: str | None = None, plot: bool = False,
             model: nn.Module | None = None) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 with macro and weighted averages, and the confusion matrix (fractions).

    `run`: a `Run` or a run directory (`model`: the module instance for a run trained from your own nn.Module).
    """
    from .evaluate import evaluate_run

    return evaluate_run(_as_run(run, model), split=split, data_dir=data_dir, plot=plot)


def predict(run: Run | str | Path, images: Any, *, top_k: int = 1, model: nn.Module | None = None
            ) -> list[dict[str, Any]]:
    """Classify images: a path, a folder (recursively), a PIL image, a numpy array or tensor ((H, W), (H, W, C),
    (C, H, W), or a 4-D batch), or a list of any of these. One result per image, in order (see
    `evaluate.predict_images`); an unreadable input gives an `error` entry instead of stopping the others.

    Example: `predict("runs/compact", np.zeros((28, 28), np.uint8), top_k=3)[0]["predictions"]`.
    """
    from .evaluate import polarity_warning, predict_images

    r = _as_run(run, model)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    results = predict_images(r, items, top_k=top_k)
    warning = polarity_warning(results, r.meta["mean"])
    _warn([warning] if warning else [])
    return results


def optimize(run: Run | str | Path, out: str | Path, *, techniques: list[str] | None = None, prune: float | None = None,
             round_to: int | None = None, quantize: str | None = None, distill_from: str | None = None,
             finetune_epochs: int | None = None, overwrite: bool = False, progress: bool = False,
             model: nn.Module | None = None, **chain: Any) -> dict[str, Any]:
    """Compress a trained run (a `Run` or a run directory; `model`: the module instance for a run trained from your
    own nn.Module, which is left unchanged) into `out`: `techniques` as spec strings (`["prune:ratio=0.5,round_to=8",
    "quantize:mode=int8"]`), or the CLI's options (`prune=0.5, round_to=8, quantize="int8"`, and any other
    `optimize.build_chain` argument). Returns result.json's content (per-step measurements and `warnings`)."""
    from .optimize import build_chain, optimize_run

    if techniques is None:
        techniques = build_chain(prune=prune, round_to=round_to, quantize=quantize, distill_from=distill_from,
                                 finetune_epochs=finetune_epochs, **chain)
    elif prune is not None or quantize is not None or distill_from is not None or round_to is not None or chain:
        raise LeanvisionError("Pass either techniques=[...] or the options (prune=, quantize=, ...), not both.")
    result = optimize_run(run, techniques, out, progress=progress, overwrite=overwrite, model=model)
    _warn(result.get("warnings"))
    return result


def export(run: Run | str | Path, out: str | Path | None = None, *, model: nn.Module | None = None, **options: Any
           ) -> dict[str, Any]:
    """Write the run's model as ONNX (with class names and normalization in its metadata) and check its accuracy
    through ONNX Runtime; see `accel.export.export_run` for `options` and the returned keys. `run`: a `Run` or a
    run directory (`model`: the module instance for a run trained from your own nn.Module)."""
    from .accel.export import export_run

    return export_run(run, out, model=model, **options)


def bench(run: Run | str | Path, *, data_dir: str | None = None, weights: str = "best", model: nn.Module | None = None,
          **config: Any) -> list[dict[str, Any]]:
    """Latency, throughput, accuracy and energy per runtime x precision x batch size; `config`: `BenchConfig`
    fields (`runtimes=("torch", "onnxruntime")`, `batch_sizes=(1, 256)`, `repeats=50`, ...). `run`: a `Run` or a
    run directory (`model`: the module instance for a run trained from your own nn.Module)."""
    from .accel.bench import BenchConfig, bench_run

    for key in ("runtimes", "precisions", "batch_sizes"):
        if isinstance(config.get(key), (str, int)):
            config[key] = (config[key],)
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise LeanvisionError(f"Unknown option(s) {', '.join(unknown)}. Expected some of: "
                              f"{', '.join(sorted(fields | {'data_dir', 'weights', 'model'}))}.")
    return bench_run(run, BenchConfig(**config), data_dir=data_dir, weights=weights, model=model)


def study(**options: Any) -> dict[str, Any]:
    """Train, measure and compare a plan of variants and write the report; see `study.run_study` for `options`."""
    from .study import run_study

    return run_study(**{"progress": False, **options})
