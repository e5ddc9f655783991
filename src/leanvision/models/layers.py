"""Small blocks and argument checks shared by the model families and the declarative spec."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelSpecError

# Keras activation names -> PyTorch modules. Softmax is over the channel axis (dim 1), which is Keras's last axis.
ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "gelu": nn.GELU,  # exact erf form, like keras.activations.gelu(approximate=False)
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=1),
    "elu": nn.ELU,
    "leaky_relu": lambda negative_slope=0.2: nn.LeakyReLU(negative_slope),  # keras.activations.leaky_relu default
    "hardswish": nn.Hardswish,  # = Keras hard_silu / hard_swish
}
ACTIVATION_ALIASES = {"swish": "silu", "hard_swish": "hardswish", "hard_silu": "hardswish"}


def make_activation(name: str, **kwargs) -> nn.Module:
    """Returns the PyTorch module for a Keras activation name. Example: `make_activation("relu6")`."""
    return ACTIVATIONS[ACTIVATION_ALIASES.get(name, name)](**kwargs)


def to_2tuple(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(model: str, arg: str, value: object) -> None:
    if not _is_int(value) or value < 1:
        raise ModelSpecError(
            f"Invalid `{arg}` for model {model!r}: expected an integer >= 1. Received: {arg}={value!r}. "
            f"Pass a positive integer."
        )


def check_model_args(
    model: str, num_classes: int, in_chans: int, img_size: int | tuple[int, int], drop_rate: float, min_size: int = 1
) -> tuple[int, int]:
    """Validates the arguments every builder shares and returns the input size as (height, width)."""
    check_positive_int(model, "num_classes", num_classes)
    check_positive_int(model, "in_chans", in_chans)
    ok = _is_int(img_size) or (
        isinstance(img_size, (tuple, list)) and len(img_size) == 2 and all(_is_int(v) for v in img_size)
    )
    if not ok or min(to_2tuple(img_size)) < min_size:
        raise ModelSpecError(
            f"Invalid `img_size` for model {model!r}: expected an integer or (height, width) pair, each >= {min_size}. "
            f"Received: img_size={img_size!r}. Pass a larger image size or pick another model."
        )
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
        raise ModelSpecError(
            f"Invalid `drop_rate` for model {model!r}: expected a float in [0, 1). Received: drop_rate={drop_rate!r}. "
            f"Use e.g. drop_rate=0.2."
        )
    return to_2tuple(img_size)


class Dropout(nn.Dropout):
    """nn.Dropout whose training mask is drawn faster on CPUs: `torch.rand(shape) >= p` takes a quarter of the time
    of `bernoulli_` there (a 128 x 50,176 activation, seed-dropout's Flatten at 32x32: 29 vs 120 ms per batch).
    Same semantics: each element kept with probability 1 - p and scaled by 1 / (1 - p); identity in eval mode;
    other devices (and p of 0 or 1, in-place use) take nn.Dropout's path. Exports, folds and prunes as nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or self.inplace or not 0.0 < self.p < 1.0:
            return super().forward(x)
        mask = (torch.rand(x.shape, device=x.device) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask


class ConvBnAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU, with 'same'-style padding for odd kernels. Example: `ConvBnAct(16, 32, stride=2)`.

    The conv has no bias by default: the BatchNorm shift makes it redundant.
    """

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
        bias: bool = False, act: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_chans)
        if act:
            self.act = nn.ReLU(inplace=True)


@torch.no_grad()
def keras_init_(model: nn.Module) -> nn.Module:
    """Re-initializes Conv/Linear layers like Keras defaults: glorot_uniform kernels, zero biases.

    Keras computes fans from the kernel shape (kh, kw, in, out); for a depthwise kernel (kh, kw, C, multiplier) that is
    fan_in = kh*kw*C and fan_out = kh*kw*multiplier, which the `out_channels // groups` below reproduces.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            receptive = m.kernel_size[0] * m.kernel_size[1]
            fan_in, fan_out = receptive * m.in_channels, receptive * m.out_channels // m.groups
        elif isinstance(m, nn.Linear):
            fan_in, fan_out = m.in_features, m.out_features
        else:
            continue
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        m.weight.uniform_(-bound, bound)
        if m.bias is not None:
            m.bias.zero_()
    return model


class AvgPool2dSame(nn.Module):
    """Average pooling with TensorFlow 'same' padding (possibly asymmetric) that excludes the padding from the mean.

    Args:
        kernel_size: pooling window (height, width).
        stride: window step (height, width).
        padding: zero padding (left, right, top, bottom), as `F.pad` takes it.
    """

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int]):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = F.avg_pool2d(F.pad(x, self.padding), self.kernel_size, self.stride)
        # Fraction of each window that lies inside the image; shape-only, so tracing and ONNX export stay static.
        inside = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), self.padding), self.kernel_size, self.stride)
        return total / inside


class GlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C) mean over the spatial axes (Keras GlobalAveragePooling2D); exports as ONNX ReduceMean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class GlobalMaxPool(nn.Module):
    """(N, C, H, W) -> (N, C) max over the spatial axes (Keras GlobalMaxPooling2D); exports as ONNX ReduceMax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))
