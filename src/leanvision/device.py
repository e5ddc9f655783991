"""Devices, in one place: resolve a name (`auto|cpu|cuda|cuda:N|mps|tpu`), pick this process's GPU under torchrun,
configure the device for speed, and the per-device primitives (synchronize, XLA step, autocast, inference mode).

`setup_device` resolves a device name and applies the per-device options (CUDA allocator and cuDNN knobs,
channels_last, Apple MPS, TPUs via XLA), refusing with a one-line error any option that has no effect on that
device, so nothing is silently ignored. On XLA (TPU) devices, work is traced lazily and runs at `xm.mark_step()`;
reading a value on the host (`.item()`) forces a compile-and-run, so the training loop marks a step after every
optimizer step (`step_done`) and reads the loss only every few steps (`loss_tracker.LossTracker`).
`torch_xla` is imported inside the XLA-only functions: it is an optional library, absent on most machines.
(Just over 300 lines: every device concern in one place, as the issue that created it asked.)
"""

from __future__ import annotations

import functools
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a torchrun job."""

    rank: int  # 0..world_size-1 over all machines
    local_rank: int  # 0..processes-on-this-machine-1: picks the GPU
    world_size: int


def launch_env() -> LaunchEnv | None:
    """The torchrun environment of this process, or None for a plain single-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return LaunchEnv(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                     world_size=world)


def local_device_name(name: str) -> str:
    """This rank's device under torchrun: `auto`/`cuda` -> `cuda:LOCAL_RANK` (CPU when no GPU); else `name`.

    An explicit `cuda:N` is kept when it is this rank's GPU (N == LOCAL_RANK) or when torchrun runs one process per
    machine (LOCAL_WORLD_SIZE=1); otherwise every rank would share GPU N, so it is refused with a one-line error.
    """
    env = launch_env()
    name = (name or "auto").strip().lower()
    if env is not None and name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0)
        if index.isdigit() and int(index) != env.local_rank and local_processes != 1:
            raise LeanvisionError(f"device={name!r} under torchrun would put every process on GPU {index} (this is "
                                  f"local rank {env.local_rank}). Use device='cuda': each process then takes "
                                  "cuda:LOCAL_RANK (select GPUs with CUDA_VISIBLE_DEVICES).")
        return name
    if env is None or name not in ("auto", "cuda"):
        return name
    return f"cuda:{env.local_rank}" if torch.cuda.is_available() else ("cpu" if name == "auto" else name)


ALLOC_CONF = "PYTORCH_ALLOC_CONF"  # the allocator's variable from torch 2.9; older versions read the next one only
LEGACY_ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
CHANNELS_LAST_DEVICES = ("cuda", "cpu")  # where PyTorch has channels_last convolution kernels (cuDNN, oneDNN)


