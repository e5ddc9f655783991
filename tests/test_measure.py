"""Oracle tests for leanvision.measure: hand counts, known statistics, loose timing bounds, runtime parity."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from leanvision.errors import LeanvisionError
from leanvision.measure import (
    LatencyStats,
    count_flops,
    count_macs,
    count_params,
    environment,
    file_bytes,
    mean_std,
    measure_latency,
    measure_runtime,
    measure_throughput,
    peak_memory,
    weight_bytes,
    wilson_interval,
)
from leanvision.runtimes import RUNTIMES, export_onnx, get_runtime, predict_batches

HAS_ORT = get_runtime("onnxruntime").is_available()[0]


def keras_baseline() -> nn.Module:
    """The Keras MNIST convnet example without pooling/dropout: the hand-checked 11.18 M MAC reference."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36864, 10)
    )


def tiny_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


# ---- counts ---------------------------------------------------------------------------------------------------------


def test_count_params_closed_form_and_trainable_only():
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 2))
    assert count_params(model) == 10 * 5 + 5 + 5 * 2 + 2
    model[0].requires_grad_(False)
    assert count_params(model, trainable_only=True) == 5 * 2 + 2


def test_count_macs_linear_equals_in_times_out():
    assert count_macs(nn.Linear(64, 10), (1, 1, 64)) == 64 * 10


def test_count_macs_conv2d_hand_count():
    conv = nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1, groups=2)
    h_out = w_out = (20 + 2 * 1 - 3) // 2 + 1
    assert count_macs(conv, (8, 20, 20)) == h_out * w_out * 16 * 8 * 3 * 3 // 2


def test_count_macs_keras_baseline_and_flops_are_twice_macs():
    model = keras_baseline()
    assert count_params(model) == 387_466
    assert count_macs(model, (1, 28, 28)) == 11_180_160
    assert count_flops(model, (1, 28, 28)) == 2 * 11_180_160


def test_count_macs_restores_flags_and_leaves_weights_unchanged():
    model = tiny_convnet().train()
    model[1].eval()  # mixed flags must come back as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, (3, 8, 8))
    assert model.training and not model[1].training and model[4].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_count_macs_rejects_batched_shape():
    with pytest.raises(ValueError, match="Expected \\(C, H, W\\)"):
        count_macs(nn.Linear(4, 2), (1, 1, 1, 4))


def test_weight_bytes_counts_params_and_buffers(tmp_path):
    assert weight_bytes(nn.Linear(10, 5)) == 55 * 4
    bn = nn.BatchNorm2d(4)  # weight, bias, running_mean, running_var (fp32) + num_batches_tracked (int64)
    assert weight_bytes(bn) == 4 * 4 * 4 + 8
    assert weight_bytes(nn.Linear(10, 5), dtype_bytes=1) == 55
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 123)
    assert file_bytes(path) == 123


# ---- statistics ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "correct,total,expected",
    [(0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)), (50, 100, (0.4038, 0.5962)), (95, 100, (0.8883, 0.9785))],
)
def test_wilson_interval_known_values(correct, total, expected):
    low, high = wilson_interval(correct, total)
    assert low == pytest.approx(expected[0], abs=1e-4) and high == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="Received: correct=11, total=10"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_mean_std_sample_std_and_single_value():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.9]) == (0.9, 0.0)
    mean, std = mean_std([0.91, 0.93, 0.92, 0.94])
    assert mean == pytest.approx(0.925) and std == pytest.approx(0.0129099, abs=1e-6)
    with pytest.raises(ValueError):
        mean_std([])


# ---- timing and memory -----------------------------------------------------------------------------------------------


