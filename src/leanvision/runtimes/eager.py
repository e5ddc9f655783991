"""The `torch` runtime: eager PyTorch, fp32 or autocast bf16/fp16."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from ..data.normalize import normalizer
from ..device import autocast, check_autocast, inference_context
from ..errors import LeanvisionError
from .base import PRECISIONS, RUNTIMES, Predict, Runtime
from .onnx_model import is_onnx


@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """Eager PyTorch on a private copy of the model, in eval mode under `torch.inference_mode`.

    Precisions: `fp32`; `bf16` via autocast (CPU or CUDA); `fp16` via autocast, CUDA only. Logits come back as
    float32 on `device`.
    """

    name = "torch"
    precisions = PRECISIONS

    def prepare(
        self, model: nn.Module, example: torch.Tensor, precision: str = "fp32", device: torch.device | str = "cpu"
    ) -> Predict:
        self._check_precision(precision)
        if is_onnx(model):  # an int8 run from `leanvision optimize`
            raise LeanvisionError("This run holds an int8 ONNX model, which only ONNX Runtime can run. "
                                  "Use runtime 'onnxruntime' for it.")
        device = torch.device(device)
        if precision == "fp16" and device.type != "cuda":
            raise LeanvisionError(
                f"precision='fp16' needs a CUDA device for the torch runtime. Received: device='{device}'. "
                "Use precision='bf16' or 'fp32' on this device, or device='cuda'."
            )
        check_autocast(device, precision)  # MPS: bf16 autocast depends on the torch and macOS version
        net = copy.deepcopy(model).to(device).eval()  # a copy: the caller's model keeps its device and train flag
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

        def predict(x: torch.Tensor) -> torch.Tensor:
            amp = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with inference_context(device), amp:  # no_grad on XLA, inference_mode elsewhere
                return net(x.to(device, non_blocking=True)).float()

        return predict


@torch.no_grad()
def predict_logits(model: nn.Module, split, mean, std, device: torch.device, *, batch_size: int | None = None,
                   precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and labels (N,) of a whole split, in eval mode, on CPU. `batch_size` None: 256 on a CPU (its
    activations stay in cache: 1.2-1.9x the images/s of batch 1000 for whitenet, fastnet, resnet8 and seed-baseline
    on 2 cores), 1000 on accelerators."""
    if batch_size is None:
        batch_size = 256 if torch.device(device).type == "cpu" else 1000
    normalize = normalizer(mean, std, device)
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    with autocast(device, precision):
        for xb, yb in split.batches(batch_size):
            outputs.append(model(normalize(xb)).float().cpu())
            labels.append(yb)
    model.train(was_training)
    if not outputs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(outputs), torch.cat(labels)
