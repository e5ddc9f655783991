"""fastnet: the smallest conv net that still trains to >= 99% MNIST test accuracy in about two epochs.

Built for the `fast` training recipe (leanvision.recipes): few, wide-enough convolutions, pooling right after the
first one so BatchNorm and ReLU run on a quarter of the pixels, and a global max pool instead of a big Dense layer.
At 28x28x1 and width 16: about 24k parameters and 0.86M MACs per image (seed-baseline: 387k and 11.18M).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import check_model_args, check_positive_int
from .registry_api import MODELS


def _conv_bn_relu(in_chans: int, out_chans: int, kernel: int, padding: int,
                  pool: bool = False) -> list[tuple[str, nn.Module]]:
    conv = [("conv", nn.Conv2d(in_chans, out_chans, kernel, padding=padding, bias=False))]
    pool_layer = [("pool", nn.MaxPool2d(2))] if pool else []  # pool before BN/ReLU: they run on 1/4 of the pixels
    return conv + pool_layer + [("bn", nn.BatchNorm2d(out_chans)), ("relu", nn.ReLU(inplace=True))]


class FastNet(nn.Module):
    """conv5x5(w) -> pool -> conv3x3(2w) -> pool -> conv3x3(4w) -> global max pool -> dropout -> linear.

    Convolutions are 'valid' on inputs of 20 px or more (28 -> 24 -> 12 -> 10 -> 5 -> 3) and padded on smaller
    ones so any input of 8 px or more works. Returns logits.
    """

    def __init__(self, num_classes: int, in_chans: int, size: int, width: int = 16, drop_rate: float = 0.0,
                 pool_first: bool = False):
        super().__init__()
        self.num_classes = num_classes
        pad5, pad3 = (0, 0) if size >= 20 else (2, 1)
        p = pool_first
        self.features = nn.Sequential(OrderedDict([
            ("block1", nn.Sequential(OrderedDict(_conv_bn_relu(in_chans, width, 5, pad5, pool=p)))),
            *([] if p else [("pool1", nn.MaxPool2d(2))]),  # (N, w, 12, 12) at 28x28
            ("block2", nn.Sequential(OrderedDict(_conv_bn_relu(width, 2 * width, 3, pad3, pool=p)))),
            *([] if p else [("pool2", nn.MaxPool2d(2))]),  # (N, 2w, 5, 5)
            ("block3", nn.Sequential(OrderedDict(_conv_bn_relu(2 * width, 4 * width, 3, pad3)))),  # (N, 4w, 3, 3)
        ]))
        self.head = nn.Sequential(OrderedDict([
            ("pool", nn.AdaptiveMaxPool2d(1)), ("flatten", nn.Flatten()), ("dropout", nn.Dropout(drop_rate)),
            ("fc", nn.Linear(4 * width, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@MODELS.register()
def fastnet(num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28, drop_rate: float = 0.0,
            width: int = 16, pool_first: bool = False) -> nn.Module:
    """Tiny BN conv net for fast training: ~24k parameters, 0.86M MACs at 28x28x1 (width 16).

    `pool_first=True` max-pools straight after each of the first two convs (conv -> pool -> BN -> ReLU, as airbench
    does), so BatchNorm and ReLU touch a quarter of the pixels.

    Example: `create_model("fastnet", width=24)`.
    """
    height, width_px = check_model_args("fastnet", num_classes, in_chans, img_size, drop_rate, min_size=8)
    check_positive_int("fastnet", "width", width)
    return FastNet(num_classes, in_chans, min(height, width_px), width, drop_rate, pool_first=bool(pool_first))