def test_measure_latency_on_known_sleep():
    calls = {"fn": 0, "sync": 0}

    def fn():
        calls["fn"] += 1
        time.sleep(0.002)

    stats = measure_latency(fn, warmup=2, repeats=5, sync=lambda: calls.__setitem__("sync", calls["sync"] + 1))
    assert isinstance(stats, LatencyStats)
    assert calls == {"fn": 7, "sync": 7} and stats.repeats == 5 and stats.warmup == 2
    assert 2.0 <= stats.min_ms <= stats.median_ms <= stats.p95_ms and stats.median_ms < 1000
    assert stats.min_ms <= stats.mean_ms


@pytest.mark.parametrize("device, syncs", [("cpu", 0), ("cuda:1", 8), ("mps", 8), ("xla", 8)])
def test_measure_latency_syncs_the_device_it_is_given(monkeypatch, device, syncs):
    """One timing loop for study, optimize and bench: given a device, it waits for it after every call (none on the
    CPU), times the first warm-up call apart, and opens `window` around the timed calls only."""
    from contextlib import contextmanager

    from leanvision.measure import timing

    log = []
    monkeypatch.setattr(timing, "synchronize", lambda d: log.append(("sync", str(d))))

    @contextmanager
    def window():
        log.append("open")
        yield
        log.append("close")

    stats = measure_latency(lambda: log.append("call"), warmup=3, repeats=5, device=device, window=window)
    assert log.count("call") == 8 and len([e for e in log if e[0] == "sync"]) == syncs
    assert all(e == ("sync", device) for e in log if e[0] == "sync")
    opened, closed = log.index("open"), log.index("close")
    assert log[:opened].count("call") == 3 and log[opened:closed].count("call") == 5  # warm-up outside the window
    assert stats.warmup == 3 and stats.repeats == 5 and stats.first_call_ms is not None
    assert measure_latency(lambda: None, warmup=0, repeats=1).first_call_ms is None


def test_measure_runtime_times_through_the_shared_loop(monkeypatch):
    """`measure_runtime` records come from `measure_latency` with the runtime's device (bench: test_export_bench)."""
    from leanvision.measure import speed

    seen = []
    real = speed.measure_latency

    def spy(fn, **kwargs):
        seen.append({k: kwargs[k] for k in ("warmup", "repeats", "device")})
        return real(fn, **kwargs)

    monkeypatch.setattr(speed, "measure_latency", spy)
    records = measure_runtime(tiny_convnet(), "torch", (3, 8, 8), batch_sizes=(1, 4), warmup=1, repeats=2)
    assert [r["batch_size"] for r in records] == [1, 4]
    assert seen == [{"warmup": 1, "repeats": 2, "device": torch.device("cpu")}] * 2


def test_measure_latency_min_time_extends_repeats():
    stats = measure_latency(lambda: time.sleep(0.001), warmup=0, repeats=1, min_time_s=0.01)
    assert stats.repeats >= 2


def test_measure_throughput_uses_median_batch_time():
    result = measure_throughput(lambda: time.sleep(0.002), 32, warmup=1, repeats=3)
    assert result["batch_size"] == 32
    assert result["images_per_s"] == pytest.approx(32 / (result["median_ms_per_batch"] / 1e3))
    assert result["images_per_s"] <= 32 / 0.002


def test_peak_memory_cpu_sees_200mb_allocation():
    def allocate():
        x = torch.ones(50_000_000)  # 200 MB of float32, pages touched by the fill
        return float(x[-1])

    peak = peak_memory(allocate, torch.device("cpu"))
    if peak is None:
        pytest.skip("no /proc/self/statm on this platform")
    assert peak >= 150e6


def test_peak_memory_unsupported_device_returns_none():
    assert peak_memory(lambda: None, "meta") is None


# ---- environment -----------------------------------------------------------------------------------------------------


def test_environment_has_versions_and_no_hostname():
    import platform
    import socket

    env = environment(torch.device("cpu"))
    assert env["torch"] == torch.__version__ and env["torch_threads"] == torch.get_num_threads()
    assert env["gpu_name"] is None and env["cpu_count"] >= 1
    for key in ("python", "numpy", "onnxruntime", "platform", "cpu_model"):
        assert key in env
    assert socket.gethostname() not in {str(v) for v in env.values()}
    assert platform.node() not in {str(v) for v in env.values()}


