"""The Python API behind `import leanvision`: one function per CLI command, taking Python objects, returning typed
results (dataclasses with `to_dict()`, which is exactly what the CLI prints with --json).

    import leanvision as lv
    run = lv.train(model="compact", dataset="digits", epochs=3, out="runs/compact")   # -> Run
    run.result.test_accuracy, lv.evaluate(run).accuracy, lv.predict(run, ["digit.png", pil_image])[0].label
    int8 = lv.optimize(run, [lv.QuantizeConfig(mode="int8")], out="runs/compact-int8")  # -> Run
    [row.latency_median_ms for row in lv.bench(int8, batch_sizes=1)]

Every function here is a thin layer over the module that does the work (runs, evaluate, optimize, accel.export,
accel.bench, study), and each result type lives in that module (`TrainResult`/`OptimizeResult`: rundir,
`Evaluation`/`Prediction`: evaluate, `ExportResult`: accel.export, `BenchRow`: accel.bench, `Study`: study), so the
CLI and the API behave the same. Things that look wrong (a collapsed validation accuracy, a loss spike, a
compression step that lost accuracy, inverted images) are also raised as Python warnings.

`import leanvision` does not import this module until an API name is used (PEP 562 in `__init__.py`), so
`leanvision --help` stays free of torch.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from .accel.bench import BenchConfig, BenchRow, bench_run
from .accel.export import ExportResult, export_run
from .config import DataConfig, RunConfig, TrainConfig, check_value_types
from .data import load_dataset
from .errors import LeanvisionError
from .evaluate import Evaluation, Prediction, evaluate_run, polarity_warning, predict_images
from .optimize import build_chain, optimize_run
from .recipes import RECIPES, resolve_recipe
from .rundir import CUSTOM_PREFIX, Run, load_run, typed_result
from .runs import _data_kwargs, train_run
from .search import SearchResult
from .study import Study, run_study
from .techniques import TechniqueConfig

__all__ = ["train", "evaluate", "predict", "optimize", "export", "bench", "study", "search", "recipe",
           "list_recipes"]


class LeanvisionWarning(UserWarning):
    """A result that looks wrong (see leanvision.health); the message names the fix."""


def _warn(lines: list[str] | None) -> None:
    for line in lines or []:
        warnings.warn(line, LeanvisionWarning, stacklevel=3)


def _as_run(run: Run | str | Path, model: nn.Module | None = None) -> Run:
    return run if isinstance(run, Run) else load_run(run, model=model)


def recipe(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), device: str = "auto"):
    """The named training recipe (`Recipe`: model, model_kwargs, train and data settings chosen together) for inputs
    of `input_shape` (C, H, W). `train(recipe=name, ...)` applies it. Example: `recipe("fast", (3, 32, 32)).model`."""

    return resolve_recipe(name, tuple(input_shape), device)


def list_recipes(pattern: str = "*") -> list[str]:
    """Names of the registered recipes (`fast`, `accurate`, ...)."""

    return RECIPES.names(pattern)


TRAIN_ARGUMENTS = ("config", "model", "dataset", "out", "resume", "overwrite", "progress", "recipe")  # + options


def train(config: RunConfig | dict | None = None, *, model: str | nn.Module | None = None, dataset: Any = None,
          out: str | Path | None = None, resume: bool = False, overwrite: bool = False, progress: bool = False,
          recipe: str | None = None, **options: Any) -> Run:
    """Train a model into a run directory; returns the trained `Run` (best-validation weights, on the CPU for a
    registered model), whose `run.result` is a `TrainResult` (test_accuracy, best_val_accuracy, epochs_run,
    train_time_s, warnings, ...) and `run.history` the per-epoch metrics.

    `config`: a `RunConfig`, or its dict form (`{"model": ..., "data": {...}, "train": {...}}`); `options` are any
    `DataConfig`/`TrainConfig` field (`epochs=3`, `learning_rate=3e-3`, `image_size=32`, ...) or `model_kwargs`,
    applied on top. `model`: a registered name, a spec file, or your own `nn.Module` instance. A custom module is
    trained in place and its weights saved (safetensors); the run records the class name only, since leanvision
    never imports code named in a file: reload it with `load_run(run_dir, model=YourNet(...))`. `dataset`: a
    registered name, folder or .npz path, or an already loaded `leanvision.data.Dataset`. `resume=True` continues
    the run in `out`, `overwrite=True` replaces it (as the CLI's --resume and --overwrite). `recipe`: a named
    recipe (`list_recipes()`) fills every setting not given in `options` or `model`, chosen for the dataset's
    input shape (without `config`: a config already fixes every setting).

    Example: `train(model="compact", dataset="digits", epochs=3, out="runs/compact").result.test_accuracy`.
    """

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
    check_value_types(options, "train()")  # epochs="ten": one line, before anything is loaded
    if recipe is not None and config is not None:
        raise LeanvisionError(f"Pass either config= or recipe={recipe!r}, not both: a config fixes every setting. "
                              "Put the settings you want in config, or use recipe= with options (epochs=3, ...).")
    loaded = None
    if dataset is not None and not isinstance(dataset, (str, Path)):
        loaded, dataset = dataset, (dataset.source or {}).get("name", dataset.name)
    data = {**dataclasses.asdict(cfg.data), **{k: v for k, v in options.items() if k in data_fields}}
    if dataset is not None:
        data["dataset"] = str(dataset)
    chosen = None
    if recipe is not None:  # fills what `options` and `model` leave open; it needs the data's input shape

        if loaded is None:
            loaded = load_dataset(**_data_kwargs(RunConfig(data=DataConfig(**data))))
        chosen = _recipe_for(recipe, loaded.input_shape, options.get("device", cfg.train.device))  # as the CLI's
    train_values = {**dataclasses.asdict(cfg.train), **(chosen.train if chosen else {}),
                    **{k: v for k, v in options.items() if k in train_fields}}
    if chosen is not None and model is None:
        model = chosen.model
        options["model_kwargs"] = {**chosen.model_kwargs, **options.get("model_kwargs", {})}
    module = model if isinstance(model, nn.Module) else None
    name = custom_module_name(module) if module is not None else (model or cfg.model)
    cfg = RunConfig(model=str(name), model_kwargs=dict(options.get("model_kwargs", cfg.model_kwargs)),
                    data=DataConfig(**data), train=TrainConfig(**train_values))
    if module is not None and cfg.model_kwargs:
        raise LeanvisionError("model_kwargs apply to registered models only; configure your nn.Module yourself.")
    if loaded is None:

        loaded = load_dataset(**_data_kwargs(cfg))
    out = Path(out) if out is not None else Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(name)).stem)
    result = train_run(cfg, out, resume=resume, overwrite=overwrite, progress=progress, dataset=loaded,
                       model=module, recipe=recipe)
    _warn(result.get("warnings"))
    first = next(module.parameters(), None) if module is not None else None
    device = first.device if first is not None else "cpu"
    run = load_run(out, device=device, model=module)  # a module given stays the run's model (best weights)
    run._result = typed_result(result)
    return run


def _recipe_for(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), device: str = "auto"):
    return recipe(name, input_shape, device)


def custom_module_name(module: nn.Module) -> str:
    """How a run records a user's own module: `custom:<module>.<class>` (a record, never imported)."""
    cls = type(module)
    return f"{CUSTOM_PREFIX}{cls.__module__}.{cls.__qualname__}"


def evaluate(run: Run | str | Path, *, split: str = "test", data_dir: str | None = None, plot: bool = False,
             model: nn.Module | None = None) -> Evaluation:
    """An `Evaluation`: accuracy (and its 95% interval), per-class precision/recall/F1 with macro and weighted
    averages, and the confusion matrix (counts) on `split`; `plot=True` also writes confusion_matrix_<split>.png.

    `run`: a `Run` or a run directory (`model`: the module instance for a run trained from your own nn.Module).
    """

    return Evaluation.from_dict(evaluate_run(_as_run(run, model), split=split, data_dir=data_dir, plot=plot))


def predict(run: Run | str | Path, images: Any, *, top_k: int = 1, model: nn.Module | None = None
            ) -> list[Prediction]:
    """Classify images: a path, a folder (recursively), a PIL image, a numpy array or tensor ((H, W), (H, W, C),
    (C, H, W), or a 4-D batch), or a list of any of these. One `Prediction` per image, in order (`label`,
    `probability`, the top-k `predictions`); an unreadable input gives one with `error` instead of stopping the others.

    Example: `predict("runs/compact", np.zeros((28, 28), np.uint8), top_k=3)[0].label`.
    """

    r = _as_run(run, model)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    for item in items:  # an unreadable file is a per-image error; a value of the wrong kind is the caller's mistake
        if not (isinstance(item, (str, Path)) or hasattr(item, "shape") or hasattr(item, "getbands")):
            raise LeanvisionError(f"Invalid image {item!r} ({type(item).__name__}). Expected a file or folder path, "
                                  "a PIL image, a numpy array or a tensor, or a list of these.")
    results = predict_images(r, items, top_k=top_k)
    warning = polarity_warning(results, r.meta["mean"])
    _warn([warning] if warning else [])
    return [Prediction.from_dict(result) for result in results]


def optimize(run: Run | str | Path, techniques: Any = None, *, out: str | Path | None = None,
             prune: float | None = None, round_to: int | None = None, quantize: str | None = None,
             distill_from: str | None = None, finetune_epochs: int | None = None, overwrite: bool = False,
             progress: bool = False, model: nn.Module | None = None, **chain: Any) -> Run:
    """Compress a trained run (a `Run` or a run directory) into a new run directory `out` (default: the run's
    folder + `-optimized`); returns the new `Run`, whose `run.result` is an `OptimizeResult` (test accuracy before
    and after, one measured `OptimizeStep` per technique, `warnings`).

    `techniques`: technique configs (`[PruneConfig(ratio=0.5, finetune_epochs=1), QuantizeConfig(mode="int8")]`),
    spec strings (`"prune:ratio=0.5"`, parsed by `techniques.parse_technique`, the one parser), or one of them; or
    instead the CLI's shortcuts (`prune=0.5, round_to=8, quantize="int8"`, and any other `optimize.build_chain`
    argument). `model`: the module instance for a run trained from your own nn.Module; it is left unchanged (the
    returned run holds a copy).
    """

    if techniques is None:
        techniques = build_chain(prune=prune, round_to=round_to, quantize=quantize, distill_from=distill_from,
                                 finetune_epochs=finetune_epochs, **chain)
    elif prune is not None or quantize is not None or distill_from is not None or round_to is not None or chain:
        raise LeanvisionError("Pass either techniques=[...] or the options (prune=, quantize=, ...), not both.")
    elif isinstance(techniques, (str, TechniqueConfig, dict)):
        techniques = [techniques]
    elif isinstance(techniques, (Path, bytes)) or not isinstance(techniques, (list, tuple)):
        raise LeanvisionError(f"Invalid techniques={techniques!r}. Expected a list of technique configs or spec "
                              "strings, e.g. [QuantizeConfig(mode='int8')] or ['prune:ratio=0.5']; the output "
                              "folder is out=.")
    source = run.path if isinstance(run, Run) else Path(run)
    out = Path(out) if out is not None else source.parent / f"{source.name}-optimized"
    result = optimize_run(run, list(techniques), out, progress=progress, overwrite=overwrite, model=model)
    _warn(result.get("warnings"))
    own = run.model if isinstance(run, Run) else model
    custom = isinstance(run, Run) and str(run.meta.get("model") or "").startswith(CUSTOM_PREFIX)
    new = load_run(out, model=copy.deepcopy(own) if (custom or model is not None) and not _int8(result) else None)
    new._result = typed_result(result)
    return new


def _int8(result: dict[str, Any]) -> bool:
    return any(step.get("step") == "quantize" for step in result.get("steps", []))


def export(run: Run | str | Path, out: str | Path | None = None, *, model: nn.Module | None = None, **options: Any
           ) -> ExportResult:
    """Write the run's model as ONNX (with class names and normalization in its metadata) and check its accuracy
    through ONNX Runtime; returns an `ExportResult` (`path`, `parity_ok`, both accuracies, ...). `options`: `format`,
    `opset`, `data_dir`, `weights` (see `accel.export.export_run`). `run`: a `Run` or a run directory (`model`: the
    module instance for a run trained from your own nn.Module)."""

    if "format" in options and "fmt" not in options:  # ExportConfig's (and the CLI's) name for it
        options["fmt"] = options.pop("format")
    return ExportResult.from_dict(export_run(run, out, model=model, **options))


def bench(run: Run | str | Path, *, data_dir: str | None = None, weights: str = "best", model: nn.Module | None = None,
          **config: Any) -> list[BenchRow]:
    """Latency, throughput, accuracy and energy per runtime x precision x batch size: one `BenchRow` each (`status`
    "ok" or why not). `config`: `BenchConfig` fields (`runtimes=("torch", "onnxruntime")`, `batch_sizes=(1, 256)`,
    `repeats=50`, ...; one value may be given bare). `run`: a `Run` or a run directory (`model`: the module instance
    for a run trained from your own nn.Module)."""

    for single, key in (("runtime", "runtimes"), ("precision", "precisions"), ("batch_size", "batch_sizes")):
        if single in config and key not in config:  # the CLI's --runtime alias, and the natural singular
            config[key] = config.pop(single)
        value = config.get(key)
        if isinstance(value, str):  # "1,256" as on the command line
            value = tuple(v.strip() for v in value.split(",") if v.strip())
            if key == "batch_sizes":
                if not all(v.isdigit() for v in value):
                    raise LeanvisionError(f"Invalid batch_sizes={config[key]!r}. Expected integers >= 1, e.g. "
                                          "(1, 256) or '1,256'.")
                value = tuple(int(v) for v in value)
            config[key] = value
        elif isinstance(value, int):
            config[key] = (value,)
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise LeanvisionError(f"Unknown option(s) {', '.join(unknown)}. Expected some of: "
                              f"{', '.join(sorted(fields | {'data_dir', 'weights', 'model'}))}.")
    rows = bench_run(run, BenchConfig(**config), data_dir=data_dir, weights=weights, model=model)
    return [BenchRow.from_dict(row) for row in rows]


def study(**options: Any) -> Study:
    """Train, measure and compare a plan of variants and write the report; returns a `Study` (one `StudyVariant`
    each, the findings, `report_files`). See `study.run_study` for `options`."""

    return Study.from_dict(run_study(**{"progress": False, **options}))


def search(*, dataset: str = "digits", out: str | Path = "search", data_dir: str | None = None,
           space: str | Path | dict[str, Any] = "default", objectives: str | tuple[str, ...] = ("accuracy", "latency"),
           max_latency_ms: float | None = None, max_size_kb: float | None = None, min_accuracy: float | None = None,
           runtime: str = "onnxruntime", trials: int | None = None, minutes: float | None = None,
           storage: str | None = None, study_name: str = "leanvision-search", workers: int = 1,
           sampler: str = "tpe", stop_after: int = 3, seed: int | None = 0, threads: int | None = None,
           repeats: int = 50, compare: tuple[str | Path, ...] | list[str | Path] = (), warm_start: bool = True,
           progress: bool = False) -> SearchResult:
    """Search architecture, training and compression choices for the most accurate model within a latency/size
    budget, on measured numbers (Optuna); the same as `leanvision search`. Re-running with the same `out` (or
    `storage` and `study_name`) continues the study.

    Args:
        dataset: registered name (digits, mnist, cifar10, ...), image folder, or .npz file.
        out: output directory (the journal storage by default, trials/, pareto/, report.html/md, results.json/csv).
        space: "default", a space YAML file, or the same as a dict.
        objectives: accuracy plus any of latency, throughput, size, macs (a comma-separated string or a tuple).
        max_latency_ms, max_size_kb, min_accuracy: constraints (batch-1 median latency, model file, validation
            accuracy as a fraction).
        runtime: the runtime timed (onnxruntime by default: what a deployment uses).
        trials, minutes: the budget (total trials in the study, wall minutes of this call); 20 trials when both
            are None.
        storage: "postgresql://user@host:port/db" for several machines, or a .journal file (default OUT/study.journal).
        workers: local worker processes sharing the study.
        sampler: tpe (multi-objective, constraint-aware) or random. stop_after: a trial dominated at an epoch rung
            by this many others stops early (0: never).
        compare: run directories (e.g. registry models trained with `leanvision.train`) measured with the front.
        warm_start: start from the registry designs the space can express (fastnet, ...).

    Returns a `SearchResult` (answer, re-measured Pareto set as run directories, compared runs, counts).

    Example: `lv.search(dataset="digits", max_latency_ms=0.05, trials=10, out="search/digits").pareto[0]`.
    """
    from .search import search as run_search

    if trials is None and minutes is None:
        trials = 20
    result = run_search(dataset=dataset, out=str(out), data_dir=data_dir, space=space, objectives=objectives,
                        max_latency_ms=max_latency_ms, max_size_kb=max_size_kb, min_accuracy=min_accuracy,
                        runtime=runtime, trials=trials, minutes=minutes, storage=storage, study_name=study_name,
                        workers=workers, sampler=sampler, stop_after=stop_after, seed=seed, threads=threads,
                        repeats=repeats, compare=tuple(str(p) for p in compare), warm_start=warm_start,
                        progress=progress)
    return SearchResult.from_dict(result, out)
