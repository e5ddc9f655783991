"""`leanvision export` (ONNX + accuracy parity) and `leanvision bench` (runtime x precision x batch size table)."""

import json
import math

import pytest
import torch
from testkit import one_error_line

from leanvision.accel import bench as bench_module
from leanvision.accel import export as export_module
from leanvision.accel.bench import ROW_KEYS, BenchConfig, bench_run
from leanvision.accel.energy import NOT_MEASURABLE, EnergyMeter, energy_meter
from leanvision.cli import main
from leanvision.errors import LeanvisionError
from leanvision.runtimes import TorchCompileRuntime, get_runtime

pytest.importorskip("onnxruntime")
HAS_OPENVINO = get_runtime("openvino").is_available()[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "shallow"
    assert main(["train", "--dataset", "digits", "--model", "seed-shallow", "--epochs", "2", "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    return out


# ---- export ----------------------------------------------------------------------------------------------------------


def test_cli_export_onnx_dynamic_batch_and_parity_print(digits_run, tmp_path, capsys):
    import onnxruntime as ort

    path = tmp_path / "sub" / "model.onnx"
    assert main(["export", str(digits_run), "--format", "onnx", "--out", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"exported {path}" in out and "batch dimension dynamic" in out
    assert "PyTorch " in out and "ONNX Runtime " in out and "difference 0.00 pp" in out
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 7):
        logits = session.run(None, {"input": torch.randn(batch, 1, 28, 28).numpy()})[0]
        assert logits.shape == (batch, 10)


def test_cli_export_json_default_path(digits_run, capsys):
    assert main(["export", str(digits_run), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["path"] == str(digits_run / "model.onnx") and r["opset"] == 17 and r["dynamic_batch"]
    assert r["parity_ok"] and r["difference_pp"] <= 0.1 and r["split"] == "test" and r["images"] == 359
    assert r["prediction_agreement"] == 1.0


def test_cli_export_fails_when_accuracies_differ(digits_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_module, "TOLERANCE_PP", -1.0)  # any difference, even 0, is now too much
    assert main(["export", str(digits_run), "--out", str(tmp_path / "m.onnx")]) == 1
    captured = capsys.readouterr()
    assert "ONNX Runtime" in captured.out  # both accuracies printed first
    assert "differs from PyTorch's" in one_error_line(captured.err)


def test_cli_export_bad_opset_and_format_are_one_line_errors(digits_run, capsys):
    assert main(["export", str(digits_run), "--opset", "5"]) == 2
    assert "Invalid opset 5" in one_error_line(capsys.readouterr().err)
    assert main(["export", str(digits_run), "--format", "tflite"]) == 2
    assert "tflite" in one_error_line(capsys.readouterr().err)


# ---- bench -----------------------------------------------------------------------------------------------------------


def test_cli_bench_all_json_rows_cost_and_energy(digits_run, capsys, monkeypatch):
    # torch.compile is exercised in its own (slower) test; here its row must still appear, as unavailable
    monkeypatch.setattr(TorchCompileRuntime, "is_available", lambda self: (False, "disabled for this test"))
    assert main(["bench", str(digits_run), "--runtime", "all", "--json", "--batch-sizes", "1,32", "--repeats", "3",
                 "--warmup", "1", "--price-per-hour", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    meter = energy_meter(torch.device("cpu"))
    assert report["environment"]["torch_threads"] >= 1
    for row in rows:
        assert set(ROW_KEYS) <= set(row)
    ok = {(r["runtime"], r["batch_size"]): r for r in rows if r["status"] == "ok"}
    assert set(ok) == {("torch", 1), ("torch", 32), ("onnxruntime", 1), ("onnxruntime", 32),
                       ("onnxruntime-streams", 1), ("onnxruntime-streams", 32)} | (
        {("openvino", 1), ("openvino", 32)} if HAS_OPENVINO else set())
    for r in ok.values():
        assert r["precision"] == "fp32" and r["device"] == "cpu" and r["threads"] >= 1
        assert r["latency_unit"] == "ms/batch" and r["throughput_unit"] == "images/s"
        assert 0 < r["latency_median_ms"] <= r["latency_p95_ms"] and r["images_per_s"] > 0
        assert r["accuracy"] > 0.5 and r["accuracy_split"] == "test" and r["first_call_ms"] > 0
        assert math.isclose(r["cost_per_million_images_usd"], 2 / 3600 / r["images_per_s"] * 1e6)
        energy = r["energy_per_image_j"]
        if meter.available:  # this machine has a readable counter: a number, from that source
            assert isinstance(energy, float) and energy >= 0 and r["energy_source"] == meter.source
        else:  # none: no number, and the note says why, in the meter's own words
            assert energy is None and r["energy_note"] == f"{NOT_MEASURABLE}: {meter.reason}"
    assert ok[("torch", 1)]["accuracy"] == ok[("onnxruntime", 1)]["accuracy"]
    assert abs(ok[("onnxruntime-streams", 32)]["accuracy"] - ok[("onnxruntime", 1)]["accuracy"]) <= 0.002
    assert ok[("onnxruntime-streams", 32)]["streams"] == torch.get_num_threads()
    unavailable = {r["runtime"]: r["status"] for r in rows if r["status"] != "ok"}
    assert unavailable["torch-compile"] == "unavailable: disabled for this test"
    if not HAS_OPENVINO:
        assert unavailable["openvino"].startswith("unavailable: openvino is not installed")


class _FakeMeter(EnergyMeter):
    """A counter that gains 3 J between the two reads around each timed loop."""

    source, available, reason = "fake", True, ""

    def __init__(self):
        self.joules = 0.0

    def read_joules(self) -> float:
        self.joules += 3.0
        return self.joules


def test_bench_energy_per_image_is_the_counter_delta_over_the_images(digits_run, monkeypatch):
    monkeypatch.setattr(bench_module, "energy_meter", lambda device: _FakeMeter())
    monkeypatch.setattr(bench_module, "MIN_WINDOW_S", 0.0)
    rows = bench_run(digits_run, BenchConfig(runtimes=("onnxruntime",), batch_sizes=(1, 8), repeats=3, warmup=0))
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["batch_size"] for r in ok} == {1, 8}
    for r in ok:
        assert r["energy_per_image_j"] == pytest.approx(3.0 / (r["repeats"] * r["batch_size"]))
        assert r["energy_source"] == "fake" and r["energy_unit"] == "J/image"


def test_bench_times_through_the_shared_device_synced_loop(digits_run, monkeypatch):
    """bench's rows come from `measure.timing.measure_latency` like the study's and optimize's: the first call is
    one more warm-up call, timed apart as `first_call_ms`, and the device is the bench device."""
    from leanvision.measure import speed

    seen, real = [], speed.measure_latency

    def spy(fn, **kwargs):
        stats = real(fn, **kwargs)
        seen.append(({k: kwargs[k] for k in ("warmup", "repeats", "device")}, stats))
        return stats

    monkeypatch.setattr(speed, "measure_latency", spy)
    rows = bench_run(digits_run, BenchConfig(runtimes=("torch",), batch_sizes=(1, 8), repeats=3, warmup=1))
    assert [kwargs for kwargs, _ in seen] == [{"warmup": 2, "repeats": 3, "device": torch.device("cpu")}] * 2
    for row, (_, stats) in zip(rows, seen):
        assert row["first_call_ms"] == stats.first_call_ms > 0 and row["latency_median_ms"] == stats.median_ms
        assert row["warmup"] == 1 and row["repeats"] == 3


def test_cli_bench_table_names_units_and_unsupported_precisions(digits_run, capsys):
    assert main(["bench", str(digits_run), "--runtime", "onnxruntime", "--batch-sizes", "1", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "latency median (ms)" in out and "throughput (img/s)" in out and "threads" in out and "dtype" in out
    assert "energy:" in out
    assert main(["bench", str(digits_run), "--runtime", "onnxruntime", "--precision", "bf16"]) == 2
    assert "supports fp32, fp16 only" in one_error_line(capsys.readouterr().err)


def test_bench_all_marks_unsupported_precision_as_a_row(digits_run, monkeypatch):
    monkeypatch.setattr(TorchCompileRuntime, "is_available", lambda self: (False, "disabled for this test"))
    rows = bench_run(digits_run, BenchConfig(runtimes=("all",), precisions=("fp32", "bf16"), batch_sizes=(1,),
                                             repeats=2, warmup=0))
    status = {(r["runtime"], r["precision"]): r["status"] for r in rows}
    assert status[("torch", "bf16")] == "ok" and status[("onnxruntime", "fp32")] == "ok"
    assert status[("onnxruntime", "bf16")].startswith("unsupported: Runtime 'onnxruntime' supports fp32, fp16 only")
    # asked for by name, an unsupported pair is a row too, unless nothing asked for can run: then an error
    rows = bench_run(digits_run, BenchConfig(runtimes=("onnxruntime",), precisions=("fp32", "bf16"), batch_sizes=(1,),
                                             repeats=2, warmup=0))
    assert [r["status"][:11] for r in rows] == ["ok", "unsupported"]
    with pytest.raises(LeanvisionError, match="supports fp32, fp16 only"):
        bench_run(digits_run, BenchConfig(runtimes=("onnxruntime",), precisions=("bf16",), batch_sizes=(1,)))


@pytest.mark.skipif(HAS_OPENVINO, reason="openvino is installed here")
def test_cli_bench_requested_unavailable_runtime_is_one_line_error(digits_run, capsys):
    assert main(["bench", str(digits_run), "--runtime", "openvino"]) == 2
    assert "pip install 'leanvision[openvino]'" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("args, fragment", [
    (["--runtime", "onnxrt"], "Did you mean 'onnxruntime'"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--batch-sizes", "0"], "--batch-sizes expects positive integers"),
    (["--precision", "int3"], "Invalid precision 'int3'"),
])
def test_cli_bench_bad_input_is_one_line_error(digits_run, capsys, args, fragment):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    assert main(["bench", str(digits_run), *args]) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
