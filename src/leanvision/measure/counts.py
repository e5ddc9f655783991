"""Model size and compute: parameters, MACs/FLOPs per image, weight and file bytes.

All functions are pure: they never change a model's weights, never print, and restore every module's
train/eval flag they touch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once).

    Args:
        model: any module.
        trainable_only: count only parameters with `requires_grad=True`.

    Example: `count_params(nn.Linear(10, 5)) == 55`.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates (MACs) for one image of shape `(C, H, W)`: batch 1, forward only, eval mode.

    Counted with `torch.utils.flop_counter.FlopCounterMode`, which reports FLOPs = 2 x MACs for matmuls and
    convolutions (bias adds, activations, pooling and normalisation are not counted, as in most papers and in
    fvcore/ptflops). One MAC is one multiply plus one add, so `count_flops(...) == 2 * count_macs(...)`.
    The model runs under `torch.no_grad()` on its own device and dtype; its train/eval flags are restored.

    Example: `count_macs(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (1, 28, 28)) == 7840`.
    """
    return _count_flops_raw(model, input_shape) // 2


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Floating-point operations (FLOPs = 2 x MACs) for one image of shape `(C, H, W)`, forward only.

    Example: `count_flops(nn.Linear(10, 5), (1, 1, 10))` is 100 FLOPs (50 MACs).
    """
    return 2 * count_macs(model, input_shape)


def weight_bytes(model: nn.Module, dtype_bytes: float | None = None) -> int:
    """In-memory size of the weights: parameters plus buffers (e.g. BatchNorm running stats), in bytes.

    Args:
        model: any module.
        dtype_bytes: bytes per element to assume instead of each tensor's own element size, e.g. 1 for an int8
            deployment estimate or 0.5 for int4.

    Example: `weight_bytes(nn.Linear(10, 5)) == 220` (55 float32 values).
    """
    tensors = [*model.parameters(), *model.buffers()]
    if dtype_bytes is None:
        return sum(t.numel() * t.element_size() for t in tensors)
    return int(round(sum(t.numel() for t in tensors) * dtype_bytes))


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a file on disk in bytes (a saved checkpoint, an exported ONNX model).

    Example: `file_bytes("runs/latest/model.onnx")`.
    """
    return Path(path).stat().st_size


def _count_flops_raw(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    if len(input_shape) != 3:
        raise ValueError(f"Invalid `input_shape`. Expected (C, H, W). Received: input_shape={input_shape}")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros((1, *input_shape), device=device, dtype=dtype)  # (1, C, H, W)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for module, training in flags:
            module.training = training
    return int(counter.get_total_flops())
