"""Typed run configuration: defaults live here and only here (nanoGPT's block of globals, made typed).

`RunConfig` = what to train (`model`), on what (`data`), and how (`train`). Every field is validated at construction
so a bad value fails before any data is loaded, with a one-line message naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import LeanvisionError
from .registry import did_you_mean

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "warmup", "onecycle", "cosine", "triangle")
PRECISIONS = ("fp32", "bf16", "fp16")
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
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # images per optimizer step
    optimizer: str = "adam"  # sgd (momentum, optional Nesterov) | adam | adamw
    learning_rate: float = 1e-3  # peak learning rate (reached after warm-up)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (SGD only)
    weight_decay: float = 0.0  # decoupled for adamw, L2-in-gradient for sgd/adam (PyTorch semantics)
    schedule: str = "constant"  # constant | warmup (constant after linear warm-up) | onecycle | cosine | triangle
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
        elif a != b:
            lines.append(f"{prefix}{key} {a!r} -> {b!r}")
    return lines
