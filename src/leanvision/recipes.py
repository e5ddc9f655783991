"""Named training recipes: model, optimizer, schedule, batch size, precision and epochs chosen together.

`leanvision train --dataset mnist --recipe fast --out RUN_DIR` fills every setting the user did not give from the
recipe (`apply_recipe`); flags given explicitly still win. `leanvision study --recipe keras` gives every variant a
recipe's training settings. `keras` is the reference Keras code's training (constant Adam 1e-3, batch 128, no
augmentation), for comparisons with it; TrainConfig's plain defaults are the better one-cycle Adam 3e-3. `fast` and
`accurate` pick by input shape (grayscale 28x28-like vs colour 32x32-like) and were tuned on validation splits only
(benchmarks/time_to_accuracy.py measures them on the test sets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .registry import Registry


@dataclass(frozen=True)
class Recipe:
    """A complete training setup for one kind of input.

    Args:
        model: registered model name; None = the recipe sets training only (the model is the user's choice).
        model_kwargs: builder arguments.
        train: TrainConfig fields.
        data: DataConfig fields (e.g. val_fraction).
    """

    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


RECIPES: Registry = Registry("recipe")


def fast_precision(device: str = "auto") -> str:
    """bf16 where the hardware has native bf16 math (AVX512-BF16/AMX CPUs, Ampere+ GPUs, TPUs), else fp32 (always on
    Apple MPS, whose bf16 autocast depends on the torch and macOS version)."""
    device = (device or "auto").strip().lower()
    if device == "auto" and not torch.cuda.is_available() and not fast_channels_last("auto"):
        device = "mps"  # what auto resolves to here
    if device == "mps":
        return "fp32"
    if device in ("tpu", "xla"):
        return "bf16"
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    cpu = getattr(torch, "cpu", None)
    has_bf16 = bool(cpu and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    has_amx = bool(cpu and getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return "bf16" if has_bf16 or has_amx else "fp32"


def fast_channels_last(device: str = "auto") -> bool:
    """NHWC only where `setup_device` accepts it (CUDA and CPU kernels); never on MPS or TPU, where it is refused."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        mps = getattr(torch.backends, "mps", None)
        return torch.cuda.is_available() or not (mps is not None and mps.is_available())  # auto: cuda, mps, cpu
    return device == "cpu" or device == "cuda" or device.startswith("cuda:")


@RECIPES.register("fast")
def fast(input_shape: tuple[int, int, int], device: str = "auto") -> Recipe:
    """Fastest route to a good model: MNIST-like grayscale -> fastnet, 2 epochs; colour photos -> whitenet
    (32, 128, 128), 6 epochs of airbench's training (see `_colour`).

    Example: `fast((1, 28, 28)).train["epochs"] == 2`.
    """
    channels = input_shape[0]
    common = dict(optimizer="sgd", momentum=0.9, nesterov=True, schedule="onecycle", label_smoothing=0.1,
                  precision=fast_precision(device),
                  channels_last=fast_channels_last(device))  # NHWC: faster bf16 conv/pool on CUDA and CPU
    if channels == 1:
        return Recipe(model="fastnet", model_kwargs={"width": 16, "pool_first": True},
                      train=dict(common, epochs=2, batch_size=128, learning_rate=0.1, weight_decay=5e-4,
                                 augment="none"))
    return _colour(device, widths=(32, 128, 128), epochs=6)


@RECIPES.register("accurate")
def accurate(input_shape: tuple[int, int, int], device: str = "auto") -> Recipe:
    """A longer budget spent well: MNIST-like grayscale -> fastnet width 32, 8 epochs; colour photos -> whitenet
    (64, 256, 256), 10 epochs (about 6x the work of `fast`).

    Example: `accurate((3, 32, 32)).model_kwargs["widths"] == (64, 256, 256)`.
    """
    if input_shape[0] == 1:
        return Recipe(model="fastnet", model_kwargs={"width": 32, "pool_first": True},
                      train=dict(optimizer="sgd", momentum=0.9, nesterov=True, schedule="onecycle",
                                 label_smoothing=0.1, precision=fast_precision(device),
                                 channels_last=fast_channels_last(device), epochs=8, batch_size=128,
                                 learning_rate=0.1, weight_decay=5e-4, augment="none"))
    return _colour(device, widths=(64, 256, 256), epochs=10)


def _colour(device: str, widths: tuple[int, int, int], epochs: int) -> Recipe:
    """airbench's training of whitenet, its hyperparameters translated to a mean loss at batch 512 (lr 11.5 per 1024
    summed examples -> 0.75; on validation, batch 512 beat airbench's 1024 by 1.3 pp at the same images/s here):
    Nesterov SGD, momentum 0.85, triangular learning rate peaking at 0.75, BatchNorm shifts at 64x that rate, label
    smoothing 0.2, lookahead weight averaging, 2-pixel translations and flips, flip test-time augmentation inside the
    model."""
    return Recipe(model="whitenet", model_kwargs={"widths": widths},
                  train=dict(optimizer="sgd", momentum=0.85, nesterov=True, schedule="triangle", learning_rate=0.75,
                             weight_decay=1.33e-3, norm_lr_scale=64.0, label_smoothing=0.2, lookahead=True,
                             batch_size=512, epochs=epochs, augment="translate-flip",
                             precision=fast_precision(device), channels_last=fast_channels_last(device)))


@RECIPES.register("keras")
def keras(input_shape: tuple[int, int, int], device: str = "auto") -> Recipe:
    """The reference Keras code's training, for like-for-like comparisons: `model.compile(optimizer="adam")` (constant
    learning rate 1e-3), `batch_size=128`, no augmentation, no label smoothing or weight decay, fp32. Any model.

    Example: `keras((1, 28, 28)).train["learning_rate"] == 1e-3`.
    """
    return Recipe(train=dict(optimizer="adam", learning_rate=1e-3, schedule="constant", warmup_epochs=0.0,
                             batch_size=128, augment="none", label_smoothing=0.0, weight_decay=0.0, precision="fp32"))


def apply_recipe(recipe: Recipe, values: dict[str, Any]) -> dict[str, Any]:
    """Flat options (`model`, `model_kwargs`, DataConfig and TrainConfig fields) with every option they lack taken
    from `recipe`; options already in `values` win. The recipe's model applies only when `values` names none.

    Example: `apply_recipe(keras((1, 28, 28)), {"epochs": 3})["learning_rate"] == 1e-3`.
    """
    values = dict(values)
    if recipe.model is not None and "model" not in values:
        values["model"] = recipe.model
        values["model_kwargs"] = {**recipe.model_kwargs, **(values.get("model_kwargs") or {})}
    return {**recipe.train, **values}


def resolve_recipe(name: str, input_shape: tuple[int, int, int], device: str = "auto") -> Recipe:
    """The recipe `name` for inputs of `input_shape` (C, H, W). Unknown names list the available ones."""
    return RECIPES.get(name)(input_shape, device)
