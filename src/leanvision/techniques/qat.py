"""Quantization-aware training (Jacob et al. 2018): fine-tune with the int8 rounding simulated ("fake quant").

Each quantized Conv2d/Linear is wrapped so that, in the forward pass, its input is rounded to the uint8 (or int8)
grid of a per-tensor range and its weight to a per-output-channel symmetric int8 grid, exactly the scheme ONNX
Runtime's static QDQ quantizer uses (`scale = max|w| / 127` per channel; activations `scale = (max - min) / 255` over
a range that includes 0, calibrated by MinMax). Gradients pass the rounding straight through (`torch.fake_quantize_*`).
The same layers are left out as in the ORT conversion (a tiny-reduction stem conv), and the classifier's output is
fake-quantized too, since ORT quantizes the logits.

Conversion to a real int8 model is done by ORT `quantize_static` on the fine-tuned weights with the same calibration
images; `agreement` checks that the int8 model predicts what the fake-quant model predicts.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..runtimes.eager import predict_logits
from .onnx_graph import STEM_MIN_REDUCTION


class ActivationFakeQuant(nn.Module):
    """Per-tensor affine fake quantization with a MinMax range; `observing=True` records the range instead."""

    def __init__(self, dtype: str = "uint8"):
        super().__init__()
        self.quant_min, self.quant_max = (0, 255) if dtype == "uint8" else (-128, 127)
        self.register_buffer("low", torch.tensor(float("inf")))
        self.register_buffer("high", torch.tensor(float("-inf")))
        self.observing = False

    def qparams(self) -> tuple[float, int]:
        """ORT's rule: the range is widened to include 0, scale = range / levels, zero point rounded."""
        low, high = min(float(self.low), 0.0), max(float(self.high), 0.0)
        scale = (high - low) / (self.quant_max - self.quant_min) or 1.0
        return scale, int(round(self.quant_min - low / scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.low.copy_(torch.minimum(self.low, x.detach().min()))
            self.high.copy_(torch.maximum(self.high, x.detach().max()))
            return x
        if not torch.isfinite(self.low):
            return x  # not calibrated yet
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, self.quant_min, self.quant_max)


def fake_quant_weight(weight: torch.Tensor, levels: int = 127) -> torch.Tensor:
    """Per-output-channel symmetric int8 fake quantization of a weight, levels -127..127 (ORT's int8 weights; -64..64
    with `levels=64`, ORT's `reduce_range`)."""
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())))
    scale = torch.where(absmax > 0, absmax / levels, torch.ones_like(absmax)).float()
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -levels, levels)


class FakeQuantLayer(nn.Module):
    """A Conv2d or Linear with fake-quantized input and weight (and output, for the classifier)."""

    def __init__(self, layer: nn.Module, dtype: str, quantize_output: bool = False, weight_levels: int = 127):
        super().__init__()
        self.layer, self.weight_levels = layer, weight_levels
        self.input_quant = ActivationFakeQuant(dtype)
        self.output_quant = ActivationFakeQuant(dtype) if quantize_output else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w, layer = self.input_quant(x), fake_quant_weight(self.layer.weight, self.weight_levels), self.layer
        if isinstance(layer, nn.Conv2d):
            y = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        else:
            y = F.linear(x, w, layer.bias)
        return self.output_quant(y) if self.output_quant is not None else y


def _layers_in_call_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    names = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(names[m])) for m in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((2, *input_shape)))
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(order))


def prepare_(model: nn.Module, input_shape: tuple[int, ...], dtype: str = "uint8",
             keep_stem_fp32: bool = True, reduce_range: bool = False) -> list[str]:
    """Wrap the quantizable layers of a folded model in `FakeQuantLayer`s in place (7-bit weights with
    `reduce_range`, as ORT will convert them); returns the wrapped names."""
    order = _layers_in_call_order(model, input_shape)
    if keep_stem_fp32 and order:
        first = model.get_submodule(order[0])
        if isinstance(first, nn.Conv2d) and first.groups == 1 and \
                first.in_channels * first.kernel_size[0] * first.kernel_size[1] < STEM_MIN_REDUCTION:
            order = order[1:]
    for index, name in enumerate(order):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FakeQuantLayer(getattr(parent, child), dtype, quantize_output=index == len(order) - 1,
                                                   weight_levels=64 if reduce_range else 127))
    return order


@torch.no_grad()
def calibrate_(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Reset and record every activation range over `images` (the model runs unquantized while observing)."""
    quants = [m for m in model.modules() if isinstance(m, ActivationFakeQuant)]
    for q in quants:
        q.low.fill_(float("inf"))
        q.high.fill_(float("-inf"))
        q.observing = True
    model.eval()
    try:
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    finally:
        for q in quants:
            q.observing = False


def fake_quant_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().eval()


def strip_(model: nn.Module) -> nn.Module:
    """Replace every `FakeQuantLayer` by its plain layer (the fine-tuned fp32 weights), in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.layer)
    return model


def agreement(reference: nn.Module, candidate: nn.Module, dataset) -> dict[str, float]:
    """Top-1 agreement and largest logit difference of two models on the test split (validation if no test)."""
    _, split = dataset.evaluation_split
    cpu = torch.device("cpu")
    ref, _ = predict_logits(reference, split, dataset.mean, dataset.std, cpu)
    cand, _ = predict_logits(candidate, split, dataset.mean, dataset.std, cpu)
    return {"top1_agreement": (ref.argmax(1) == cand.argmax(1)).float().mean().item(),
            "max_abs_logit_diff": (ref - cand).abs().max().item(), "images": len(ref)}
