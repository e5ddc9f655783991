"""Energy counters for the benchmark: NVML on NVIDIA GPUs, RAPL (Linux powercap) on CPUs, or a stated reason.

Both are cumulative counters read before and after a timed loop. NVML's total-energy counter covers the whole GPU
(Volta or newer). RAPL's package counters cover whole CPU sockets, so they include every other process and the idle
power of the package: read them on an otherwise quiet machine. Since Linux 5.10 `energy_uj` is readable by root
only; on AMD CPUs the same powercap interface appears when the kernel exposes AMD's RAPL MSRs.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import torch

from ..errors import first_line

NOT_MEASURABLE = "not measurable here"
POWERCAP = Path("/sys/class/powercap")
MIN_WINDOW_S = 1.0  # time a measured loop for at least this long: the counters update every ~1 ms (RAPL) to ~100 ms


class EnergyMeter:
    """A cumulative energy counter; `available` False with `reason` when none can be read here.

    Example: `m = energy_meter(torch.device("cpu")); j0 = m.read_joules(); ...; used = m.read_joules() - j0`.
    """

    source: str = ""
    available: bool = False
    reason: str = ""

    def read_joules(self) -> float:
        raise RuntimeError(f"energy is {NOT_MEASURABLE}: {self.reason}")


class Unavailable(EnergyMeter):
    def __init__(self, reason: str):
        self.reason = reason


class RaplMeter(EnergyMeter):
    """Sum of the package-level RAPL zones (`intel-rapl:N`, `amd-rapl:N`), corrected for counter wrap-around."""

    source = "rapl"
    available = True
    reason = "CPU package energy (RAPL): includes other processes and idle power of the package"

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges = [_read_int(z / "max_energy_range_uj") or 2**32 for z in zones]
        self.last = [_read_int(z / "energy_uj") or 0 for z in zones]
        self.total_uj = 0

    def read_joules(self) -> float:
        for i, zone in enumerate(self.zones):
            now = _read_int(zone / "energy_uj") or 0
            self.total_uj += now - self.last[i] if now >= self.last[i] else now + self.ranges[i] - self.last[i]
            self.last[i] = now
        return self.total_uj / 1e6


class NvmlMeter(EnergyMeter):
    """NVML total energy consumption of one GPU (millijoules since the driver loaded)."""

    source = "nvml"
    available = True
    reason = "whole-GPU energy (NVML)"

    def __init__(self, pynvml, handle):
        self.pynvml, self.handle = pynvml, handle

    def read_joules(self) -> float:
        return self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3


def energy_meter(device: torch.device | str) -> EnergyMeter:
    """The energy counter that covers `device` here, or `Unavailable(reason)`."""
    device = torch.device(device)
    if device.type == "cuda":
        return _nvml_meter(device)
    if device.type == "cpu":
        return _rapl_meter()
    return Unavailable(f"no energy counter is read for {device.type} devices (only NVML on NVIDIA GPUs, RAPL on "
                       "Linux CPUs)")


def _rapl_meter() -> EnergyMeter:
    if not POWERCAP.is_dir():
        return Unavailable(f"no RAPL powercap interface ({POWERCAP}) on this machine; containers, VMs, macOS and "
                           "Windows usually have none")
    zones = sorted(Path(p) for p in glob.glob(str(POWERCAP / "*-rapl:*"))
                   if re.fullmatch(r"[a-z]+-rapl:\d+", os.path.basename(p)))
    if not zones:
        return Unavailable(f"{POWERCAP} has no package-level RAPL zone (intel-rapl:N or amd-rapl:N)")
    if any(_read_int(z / "energy_uj") is None for z in zones):
        return Unavailable(f"RAPL counters exist but {zones[0] / 'energy_uj'} is not readable by this user (root "
                           "only since Linux 5.10); run as root or grant read access")
    return RaplMeter(zones)


def _nvml_meter(device: torch.device) -> EnergyMeter:
    try:
        import pynvml
    except ImportError:
        return Unavailable("pynvml is not installed; install it with: pip install nvidia-ml-py")
    try:
        pynvml.nvmlInit()
        props = torch.cuda.get_device_properties(device)
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:  # NVML numbers GPUs without CUDA_VISIBLE_DEVICES: match by PCI address
            address = f"{getattr(props, 'pci_domain_id', 0):08x}:{bus:02x}:{getattr(props, 'pci_device_id', 0):02x}.0"
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(address.encode())
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as e:  # noqa: BLE001 - NVMLError_NotSupported (pre-Volta), no permission, no driver
        return Unavailable(f"NVML energy counter not readable ({first_line(e, with_type=True, limit=120)})")
    return NvmlMeter(pynvml, handle)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
