"""LeNet-5 (LeCun et al. 1998), adapted: ReLU, max pooling, conv1 padded by 2 so 28x28 inputs get the 32x32 layout."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import check_model_args
from .registry_api import MODELS


class LeNet5(nn.Module):
    """conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> dropout -> fc(num_classes); returns logits.

    Args:
        num_classes: output width.
        in_chans: input channels.
        img_size: input (height, width), used to size fc1 (16 * 5 * 5 = 400 inputs at 28x28).
        drop_rate: dropout before the classifier.
    """

    def __init__(self, num_classes: int, in_chans: int, img_size: tuple[int, int], drop_rate: float):
        super().__init__()
        # conv2 is 'valid' as in the paper; below 12 px its input is under 6x6, so pad it to keep a 5x5 kernel fitting.
        pad2 = 0 if min(img_size) >= 12 else 2
        flat_h, flat_w = ((size // 2 + 2 * pad2 - 4) // 2 for size in img_size)
        self.num_classes = num_classes
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(in_chans, 6, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),  # (N, 6, H/2, W/2)
            conv2=nn.Conv2d(6, 16, 5, padding=pad2), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),  # (N, 16, 5, 5) at 28
            flatten=nn.Flatten(),
        ))
        self.head = nn.Sequential(OrderedDict(
            fc1=nn.Linear(16 * flat_h * flat_w, 120), relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84), relu4=nn.ReLU(),
            dropout=nn.Dropout(drop_rate), fc=nn.Linear(84, num_classes),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@MODELS.register()
def lenet5(
    num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28, drop_rate: float = 0.0
) -> nn.Module:
    """LeNet-5 for small grayscale or color images (img_size >= 8); 61,706 parameters at 28x28x1.

    Example: `create_model("lenet5", in_chans=3, img_size=32)`.
    """
    size = check_model_args("lenet5", num_classes, in_chans, img_size, drop_rate, min_size=8)
    return LeNet5(num_classes, in_chans, size, drop_rate)