def check_device_options(name: str = "auto", *, channels_last: bool = False, memory_fraction: float | None = None,
                         expandable_segments: bool = False) -> torch.device:
    """Resolve `name` and refuse, in one line, an option that has no effect there; configures nothing (see
    `setup_device`, which calls it)."""
    device = resolve_device(name)
    if channels_last and device.type not in CHANNELS_LAST_DEVICES:
        raise LeanvisionError(f"channels_last is supported on cuda and cpu devices. Received: device='{device}'. "
                              "Drop `channels_last` on this device.")
    cuda_only = {"memory_fraction": memory_fraction is not None, "expandable_segments": expandable_segments}
    wrong = [k for k, used in cuda_only.items() if used]
    if wrong and device.type != "cuda":
        raise LeanvisionError(f"{' and '.join(wrong)} configure the CUDA allocator, but device='{device}'. "
                              "Use device='cuda', or drop these options.")
    return device


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
            (`PYTORCH_ALLOC_CONF=expandable_segments:True`), PyTorch's counterpart of TensorFlow's memory
            growth: less fragmentation with varying batch shapes. Applied through the allocator's settings API when
            this torch has one (`allocator_settings()` reads it back), else through the environment before CUDA
            initializes.
        cudnn_benchmark: let cuDNN time its convolution algorithms on the first call of each input shape and keep
            the fastest (`torch.backends.cudnn.benchmark`); results are then not bitwise deterministic.

    Example: `setup_device("cuda", channels_last=True, memory_fraction=0.5, expandable_segments=True)`.
    """
    device = check_device_options(name, channels_last=channels_last, memory_fraction=memory_fraction,
                                  expandable_segments=expandable_segments)
    if device.type != "cuda":
        return device
    if expandable_segments:
        _enable_expandable_segments()
    if memory_fraction is not None:
        if isinstance(memory_fraction, bool) or not 0.0 < memory_fraction <= 1.0:
            raise LeanvisionError(f"Invalid value for `memory_fraction`. Expected a number > 0 and <= 1. "
                                  f"Received: memory_fraction={memory_fraction}")
        index = device.index if device.index is not None else torch.cuda.current_device()  # needs an index
        torch.cuda.set_per_process_memory_fraction(float(memory_fraction), index)  # float: YAML's `1` is an int
    torch.backends.cudnn.benchmark = cudnn_benchmark
    return device


def _enable_expandable_segments() -> None:
    """Turn on expandable segments for this process (and, through the environment, for its children).

    torch >= 2.9 reads `PYTORCH_ALLOC_CONF` (older: `PYTORCH_CUDA_ALLOC_CONF`) once, when the allocator starts, so
    the environment alone is too late after CUDA initialized; the settings API (`torch._C.
    _accelerator_setAllocatorSettings`, torch >= 2.9; `torch.cuda.memory._set_allocator_settings` before) applies
    it at any time, to segments allocated from then on.
    """
    for var in (ALLOC_CONF, LEGACY_ALLOC_CONF):
        current = os.environ.get(var, "")
        if "expandable_segments:true" not in current.replace(" ", "").lower():
            os.environ[var] = ",".join(part for part in (current, "expandable_segments:True") if part)
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is None:
        setter = getattr(torch.cuda.memory, "_set_allocator_settings", None)
    if setter is not None:
        try:
            setter("expandable_segments:True")
        except RuntimeError as e:
            raise LeanvisionError(f"expandable_segments could not be set in this process ({first_line(e)}). Start "
                                  f"it with {ALLOC_CONF}=expandable_segments:True instead.") from None
    elif torch.cuda.is_initialized():
        raise LeanvisionError(
            "expandable_segments must be set before CUDA is initialized with this torch version, but CUDA is already "
            f"in use in this process. Start the process with {LEGACY_ALLOC_CONF}=expandable_segments:True instead."
        )


def allocator_settings() -> str | None:
    """The CUDA caching allocator's settings as the allocator reports them (torch >= 2.9), None where unreadable."""
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    if getter is None:
        return None
    try:
        return str(getter())
    except RuntimeError:  # no accelerator in this process
        return None


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool = False) -> nn.Module:
    """Move `model` to `device` in place (NHWC weights when `channels_last`); returns it."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def prepare_input(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """`x` (N, C, H, W) in NHWC memory order when `channels_last` (same shape, different strides)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_works(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether `torch.autocast(device.type, dtype)` really computes a matmul in `dtype` on `device`, and why not.

    Apple MPS depends on the torch version (2.4 raises, 2.5 silently computes bf16 in fp32, 2.6+ needs macOS 14
    for bf16), so a tiny probe is more reliable than a version table. Example: `autocast_works(dev, torch.bfloat16)`.
    """
    try:
        a = torch.ones(8, 8, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "disabling autocast" warning: the dtype check below says it
            with torch.autocast(device.type, dtype=dtype):
                out = a @ a
    except Exception as e:  # noqa: BLE001 - any failure means autocast is not usable here
        return False, f"autocast raised {first_line(e, with_type=True, limit=160)}"
    if out.dtype != dtype:
        return False, f"autocast silently computed {str(out.dtype).replace('torch.', '')}"
    return True, ""


@functools.cache
def _autocast_works_cached(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    return autocast_works(device, dtype)


def check_autocast(device: torch.device, precision: str) -> None:
    """Raise a one-line error when `precision` autocast does not really run on `device` (checked once per process
    on devices other than the CPU and CUDA, where PyTorch's support depends on the torch and OS version)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None or device.type in ("cpu", "cuda"):
        return
    ok, why = _autocast_works_cached(device, dtype)
    if not ok:
        raise LeanvisionError(f"precision {precision} does not run on device '{device}' with torch {torch.__version__}"
                              f" ({why}). Use precision='fp32' there, or a newer torch (MPS bf16: torch>=2.6, "
                              "macOS 14).")


def is_xla(device: torch.device) -> bool:
    return device.type == "xla"


def inference_context(device: torch.device):
    """`torch.inference_mode()`, or `torch.no_grad()` on XLA devices (inference tensors are reported to fail there)."""
    return torch.no_grad() if is_xla(device) else torch.inference_mode()


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


def check_train_device(cfg: Any) -> torch.device:
    """`check_device_options` for a `TrainConfig`: fail fast before a run directory is written (`fit` configures)."""
    return check_device_options(local_device_name(cfg.device), channels_last=cfg.channels_last,
                                memory_fraction=cfg.memory_fraction, expandable_segments=cfg.expandable_segments)


def setup_train_device(cfg: Any) -> torch.device:
    """`setup_device` with a `TrainConfig`'s device options; under torchrun, this rank's device (cuda:LOCAL_RANK)."""
    return setup_device(local_device_name(cfg.device), channels_last=cfg.channels_last,
                        memory_fraction=cfg.memory_fraction, expandable_segments=cfg.expandable_segments)


def autocast(device: torch.device, precision: str):
    """Autocast context for `precision` (fp32: none). fp16 autocast is CUDA-only here (slow or missing on CPU)."""
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise LeanvisionError(f"precision fp16 needs a CUDA device (got {device}). Use precision='bf16' on CPU.")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
