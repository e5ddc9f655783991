"""Energy counters for `leanvision bench` (leanvision.accel.energy): RAPL through a fake powercap tree, reasons."""

import pytest
import torch

from leanvision.accel import energy
from leanvision.accel.energy import NOT_MEASURABLE, energy_meter


def write_zone(root, name, energy_uj, max_uj=1000):
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_rapl_sums_packages_and_survives_counter_wraparound(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    zone0 = write_zone(tmp_path, "intel-rapl:0", 900)
    write_zone(tmp_path, "intel-rapl:1", 100)
    write_zone(tmp_path, "intel-rapl:0:0", 5)  # a sub-zone (core): not counted twice
    meter = energy_meter("cpu")
    assert meter.available and meter.source == "rapl" and len(meter.zones) == 2
    start = meter.read_joules()
    (zone0 / "energy_uj").write_text("50\n")  # wrapped: 900 -> 1000 -> 50 is 150 uJ
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("300\n")
    assert meter.read_joules() - start == pytest.approx(350e-6)


def test_rapl_reasons_when_absent_or_unreadable(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "missing")
    meter = energy_meter("cpu")
    assert not meter.available and "no RAPL powercap interface" in meter.reason
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    assert "no package-level RAPL zone" in energy_meter("cpu").reason
    (tmp_path / "intel-rapl:0").mkdir()  # energy_uj missing: as unreadable as root-only permissions
    assert "not readable by this user" in energy_meter("cpu").reason
    with pytest.raises(RuntimeError, match=NOT_MEASURABLE):
        energy_meter("cpu").read_joules()


def test_no_counter_for_other_devices():
    meter = energy_meter(torch.device("meta"))
    assert not meter.available and "only NVML on NVIDIA GPUs, RAPL on Linux CPUs" in meter.reason


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvml_meter_on_cuda():
    meter = energy_meter("cuda")
    if not meter.available:
        pytest.skip(meter.reason)
    start = meter.read_joules()
    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):
        x = x @ x.T / 4096
    torch.cuda.synchronize()
    assert meter.read_joules() >= start
