"""Device setup for training and inference: CUDA allocator and cuDNN knobs, channels_last, Apple MPS, TPUs via XLA.

`setup_device` resolves a device name (see `leanvision.device.resolve_device`) and applies the per-device options,
refusing with a one-line error any option that has no effect on that device, so nothing is silently ignored.
On XLA (TPU) devices, work is traced lazily and runs at `xm.mark_step()`; reading a value on the host (`.item()`)
forces a compile-and-run, so the training loop marks a step after every optimizer step (`step_done`) and checks
the loss for NaN/inf only every `XLA_LOSS_CHECK_EVERY` steps (`LossTracker`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..device import resolve_device
from ..distributed import local_device_name
from ..errors import LeanvisionError

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
XLA_LOSS_CHECK_EVERY = 50  # optimizer steps between host reads of the loss on XLA (each read is a device sync)
CHANNELS_LAST_DEVICES = ("cuda", "cpu")  # where PyTorch has channels_last convolution kernels (cuDNN, oneDNN)


def setup_device(name: str = "auto", *, channels_last: bool = False, memory_fraction: float | None = None,
                 expandable_segments: bool = False, cudnn_benchmark: bool = True) -> torch.device:
    """Resolve `name` to a device and configure it for speed; returns the device.

    Args:
        name: auto | cpu | cuda | cuda:N | mps | tpu (alias xla).
        channels_last: the caller will use NHWC memory format (`prepare_model`, `prepare_input`); fastest for
            convolutions under fp16/bf16 autocast on tensor-core GPUs. CUDA or CPU only.
        memory_fraction: cap this process's CUDA caching allocator at this fraction (0, 1] of the GPU's memory
            (`torch.cuda.set_per_process_memory_fraction`); an allocation past it raises out-of-memory. CUDA only.
        expandable_segments: let the CUDA allocator grow segments instead of reserving new blocks
            (`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`), PyTorch's counterpart of TensorFlow's memory
            growth: less fragmentation with varying batch shapes. Must be set before CUDA is initialized.
        cudnn_benchmark: let cuDNN time its convolution algorithms on the first call of each input shape and keep
            the fastest (`torch.backends.cudnn.benchmark`); results are then not bitwise deterministic.

    Example: `setup_device("cuda", channels_last=True, memory_fraction=0.5, expandable_segments=True)`.
    """
    device = resolve_device(name)
    if channels_last and device.type not in CHANNELS_LAST_DEVICES:
        raise LeanvisionError(f"channels_last is supported on cuda and cpu devices. Received: device='{device}'. "
                              "Drop --channels-last on this device.")
    cuda_only = {"memory_fraction": memory_fraction is not None, "expandable_segments": expandable_segments}
    wrong = [k for k, used in cuda_only.items() if used]
    if wrong and device.type != "cuda":
        raise LeanvisionError(f"{' and '.join(wrong)} configure the CUDA allocator, but device='{device}'. "
                              "Use --device cuda, or drop these options.")
    if device.type != "cuda":
        return device
    if expandable_segments:
        _enable_expandable_segments()
    if memory_fraction is not None:
        if not 0.0 < memory_fraction <= 1.0:
            raise LeanvisionError(f"Invalid value for `memory_fraction`. Expected a number > 0 and <= 1. "
                                  f"Received: memory_fraction={memory_fraction}")
        torch.cuda.set_per_process_memory_fraction(memory_fraction, device)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    return device


def _enable_expandable_segments() -> None:
    current = os.environ.get(ALLOC_CONF, "")
    if "expandable_segments:true" in current.replace(" ", "").lower():
        return
    if torch.cuda.is_initialized():
        raise LeanvisionError(
            "expandable_segments must be set before CUDA is initialized, but CUDA is already in use in this process. "
            f"Start the process with {ALLOC_CONF}=expandable_segments:True instead."
        )
    os.environ[ALLOC_CONF] = ",".join(part for part in (current, "expandable_segments:True") if part)


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool = False) -> nn.Module:
    """Move `model` to `device` in place (NHWC weights when `channels_last`); returns it."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def prepare_input(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """`x` (N, C, H, W) in NHWC memory order when `channels_last` (same shape, different strides)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def is_xla(device: torch.device) -> bool:
    return device.type == "xla"


def step_done(device: torch.device) -> None:
    """Call after each optimizer step: on XLA cuts the lazy graph and runs it (`xm.mark_step`); no-op elsewhere."""
    if is_xla(device):
        import torch_xla.core.xla_model as xm

        xm.mark_step()


def synchronize(device: torch.device) -> None:
    """Wait until queued work on `device` has finished (for timing); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif is_xla(device):
        import torch_xla.core.xla_model as xm

        xm.mark_step()
        xm.wait_device_ops()


class LossTracker:
    """Per-epoch sum of `batch loss x batch size`, read on the host every `check_every` steps for the NaN check.

    Eager devices read every step (one sync per step, which also gives an exact float64 sum); XLA devices keep the
    sum on the device and read it every `XLA_LOSS_CHECK_EVERY` steps, so a step never waits for the TPU.

    Example: `value = tracker.add(loss, len(y)); running += tracker.pop()` (value is NaN/inf when it diverged).
    """

    def __init__(self, device: torch.device, check_every: int | None = None):
        self.check_every = check_every or (XLA_LOSS_CHECK_EVERY if is_xla(device) else 1)
        self._pending: torch.Tensor | None = None  # device-side sum since the last read (lazy mode only)
        self._host = 0.0  # host-side sum not yet popped
        self._steps = 0

    def add(self, loss: torch.Tensor, batch_size: int) -> float:
        """Account one batch; returns a finite-or-not value to check (the loss, or a partial sum, or 0.0 unread)."""
        self._steps += 1
        if self.check_every == 1:
            value = loss.item()  # one host sync per step: the divergence check needs it anyway
            self._host += value * batch_size
            return value
        weighted = loss.detach().float() * batch_size
        self._pending = weighted if self._pending is None else self._pending + weighted
        return self._read() if self._steps % self.check_every == 0 else 0.0

    def _read(self) -> float:
        value = float(self._pending.item()) if self._pending is not None else 0.0
        self._pending = None
        self._host += value
        return value

    def pop(self) -> float:
        """The host-side sum accumulated since the last pop (without forcing a device read)."""
        value, self._host = self._host, 0.0
        return value

    def flush(self) -> float:
        """Read any device-side remainder (a sync), then pop; raises nothing, check `math.isfinite` yourself."""
        if self._pending is not None:
            self._read()
        return self.pop()


def setup_train_device(cfg: Any) -> torch.device:
    """`setup_device` with a `TrainConfig`'s device options; under torchrun, this rank's device (cuda:LOCAL_RANK)."""
    return setup_device(local_device_name(cfg.device), channels_last=cfg.channels_last,
                        memory_fraction=cfg.memory_fraction, expandable_segments=cfg.expandable_segments)
