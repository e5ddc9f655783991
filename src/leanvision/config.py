"""Typed run configuration: defaults live here and only here (nanoGPT's block of globals, made typed).

`RunConfig` = what to train (`model`), on what (`data`), and how (`train`). Every field is validated at construction
so a bad value fails before any data is loaded, with a one-line message naming the field.

Every command's options live here too, one dataclass each (`StudyConfig`, `OptimizeConfig`, `ExportConfig`,
`BenchConfig`, plus `RunSource` for commands that read a run): the CLI generates each command's flags from them
(`cliparse.add_dataclass_flags`, help = a field's trailing comment), so an option and its default are written once.
They sit in this light module (no torch) so that `leanvision --help` stays fast; this is why it is over 300 lines.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import LeanvisionError
from .registry import did_you_mean

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "warmup", "onecycle", "cosine", "triangle")
PRECISIONS = ("fp32", "bf16", "fp16")  # training and inference (runtimes) alike
AUGMENTS = ("auto", "none", "flip", "crop", "crop-flip", "translate-flip")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LeanvisionError(f"Invalid value for `{name}`. Expected one of {', '.join(choices)}. Received: {value!r}."
                              f"{did_you_mean(value, choices)}")


def _check_range(name: str, value: float, low: float, high: float | None = None, *, low_open: bool = False) -> None:
    ok = (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high is not None else "")
        raise LeanvisionError(f"Invalid value for `{name}`. Expected a number {bound}. Received: {name}={value}")


@dataclass
class DataConfig:
    dataset: str = "digits"  # registered name (digits, mnist, fashion-mnist, cifar10), image folder, or .npz file
    data_dir: str | None = None  # where dataset files live; default $LEANVISION_DATA, else ~/.cache/leanvision
    image_size: int | None = None  # resize images to this square size; None = the dataset's native size
    channels: int | None = None  # 1 (grayscale) or 3 (RGB); None = the dataset's own
    val_fraction: float = 0.1  # fraction of train held out for validation (deterministic, stratified)
    strict: bool = False  # refuse unreadable image files instead of skipping them with a warning

    def __post_init__(self) -> None:
        _check_range("val_fraction", self.val_fraction, 0.0, 1.0)
        if self.channels not in (None, 1, 3):
            raise LeanvisionError(f"Invalid value for `channels`. Expected 1 or 3. Received: channels={self.channels}")
        if self.image_size is not None:
            _check_range("image_size", self.image_size, 4)


@dataclass
class TrainConfig:
    """How to train. The defaults (Adam, one-cycle, peak 3e-3) are the generally good settings: 90.0% vs 87.3% for the
    reference Keras code's constant Adam 1e-3 (compact, 3 epochs, grayscale); that one is the `keras` recipe."""

    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # images per optimizer step
    optimizer: str = "adam"  # sgd (momentum, optional Nesterov) | adam | adamw
    learning_rate: float = 3e-3  # peak learning rate (reached after warm-up)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (SGD only)
    weight_decay: float = 0.0  # decoupled for adamw, L2-in-gradient for sgd/adam (PyTorch semantics)
    schedule: str = "onecycle"  # onecycle | constant | warmup (constant after linear warm-up) | cosine | triangle
    warmup_epochs: float = 0.0  # linear warm-up length, in epochs (onecycle uses 25% of training if 0)
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0 = off
    norm_lr_scale: float = 1.0  # learning-rate multiplier for BatchNorm parameters (weight decay per step unchanged)
    lookahead: bool = False  # every 5 steps after 30% of training, reset the weights to their running average
    precision: str = "fp32"  # fp32 | bf16 (autocast; CPU or CUDA) | fp16 (autocast + loss scaling; CUDA only)
    augment: str = "auto"  # auto (crop-flip colour, none grey) | none | flip | crop | crop-flip | translate-flip
    early_stopping: int = 0  # stop after this many epochs without a better validation accuracy; 0 = off
    seed: int = 0  # seeds weights, shuffling, augmentation and dropout
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps | tpu (needs torch_xla); under torchrun: one per rank
    compile: bool = False  # torch.compile the training step; its compile time is recorded apart (compile_time_s)
    channels_last: bool = False  # NHWC memory format for weights and batches (faster convs under autocast on GPUs)
    memory_fraction: float | None = None  # CUDA only: cap this process's share of the GPU's memory, in (0, 1]
    expandable_segments: bool = False  # CUDA only: allocator grows segments on demand (like TF memory growth)

    def __post_init__(self) -> None:
        _check_range("epochs", self.epochs, 1)
        _check_range("batch_size", self.batch_size, 1)
        _check_range("learning_rate", self.learning_rate, 0.0, low_open=True)
        _check_range("momentum", self.momentum, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0)
        _check_range("warmup_epochs", self.warmup_epochs, 0.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)
        _check_range("norm_lr_scale", self.norm_lr_scale, 0.0, low_open=True)
        _check_range("early_stopping", self.early_stopping, 0)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("augment", self.augment, AUGMENTS)
        if self.memory_fraction is not None and not 0.0 < self.memory_fraction <= 1.0:
            raise LeanvisionError(f"Invalid value for `memory_fraction`. Expected a number > 0 and <= 1. "
                                  f"Received: memory_fraction={self.memory_fraction}")
        if self.nesterov and self.optimizer != "sgd":
            raise LeanvisionError(f"`nesterov` applies to optimizer sgd only. Received: optimizer={self.optimizer!r}")


