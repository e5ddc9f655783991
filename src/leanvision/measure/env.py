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
    built with, or None), `torch_threads`, `platform`, `machine`, `cpu_model`, `cpu_count`, `device`, `gpu_name`
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
        "device": str(device),
        "gpu_name": gpu_name,
        **cuda,
    }


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
