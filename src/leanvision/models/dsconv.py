"""A small MobileNet-v1-style net (Howard et al. 2017): depthwise 3x3 + pointwise 1x1 blocks, sized for 28-32 px."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import ModelSpecError
from .layers import ConvBnAct, GlobalAvgPool, check_model_args
from .registry_api import MODELS

STEM_WIDTH = 32
BLOCKS = ((64, 2), (128, 2), (128, 1))  # (output channels at width_mult=1, stride) of each separable block


def _scale(channels: int, width_mult: float) -> int:
    """Channels scaled and rounded to a multiple of 8 (MobileNet's rule), at least 8."""
    return max(8, int(channels * width_mult + 4) // 8 * 8)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1):
        super().__init__(OrderedDict(
            depthwise=ConvBnAct(in_chans, in_chans, 3, stride, groups=in_chans),
            pointwise=ConvBnAct(in_chans, out_chans, 1),
        ))


class DSConvNet(nn.Module):
    """Stem conv3x3 + BN + ReLU, depthwise-separable blocks, global average pool, dropout, linear; returns logits.

    Args:
        num_classes: output width.
        in_chans: input channels.
        width_mult: multiplier on every layer's channel count.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, num_classes: int, in_chans: int, width_mult: float = 1.0, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        widths = [_scale(STEM_WIDTH, width_mult)] + [_scale(c, width_mult) for c, _ in BLOCKS]
        self.stem = ConvBnAct(in_chans, widths[0], 3)
        self.blocks = nn.Sequential(*(
            DepthwiseSeparable(widths[i], widths[i + 1], stride) for i, (_, stride) in enumerate(BLOCKS)
        ))  # (N, 128, H/4, W/4) at width_mult=1
        self.head = nn.Sequential(OrderedDict(
            pool=GlobalAvgPool(), dropout=nn.Dropout(drop_rate), fc=nn.Linear(widths[-1], num_classes),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@MODELS.register()
def dsconv(
    num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28, drop_rate: float = 0.0,
    width_mult: float = 1.0,
) -> nn.Module:
    """Depthwise-separable conv net, channels 32-64-128-128 at width_mult=1.0 (about 31k parameters).

    Example: `create_model("dsconv", width_mult=0.5)`.
    """
    check_model_args("dsconv", num_classes, in_chans, img_size, drop_rate)
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ModelSpecError(f"Invalid `width_mult` for model 'dsconv': expected a number > 0. "
                             f"Received: width_mult={width_mult!r}. Use e.g. width_mult=0.5.")
    return DSConvNet(num_classes, in_chans, float(width_mult), drop_rate)