@dataclass(frozen=True)
class RunSource:
    """Which weights of a trained run a command reads, and where its dataset is (evaluate, export, bench)."""

    weights: Literal["best", "last"] = "best"  # best (by validation accuracy) or the last epoch's weights
    data_dir: str | None = None  # where the run's dataset lives, if it moved since training


@dataclass
class RunConfig:
    model: str = "compact"  # registered model name or path to a YAML/JSON model spec
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # builder arguments, e.g. {"width": 16}
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        return cls(
            model=d.get("model", cls.model),
            model_kwargs=dict(d.get("model_kwargs") or {}),
            data=_build(DataConfig, d.get("data") or {}),
            train=_build(TrainConfig, d.get("train") or {}),
        )


def _build(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise LeanvisionError(
            f"Unknown {cls.__name__} field(s): {', '.join(unknown)}. Expected some of: {', '.join(sorted(names))}."
        )
    return cls(**values)


DEFAULT_OPSET = 17  # ONNX Runtime >= 1.14, TensorRT >= 8.6 and OpenVINO >= 2023 all run opset 17


@dataclass
class StudyConfig:
    """What `leanvision study` trains and measures. Example: `run_study(StudyConfig(plan="quick", epochs=2))`."""

    dataset: str = "digits"  # registered name (digits, mnist, ...), image folder or .npz file
    data_dir: str | None = None  # where dataset files live; default $LEANVISION_DATA, else ~/.cache/leanvision
    plan: str | dict = "reference"  # reference | quick | colour | a plan .yaml file
    recipe: str | None = None  # training settings for every variant without its own recipe, e.g. keras
    epochs: int | None = None  # for every variant; default: its own or its recipe's, else 12 (small data) or 3
    seeds: int = 1  # train each variant with this many seeds
    out: str = "study"  # study directory (report, results, variants)
    device: str = "auto"  # training device: auto | cpu | cuda | cuda:N | mps
    precision: Literal["fp32", "bf16", "fp16"] | None = None  # for every variant; default: its own, its recipe's, fp32
    runtimes: tuple[str, ...] = ("torch", "onnxruntime")  # timed runtimes: torch, torch-compile, onnxruntime, openvino
    repeats: int = 50  # timed batch-1 calls per runtime (after warm-up)
    remeasure: bool = False  # re-time finished variants, keeping their weights
    overwrite: bool = False  # retrain variants in the study directory trained with another config; replace its report
    storage: str | None = None  # share the plan with other machines: postgresql://user@host:5432/db or a path.journal
    study_name: str | None = None  # the shared study's name in `storage` (default: leanvision-study)

    def __post_init__(self) -> None:
        self.runtimes = (self.runtimes,) if isinstance(self.runtimes, str) else tuple(self.runtimes)
        if self.study_name is not None and self.storage is None:
            raise LeanvisionError(f"study_name={self.study_name!r} names a shared study, but no `storage` was given. "
                                  "Add storage=postgresql://... (or a path.journal), or drop `study_name`.")
        if self.seeds < 1:
            raise LeanvisionError(f"Invalid seeds={self.seeds}. Expected an integer >= 1.")
        if self.repeats < 1:
            raise LeanvisionError(f"Invalid repeats={self.repeats}. Expected an integer >= 1.")


@dataclass
class OptimizeConfig:
    """What `leanvision optimize` does to a run: technique specs (`--technique "prune:ratio=0.5"`, repeatable) and/or
    the shortcut options, which map to the same technique configs; a shortcut left unset keeps the technique's own
    default (its config dataclass, e.g. `PruneConfig.finetune_epochs`).

    Example: `build_chain(**OptimizeConfig(prune=0.5).shortcuts(), techniques=("quantize:mode=int8",))`.
    """

    techniques: tuple[str, ...] = ()  # a technique as name:key=value,... e.g. "prune:ratio=0.5" (repeatable)
    prune: float | None = None  # structured pruning: fraction of channels removed per layer (0-1)
    prune_method: str | None = None  # channel ranking: l1 | l2 | bn (BN scale); None = the technique's (listed below)
    round_to: int | None = None  # channel counts a multiple of this (8, 16 SIMD); None = the technique's (listed below)
    unstructured: float | None = None  # fraction of single weights zeroed (masks only: no speed-up on dense runtimes)
    quantize: str | None = None  # int8 (static, convs included) | int8-dynamic (Dense layers only) | qat
    distill_from: str | None = None  # teacher run: retrain RUN_DIR's architecture from scratch with its soft targets
    alpha: float | None = None  # distillation: weight of the teacher term, 0-1; None = the technique's (listed below)
    temperature: float | None = None  # distillation: softmax temperature; None = the technique's (listed below)
    finetune_epochs: int | None = None  # fine-tuning after pruning, and QAT; None = the technique's (listed below)
    calibration_size: int | None = None  # int8 calibration images; None = the technique's (listed below)
    fold: bool = True  # fold BatchNorm into the preceding convolutions (done before int8 even when off)
    out: str | None = None  # the new run directory (required)
    data_dir: str | None = None  # where the run's dataset lives, if it moved
    overwrite: bool = False  # replace the output run directory if it exists

    def __post_init__(self) -> None:
        self.techniques = tuple(self.techniques)

    def shortcuts(self) -> dict[str, Any]:
        """The shortcut options given (not None), as `build_chain` arguments."""
        names = ("prune", "prune_method", "round_to", "unstructured", "quantize", "distill_from", "alpha",
                 "temperature", "finetune_epochs", "calibration_size")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class ExportConfig:
    """How `leanvision export` writes a run's model. Example: `export_run("runs/a", **asdict(ExportConfig(opset=18)))`
    (`format` is `fmt` there)."""

    format: Literal["onnx"] = "onnx"  # file format
    out: str | None = None  # output file; default RUN_DIR/model.onnx (an int8 run: RUN_DIR/export/model.onnx)
    opset: int = DEFAULT_OPSET  # ONNX opset (17 runs in ONNX Runtime, TensorRT and OpenVINO)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Example: `BenchConfig(runtimes=("all",), precisions=("fp32", "bf16"), batch_sizes=(1, 64))`."""

    runtimes: tuple[str, ...] = ("all",)  # all, or runtime names: torch, torch-compile, onnxruntime, openvino
    precisions: tuple[str, ...] = ("fp32",)  # fp32 | bf16 | fp16 (fp16: CUDA only)
    batch_sizes: tuple[int, ...] = (1, 256)  # images per call
    repeats: int = 50  # timed calls per batch size (more when an energy counter needs a longer window)
    warmup: int = 10  # untimed calls per batch size, after the separately timed first call
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps | tpu
    price_per_hour: float | None = None  # USD per hour of the machine, for the cost per million images
    threads: int | None = None  # torch (and ONNX Runtime/OpenVINO) CPU threads; None = torch's current setting
    accuracy_batch_size: int = 256  # images per call for the accuracy pass (one of batch_sizes avoids recompiles)

    def __post_init__(self) -> None:  # runtime names are checked by `bench_run` (the registry imports torch)
        if not self.runtimes or ("all" in self.runtimes and len(self.runtimes) > 1):
            raise LeanvisionError(f"Invalid runtimes {','.join(self.runtimes)!r}. Expected 'all' or runtime names, "
                                  "e.g. torch,onnxruntime.")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise LeanvisionError(f"Invalid precision {','.join(bad)!r}. Expected some of: {', '.join(PRECISIONS)}.")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise LeanvisionError(f"Invalid batch sizes {self.batch_sizes}. Expected integers >= 1, e.g. 1,256.")
        if self.repeats < 1 or self.warmup < 0:
            raise LeanvisionError(f"Invalid repeats={self.repeats}, warmup={self.warmup}. Expected >= 1 and >= 0.")
        if self.price_per_hour is not None and self.price_per_hour < 0:
            raise LeanvisionError(f"Invalid price_per_hour={self.price_per_hour}. Expected a price in USD >= 0.")
        if self.accuracy_batch_size < 1:
            raise LeanvisionError(f"Invalid accuracy_batch_size={self.accuracy_batch_size}. Expected >= 1.")
        if self.threads is not None and self.threads < 1:
            raise LeanvisionError(f"Invalid threads={self.threads}. Expected an integer >= 1.")


RUN_FILE_KEYS = ("dataset_notes", "environment")  # stored beside `config` in a run's config.json; not options


def flatten_config(values: Any, where: str = "config") -> dict[str, Any]:
    """One flat {option: value} mapping from any config layout leanvision reads or writes.

    Accepted: flat options (`epochs: 3`, `batch-size: 64`), the nested layout a run stores
    (`model`, `model_kwargs`, `data: {...}`, `train: {...}`), and either wrapped in a top-level `config:` key
    (a run's own config.json). Hyphens in keys become underscores; the caller checks the keys.
    """
    if not isinstance(values, dict):
        raise LeanvisionError(f"{where} must hold a mapping of options (e.g. `epochs: 3`); received "
                              f"{type(values).__name__}.")
    values = dict(values)
    if isinstance(values.get("config"), dict):  # a run's config.json: {"config": {...}, "dataset_notes": ...}
        inner = values.pop("config")
        values = {**{k: v for k, v in values.items() if k not in RUN_FILE_KEYS}, **inner}
    elif "config" in values:
        raise LeanvisionError(f"{where}: `config` must be a mapping of options; received {values['config']!r}.")
    flat: dict[str, Any] = {}
    for section in ("data", "train"):
        nested = values.pop(section, None)
        if nested is None:
            continue
        if not isinstance(nested, dict):
            raise LeanvisionError(f"{where}: `{section}` must be a mapping of options; received {nested!r}.")
        flat.update(nested)
    flat.update(values)
    return {str(k).replace("-", "_"): v for k, v in flat.items()}


def check_value_types(values: dict[str, Any], where: str = "config") -> None:
    """Refuse a value of the wrong type for a DataConfig/TrainConfig field (e.g. `epochs: ten`), in one line."""
    import typing

    for cls in (DataConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in values or values[f.name] is None:
                continue
            value, hint = values[f.name], hints[f.name]
            allowed = tuple(t for t in getattr(hint, "__args__", (hint,)) if t is not type(None))
            ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
            if not ok and float in allowed and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                expected = " or ".join({int: "an integer", float: "a number", str: "a string",
                                        bool: "true or false"}.get(t, t.__name__) for t in allowed)
                raise LeanvisionError(f"{where}: `{f.name}` expects {expected}, received {value!r}.")


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The fields where two (nested) config dicts differ, e.g. `["train.epochs 12 -> 3"]`, for one-line errors."""
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "model_kwargs":
            lines += config_diff(a, b, f"{prefix}{key}.")
        elif _plain(a) != _plain(b):  # a tuple given and a list stored (JSON has no tuples) are the same value
            lines.append(f"{prefix}{key} {a!r} -> {b!r}")
    return lines


def same_config(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Two config dicts hold the same values (a stored JSON list equals the tuple it was written from)."""
    return _plain(old) == _plain(new)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
