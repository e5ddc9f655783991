"""whitenet: the colour-photo net of the CIFAR-10 recipes, after airbench (Keller Jordan, 2024).

A frozen 2x2 patch-whitening convolution (initialized from the training data's patch covariance, so the first layer
sees decorrelated inputs from step one), then three groups of conv -> max-pool -> BatchNorm -> GELU -> conv ->
BatchNorm -> GELU, a global max pool and a bias-free linear head scaled by 1/9. Convolutions start as identities
(Dirac init on their first input channels); BatchNorm scales are frozen at 1 and only the shifts train (the recipe
gives them a 64x learning rate). In eval mode the model averages its logits over the image and its mirror image
(flip test-time augmentation, `flip_tta=True`): that doubles inference work, and exported ONNX graphs include it, so
every latency and accuracy leanvision reports is that of the same deployed model.

At 32x32x3: widths (32, 128, 128) -> 0.50M parameters, 33M MACs per view; (64, 256, 256) -> 1.97M and 118M
(airbench94's net).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import ModelSpecError
from .layers import check_model_args, check_positive_int
from .registry_api import MODELS

WHITEN_EPS = 5e-4  # added to the patch-covariance eigenvalues before whitening (airbench's value)
LOGIT_SCALE = 1 / 9  # without it the head's initial logits are too large for the recipe's learning rate


ACTS = {"gelu": nn.GELU, "relu": nn.ReLU}


def frozen_scale_bn(num_features: int) -> nn.BatchNorm2d:
    """BatchNorm whose scale stays 1 (not trained); running statistics follow batches quickly (momentum 0.4). A plain
    BatchNorm2d, so Conv-BN folding recognizes it."""
    bn = nn.BatchNorm2d(num_features, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad = False
    return bn


def _conv(in_chans: int, out_chans: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False)
    with torch.no_grad():  # identity on the first in_chans outputs: a deep net that starts close to a shallow one
        nn.init.dirac_(conv.weight[: min(in_chans, out_chans)])
    return conv


def _group(in_chans: int, out_chans: int, act: str) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv1", _conv(in_chans, out_chans)), ("pool", nn.MaxPool2d(2)), ("norm1", frozen_scale_bn(out_chans)),
        ("act1", ACTS[act]()), ("conv2", _conv(out_chans, out_chans)), ("norm2", frozen_scale_bn(out_chans)),
        ("act2", ACTS[act]()),
    ]))


class WhiteNet(nn.Module):
    """whiten(2x2, frozen) -> act -> 3 x [conv, pool, BN, act, conv, BN, act] -> global max pool -> linear / 9."""

    def __init__(self, num_classes: int, in_chans: int, widths: tuple[int, int, int], flip_tta: bool = True,
                 act: str = "gelu"):
        super().__init__()
        self.num_classes = num_classes
        self.flip_tta = flip_tta
        whiten_chans = 2 * in_chans * 2 * 2  # each whitened patch direction and its negative
        self.whiten = nn.Conv2d(in_chans, whiten_chans, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad = False  # set from data by init_from_data, then fixed
        nn.init.zeros_(self.whiten.bias)
        self.register_buffer("whitened", torch.zeros((), dtype=torch.bool))  # saved: loaded runs are not re-inited
        chans = [whiten_chans, *widths]
        groups = [(f"group{i + 1}", _group(chans[i], chans[i + 1], act)) for i in range(len(widths))]
        self.features = nn.Sequential(OrderedDict([("act", ACTS[act]()), *groups]))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.whiten(x))).flatten(1)
        return self.fc(x) * LOGIT_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.flip_tta:
            return self._logits(x)
        return 0.5 * (self._logits(x) + self._logits(x.flip(-1)))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from normalized training images (N, C, H, W): the eigenvectors of the 2x2
        patch covariance scaled by 1/sqrt(eigenvalue + eps), each with its negative. Called by `fit` before
        training; does nothing once done (a resumed, loaded or fine-tuned model keeps its filters)."""
        if self.whitened:
            return
        c, (h, w) = images.shape[1], self.whiten.kernel_size
        x = images.float()
        patches = x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # largest first
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + WHITEN_EPS)[:, None]).reshape(-1, c, h, w)
        self.whiten.weight.copy_(torch.cat((filters, -filters)).to(self.whiten.weight))
        self.whitened.fill_(True)


def _widths(value) -> tuple[int, int, int]:
    widths = tuple(value) if isinstance(value, (list, tuple)) else (value, 4 * value, 4 * value)
    if len(widths) != 3:
        raise ValueError
    for w in widths:
        check_positive_int("whitenet", "widths", w)
    return widths  # type: ignore[return-value]


@MODELS.register()
def whitenet(num_classes: int = 10, in_chans: int = 3, img_size: int | tuple[int, int] = 32, drop_rate: float = 0.0,
             widths: int | list[int] | tuple[int, int, int] = (32, 128, 128), flip_tta: bool = True,
             act: str = "gelu") -> nn.Module:
    """airbench-style colour net with a frozen patch-whitening first layer: 0.50M parameters, 33M MACs per view at
    32x32x3 with the default widths (32, 128, 128); `widths=64` means (64, 256, 256). Needs inputs of 16 px or more.
    `flip_tta` averages over the mirror image in eval mode (twice the inference MACs, about +0.5 pp accuracy).
    `act="relu"` instead of GELU (as fast to train here; int8 ONNX Runtime measured no faster with it).

    Example: `create_model("whitenet", widths=(64, 256, 256))`.
    """
    check_model_args("whitenet", num_classes, in_chans, img_size, drop_rate, min_size=16)
    try:
        w = _widths(widths)
    except (ValueError, TypeError):
        raise ModelSpecError(f"Invalid `widths` for model 'whitenet': expected one integer or three. Received: "
                             f"widths={widths!r}. Pass e.g. widths=[32, 128, 128].") from None
    if act not in ACTS:
        raise ModelSpecError(f"Invalid `act` for model 'whitenet': expected one of {', '.join(ACTS)}. Received: "
                             f"act={act!r}.")
    return WhiteNet(num_classes, in_chans, w, flip_tta=bool(flip_tta), act=act)