# ---- runtimes --------------------------------------------------------------------------------------------------------


def test_runtime_registry_lists_builtins_and_suggests_names():
    assert {"torch", "onnxruntime"} <= set(RUNTIMES.names())
    with pytest.raises(LeanvisionError, match="Did you mean 'torch'"):
        get_runtime("torhc")


def test_torch_runtime_matches_eager_and_leaves_model_alone():
    model = tiny_convnet().train()
    x = torch.randn(4, 3, 8, 8)
    predict = get_runtime("torch").prepare(model, x)
    assert model.training  # prepare works on a copy
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(predict(x), expected)


def test_torch_runtime_bf16_close_and_fp16_needs_cuda():
    model = tiny_convnet().eval()
    x = torch.randn(2, 3, 8, 8)
    out = get_runtime("torch").prepare(model, x, precision="bf16")(x)
    assert out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=0.1, rtol=0.1)
    with pytest.raises(LeanvisionError, match="needs a CUDA device"):
        get_runtime("torch").prepare(model, x, precision="fp16", device="cpu")
    with pytest.raises(LeanvisionError, match="Invalid precision 'int3'"):
        get_runtime("torch").prepare(model, x, precision="int3")


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_onnxruntime_matches_eager_with_dynamic_batch():
    model = tiny_convnet().eval()
    predict = get_runtime("onnxruntime").prepare(model, torch.randn(2, 3, 8, 8))
    assert predict.providers == ["CPUExecutionProvider"]
    for batch in (1, 5):
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(predict(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_onnxruntime_rejects_non_fp32():
    with pytest.raises(LeanvisionError, match="Expected one of: fp32"):
        get_runtime("onnxruntime").prepare(tiny_convnet(), torch.randn(2, 3, 8, 8), precision="bf16")


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_onnxruntime_streams_shards_batches_in_order_across_single_thread_sessions():
    model = tiny_convnet().eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        predict = get_runtime("onnxruntime-streams").prepare(model, torch.randn(2, 3, 8, 8))
    finally:
        torch.set_num_threads(threads)
    assert predict.streams == 3 and predict.providers == ["CPUExecutionProvider"]
    for batch in (1, 2, 7):  # fewer images than streams, and shards of unequal size
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(predict(x), model(x), atol=1e-4, rtol=1e-4)
    record = measure_runtime(model, "onnxruntime-streams", (3, 8, 8), batch_sizes=(4,), warmup=1, repeats=2)[0]
    assert record["streams"] == torch.get_num_threads() and record["images_per_s"] > 0
    with pytest.raises(LeanvisionError, match="CPU only"):
        get_runtime("onnxruntime-streams").prepare(model, torch.randn(2, 3, 8, 8), device="cuda")


def test_export_onnx_writes_file_with_dynamic_batch(tmp_path):
    onnx = pytest.importorskip("onnx")
    path = export_onnx(tiny_convnet(), (3, 8, 8), tmp_path / "sub" / "model.onnx")
    assert path.exists() and file_bytes(path) > 0
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize(
    "runtime", ["torch", pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAS_ORT, reason="no ort"))]
)
def test_measure_runtime_records_have_all_keys(runtime):
    records = measure_runtime(tiny_convnet(), runtime, (3, 8, 8), batch_sizes=(1, 4), warmup=1, repeats=2)
    assert [r["batch_size"] for r in records] == [1, 4]
    keys = {
        "runtime",
        "precision",
        "device",
        "batch_size",
        "threads",
        "latency_median_ms",
        "latency_p95_ms",
        "images_per_s",
        "latency_unit",
        "throughput_unit",
    }
    for record in records:
        assert keys <= set(record)
        assert record["runtime"] == runtime and record["device"] == "cpu" and record["precision"] == "fp32"
        assert record["images_per_s"] > 0 and math.isfinite(record["latency_median_ms"])


