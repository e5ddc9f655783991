"""Reference "seed" models, exactly as the Keras reference defines them (padding 'valid', stride 1, ReLU).

The Keras originals end in `Dense(num_classes, activation="softmax")`; here they return logits and the softmax is folded
into the cross-entropy loss. Kernels use Keras's glorot-uniform init and zero biases so training starts like the
reference. Keras flattens NHWC and we flatten NCHW: the parameter counts are identical, only the feature order differs.
At 28x28x1 with 10 classes: seed-baseline 387,466 parameters and 11.18M MACs, seed-shallow 216,650 parameters.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..errors import ModelSpecError
from .layers import Dropout, check_model_args, keras_init_
from .registry_api import MODELS


def _seed_net(
    model: str, num_classes: int, in_chans: int, img_size: int | tuple[int, int], drop_rate: float,
    num_convs: int = 2, l2: float = 0.0,
) -> nn.Sequential:
    height, width = check_model_args(model, num_classes, in_chans, img_size, drop_rate, min_size=2 * num_convs + 1)
    channels = (in_chans, 32, 64)[: num_convs + 1]
    layers = OrderedDict()
    for i in range(num_convs):
        layers[f"conv{i + 1}"] = nn.Conv2d(channels[i], channels[i + 1], kernel_size=3)  # 'valid': -2 px per conv
        layers[f"relu{i + 1}"] = nn.ReLU()
    layers["flatten"] = nn.Flatten()  # (N, C * (H - 2k) * (W - 2k))
    if drop_rate > 0:
        layers["dropout"] = Dropout(drop_rate)  # before the classifier, never after it
    layers["fc"] = nn.Linear(channels[-1] * (height - 2 * num_convs) * (width - 2 * num_convs), num_classes)
    if l2:
        layers["fc"].kernel_regularizer = {"l2": l2}  # Keras kernel_regularizer=l2(l2); see regularization_loss
    net = keras_init_(nn.Sequential(layers))
    net.num_classes = num_classes
    return net


@MODELS.register()
def seed_baseline(
    num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28, drop_rate: float = 0.0
) -> nn.Module:
    """Conv2D(32, 3x3, relu) -> Conv2D(64, 3x3, relu) -> Flatten -> Dense(num_classes); returns logits.

    Example: `create_model("seed-baseline")` (387,466 parameters at 28x28x1, 10 classes).
    """
    return _seed_net("seed-baseline", num_classes, in_chans, img_size, drop_rate)


@MODELS.register()
def seed_shallow(
    num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28, drop_rate: float = 0.0
) -> nn.Module:
    """Conv2D(32, 3x3, relu) -> Flatten -> Dense(num_classes); returns logits.

    Example: `create_model("seed-shallow")` (216,650 parameters at 28x28x1, 10 classes).
    """
    return _seed_net("seed-shallow", num_classes, in_chans, img_size, drop_rate, num_convs=1)


@MODELS.register()
def seed_l2(
    num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28, drop_rate: float = 0.0,
    l2: float = 0.01,
) -> nn.Module:
    """seed-baseline with `kernel_regularizer=l2(0.01)` on the Dense layer; returns logits.

    The penalty `l2 * sum(fc.weight ** 2)` is added by `regularization_loss(model)` (the trainer adds it to the loss).
    Example: `create_model("seed-l2", l2=0.001)`.
    """
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or l2 < 0:
        raise ModelSpecError(f"Invalid `l2` for model 'seed-l2': expected a number >= 0. Received: l2={l2!r}. "
                             f"Use e.g. l2=0.01.")
    return _seed_net("seed-l2", num_classes, in_chans, img_size, drop_rate, l2=float(l2))


@MODELS.register()
def seed_dropout(
    num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28, drop_rate: float = 0.5
) -> nn.Module:
    """seed-baseline with Dropout(0.5) after Flatten, before the classifier Dense; returns logits.

    Placing Dropout after the softmax output (as some Keras tutorials do) is a known mistake: it zeroes class
    probabilities at random instead of regularizing features, so the dropout goes before the classifier here.
    Example: `create_model("seed-dropout", drop_rate=0.3)`.
    """
    return _seed_net("seed-dropout", num_classes, in_chans, img_size, drop_rate)
