"""The hardware and software a measurement was taken on (airbench's header discipline), without the hostname."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import numpy as np
import torch


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions, CPU, threads and GPU that a benchmark ran with; attach it to every timing you report.

    Keys: `python`, `torch`, `numpy`, `onnxruntime` (None if not installed), `torch_cuda` (CUDA version torch was
    built with, or None), `torch_threads`, `platform`, `machine`, `cpu_model`, `cpu_count`, `cpu_isa` (torch's
    vector kernels: e.g. AVX2, AVX512), `cpu_int8` and `cpu_bf16` (the CPU's int8 dot-product and native bf16
    instructions, see `cpu_features`), `device`, `gpu_name`
    (None unless `device` is CUDA); on CUDA also `cudnn_version`, `cudnn_benchmark` (autotuning on),
    `tf32_matmul` and `tf32_cudnn` (TF32 allowed in matmuls / convolutions), the settings that change GPU speed.
    The hostname and user are deliberately left out so reports can be shared.

    Example: `environment(torch.device("cuda"))["gpu_name"]`.
    """
    device = torch.device(device)
    gpu_name = None
    if device.type == "cuda" and torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(device)
    cuda: dict[str, Any] = {}
    if device.type == "cuda":
        cuda = {"cudnn_version": torch.backends.cudnn.version(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        **cpu_features(),
        "device": str(device),
        "gpu_name": gpu_name,
        **cuda,
    }


#: /proc/cpuinfo flags -> the name of the instructions, best first: what int8 and bf16 math runs on.
INT8_FLAGS = (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"))
BF16_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"))


def cpu_features(flags: set[str] | None = None) -> dict[str, str | None]:
    """`cpu_isa`: the vector instruction set torch's CPU kernels use (e.g. "AVX2", "AVX512"); `cpu_int8`: the CPU's
    int8 dot-product instructions ("AMX", "AVX-512 VNNI", "AVX-VNNI") or None when it has none, so int8 kernels gain
    little over fp32 there; `cpu_bf16`: native bf16 math ("AMX", "AVX-512 BF16") or None (bf16 is then emulated and
    slower than fp32). Flags come from /proc/cpuinfo (`flags` overrides them); off Linux the last two are None."""
    try:
        import torch.backends.cpu

        isa = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        isa = None
    if flags is None:
        flags = _cpu_flags()
    first = lambda table: next((name for flag, name in table if flag in flags), None)  # noqa: E731
    return {"cpu_isa": isa, "cpu_int8": first(INT8_FLAGS), "cpu_bf16": first(BF16_FLAGS)}


def x86_without_int8_dot(cpu: dict[str, Any] | None) -> bool:
    """True for a recorded x86 CPU (AVX2/AVX-512 kernels) without int8 dot-product instructions: there ONNX Runtime
    multiplies uint8 x int8 with `vpmaddubsw` (several instructions per multiply-add; 16-bit sums that can
    saturate). False when unknown, when the CPU has VNNI/AMX, and off x86 (ARM's dot products do not saturate)."""
    return bool(cpu) and "cpu_int8" in cpu and cpu["cpu_int8"] is None and cpu.get("cpu_isa") in ("AVX2", "AVX512")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None  # macOS / Windows: no /proc
