"""ResNet-8 from the MLPerf Tiny image-classification benchmark (He et al. 2016 basic blocks, CIFAR-10 sized).

Reference: mlcommons/tiny, benchmark/training/image_classification/keras_model.py. As there, convs keep their bias,
shortcuts are a bare 1x1 conv (no BatchNorm) when the shape changes, and the head is average pooling + Dense.
Differences: stride-2 convs pad 1 px on each side (TF 'same' pads only bottom/right), the L2 kernel regularizer (1e-4)
is left to the optimizer's weight decay, and the softmax is folded into the loss (logits out).
At 32x32x3 with width 16: 78,186 parameters (Keras reports 78,666, counting BatchNorm moving statistics).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import GlobalAvgPool, check_model_args, check_positive_int
from .registry_api import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a residual add; a 1x1 conv shortcut when the stride or channel count changes."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_chans)
        same_shape = stride == 1 and in_chans == out_chans
        self.shortcut = nn.Identity() if same_shape else nn.Conv2d(in_chans, out_chans, 1, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.shortcut(x) + y)


class ResNet(nn.Module):
    """Stem conv3x3 + BN + ReLU, one BasicBlock per stage, global average pool, dropout, linear; returns logits.

    Args:
        num_classes: output width.
        in_chans: input channels.
        widths: output channels of each stage.
        strides: stride of each stage's first conv.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, num_classes: int, in_chans: int, widths: tuple[int, ...], strides: tuple[int, ...],
                 drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_chans, widths[0], 3, padding=1), bn=nn.BatchNorm2d(widths[0]), relu=nn.ReLU(),
        ))
        in_widths = (widths[0], *widths[:-1])
        self.stages = nn.Sequential(*(BasicBlock(i, o, s) for i, o, s in zip(in_widths, widths, strides)))
        self.head = nn.Sequential(OrderedDict(
            pool=GlobalAvgPool(), dropout=nn.Dropout(drop_rate), fc=nn.Linear(widths[-1], num_classes),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))  # (N, C, H, W) -> (N, 4w, H/4, W/4) -> (N, num_classes)


@MODELS.register()
def resnet8(
    num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28, drop_rate: float = 0.0,
    width: int = 16,
) -> nn.Module:
    """MLPerf Tiny ResNet-8: stages of width, 2*width, 4*width filters with strides 1, 2, 2.

    Example: `create_model("resnet8", in_chans=3, img_size=32)` (78,186 parameters).
    """
    check_model_args("resnet8", num_classes, in_chans, img_size, drop_rate)
    check_positive_int("resnet8", "width", width)
    return ResNet(num_classes, in_chans, (width, 2 * width, 4 * width), (1, 2, 2), drop_rate)
