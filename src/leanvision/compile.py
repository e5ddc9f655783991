"""`torch.compile` for training and inference, with the compile time measured apart from steady-state speed.

Compilation happens on the first call of each input shape, so a naive timing of "the first epoch" or "the first
100 predictions" mixes seconds of compilation into the speed. Here the training step is compiled up front by a
warm-up forward+backward per batch shape (weights, buffers and RNG restored afterwards) and timed on its own;
inference (`torch-compile` runtime) times the first call of each shape separately.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn

from .device import synchronize
from .errors import LeanvisionError


def compile_support(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether `torch.compile` (TorchInductor) can compile for `device` here, and why not when it cannot."""
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0)"
    if device.type == "xla":
        return False, "torch.compile does not apply to XLA devices: torch_xla already compiles the traced graph"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return False, "TorchInductor needs triton for CUDA; install it with: pip install triton"
    if device.type == "cpu" and _cpp_compiler() is None:
        where = "Visual Studio Build Tools (cl.exe)" if sys.platform == "win32" else "gcc or clang (g++/clang++)"
        return False, f"TorchInductor needs a C++ compiler for CPU code and none was found; install {where}"
    return True, ""


def _cpp_compiler() -> str | None:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # noqa: BLE001 - private API or no compiler: fall back to a PATH search
        return next((c for c in ("g++", "c++", "clang++", "cl") if shutil.which(c)), None)


def check_compile_support(device: torch.device | str) -> None:
    """Raise a one-line `LeanvisionError` when `torch.compile` cannot work on `device` here."""
    ok, reason = compile_support(device)
    if not ok:
        raise LeanvisionError(f"`compile` was requested but {reason}. Drop `compile`, or fix the toolchain.")


def compile_for_training(module: nn.Module, device: torch.device, batch_shapes: Iterable[tuple[int, ...]],
                         autocast: Callable[[], AbstractContextManager], *, channels_last: bool = False,
                         ) -> tuple[nn.Module, float]:
    """Compile `module`'s training forward and backward for each batch shape now; returns (compiled, seconds).

    Each shape gets its own static graph (`dynamic=False`), so the last, smaller batch of an epoch does not trigger
    a dynamic-shape recompile mid-epoch. The warm-up passes use random inputs; parameters, buffers (BatchNorm
    statistics), gradients and the RNG state are restored, so training then proceeds as if nothing had run.

    Example: `net, seconds = compile_for_training(model, device, [(128, 1, 28, 28)], lambda: nullcontext())`.
    """
    check_compile_support(device)
    compiled = torch.compile(module, dynamic=False)
    saved = copy.deepcopy(module.state_dict())
    was_training = module.training
    module.train()
    devices = [device.index or 0] if device.type == "cuda" else []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        for shape in dict.fromkeys(tuple(s) for s in batch_shapes):  # unique, in order
            x = torch.randn(shape, device=device)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
            with autocast():
                out = compiled(x)
            out.float().sum().backward()
    synchronize(device)
    seconds = time.perf_counter() - start
    module.load_state_dict(saved)
    for p in module.parameters():
        p.grad = None
    module.train(was_training)
    return compiled, seconds


def compile_for_inference(model: nn.Module, device: torch.device, mode: str | None = None) -> nn.Module:
    """A compiled eval-mode copy of `model` on `device` (static shapes: one graph per batch size); `mode` is
    torch.compile's (`reduce-overhead`: CUDA graphs, for small-batch latency)."""
    check_compile_support(device)
    net = copy.deepcopy(model).to(device).eval()
    return torch.compile(net, dynamic=False, mode=mode)


def recompile_limit() -> int:
    """How many graphs Dynamo keeps per function before it silently falls back to eager (`recompile_limit`, named
    `cache_size_limit` before torch 2.6); 8 by default."""
    config = torch._dynamo.config
    return int(getattr(config, "recompile_limit", getattr(config, "cache_size_limit", 8)))
