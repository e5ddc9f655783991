"""Device resolution: `auto|cpu|cuda|cuda:N|mps|tpu`, with a one-line error when the device is not present."""

from __future__ import annotations

import torch

from .errors import LeanvisionError, first_line

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps, tpu (alias xla)"


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for `name`; `auto` picks CUDA, then MPS, then CPU.

    Example: `resolve_device("cuda:1")` raises `LeanvisionError` on a machine without a second GPU.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise LeanvisionError(
                f"Device {name!r} requested but no CUDA GPU is visible to PyTorch "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
                "Use device='cpu' or device='auto'."
            )
        if name.startswith("cuda:"):
            index_text = name.split(":", 1)[1]
            if not index_text.isdigit():
                raise LeanvisionError(f"Invalid device {name!r}. Expected one of: {DEVICE_CHOICES}.")
            if int(index_text) >= torch.cuda.device_count():
                raise LeanvisionError(
                    f"Device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist. "
                    f"Use cuda:0..cuda:{torch.cuda.device_count() - 1}."
                )
        return torch.device(name)
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise LeanvisionError(
                "Device 'mps' requested but Apple MPS is not available here. Use device='cpu' or device='auto'."
            )
        return torch.device("mps")
    if name in ("tpu", "xla"):
        return _xla_device(name)
    raise LeanvisionError(f"Invalid device {name!r}. Expected one of: {DEVICE_CHOICES}.")


def _xla_device(name: str) -> torch.device:
    """The default XLA device (a TPU core under torch_xla); `auto` never picks it, as XLA compiles lazily."""
    try:
        import torch_xla
        import torch_xla.core.xla_model as xm
    except ImportError:
        raise LeanvisionError(
            f"Device {name!r} requested but torch_xla is not installed (needed for TPUs). "
            "Install torch_xla matching torch on a TPU host, or use device='cpu' or device='auto'."
        ) from None
    try:
        return torch_xla.device() if hasattr(torch_xla, "device") else xm.xla_device()
    except RuntimeError as e:
        raise LeanvisionError(f"Device {name!r} requested but torch_xla found no XLA device ({first_line(e)}). "
                              "Run on a TPU host, or use device='cpu'.") from None