def test_predict_batches_matches_one_big_batch():
    model = tiny_convnet().eval()
    x = torch.randn(10, 3, 8, 8)
    predict = get_runtime("torch").prepare(model, x)
    logits = predict_batches(predict, x, batch_size=3)
    assert logits.shape == (10, 10) and logits.device.type == "cpu"
    torch.testing.assert_close(logits, predict(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(predict_batches(predict, x.numpy(), batch_size=4), logits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runtime_fp16_and_peak_memory():
    model = tiny_convnet().eval()
    x = torch.randn(4, 3, 8, 8)
    out = get_runtime("torch").prepare(model, x, precision="fp16", device="cuda")(x)
    with torch.no_grad():
        torch.testing.assert_close(out.cpu(), model(x), atol=0.05, rtol=0.05)
    peak = peak_memory(lambda: torch.empty(50_000_000, device="cuda"), torch.device("cuda"))
    assert peak >= 200e6
    records = measure_runtime(model, "torch", (3, 8, 8), device="cuda", batch_sizes=(2,), warmup=1, repeats=2)
    assert records[0]["device"] == "cuda"


def test_export_onnx_falls_back_to_dynamo_exporter(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    real_export = torch.onnx.export

    def legacy_fails(*args, dynamo=True, **kwargs):
        if not dynamo:
            raise RuntimeError("simulated legacy exporter failure")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", legacy_fails)
    model = tiny_convnet().eval()
    path = export_onnx(model, (3, 8, 8), tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), model(x), atol=1e-4, rtol=1e-4
        )


def test_export_onnx_both_exporters_failing_is_one_line_error(tmp_path, monkeypatch):
    def always_fails(*args, **kwargs):
        raise RuntimeError("unsupported op aten::weird\nlong traceback text")

    monkeypatch.setattr(torch.onnx, "export", always_fails)
    with pytest.raises(LeanvisionError, match="failed with both exporters") as info:
        export_onnx(tiny_convnet(), (3, 8, 8), tmp_path / "model.onnx")
    assert "\n" not in str(info.value)


def test_peak_tensor_memory_counts_live_tensors_exactly():
    import torch

    from leanvision.measure import peak_tensor_memory

    assert peak_tensor_memory(lambda: torch.ones(1000, 1000)) == 4_000_000

    def two_steps():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 4 MB more while a is alive
        del a
        return b + 1  # a is freed: peak stays at 8 MB

    assert peak_tensor_memory(two_steps) == 8_000_000


def test_reorder_output_rewrite_only_touches_exclusive_per_tensor_chains():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from leanvision.runtimes.graph import reorder_output_to_nhwc

    def graph(perm, extra_consumer=False):
        nodes = [helper.make_node("ReorderOutput", ["x"], ["r"], domain="com.microsoft.nchwc", channels=16),
                 helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
                 helper.make_node("Transpose", ["q"], ["t"], perm=perm)]
        outputs = [helper.make_tensor_value_info("t", TensorProto.UINT8, None)]
        if extra_consumer:
            nodes.append(helper.make_node("Identity", ["q"], ["q2"]))
            outputs.append(helper.make_tensor_value_info("q2", TensorProto.UINT8, None))
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                 helper.make_tensor("z", TensorProto.UINT8, [], [0])]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
        return helper.make_graph(nodes, "g", inputs, outputs, inits)

    g = graph([0, 2, 3, 1])
    assert reorder_output_to_nhwc(g) == 1
    assert [n.op_type for n in g.node] == ["ReorderOutput", "QuantizeLinear"] and g.node[1].output[0] == "t"
    assert helper.get_attribute_value(next(a for a in g.node[0].attribute if a.name == "channels_last")) == 1
    assert reorder_output_to_nhwc(graph([0, 3, 1, 2])) == 0  # another permutation
    assert reorder_output_to_nhwc(graph([0, 2, 3, 1], extra_consumer=True)) == 0  # the NCHW tensor is still needed
