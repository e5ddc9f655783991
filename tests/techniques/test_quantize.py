import json
import shutil
import warnings
from pathlib import Path

import onnx
import pytest
import torch

from leanvision.errors import LeanvisionError
from leanvision.optimize import optimize_run
from leanvision.runs import load_run
from leanvision.runtimes import export_onnx, get_runtime, make_session, ort_session
from leanvision.runtimes.onnx_model import OnnxModule
from leanvision.techniques.onnx_graph import graph_coverage

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def int8_run(base_run, tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("int8") / "int8"
    result = optimize_run(base_run, ["quantize:mode=int8,calibration_size=256"], out, dataset=digits,
                          progress=False, repeats=5)
    return out, result


def test_static_int8_has_integer_convolutions_after_ort_fusion(int8_run, tmp_path):
    out, result = int8_run
    initializers = {i.name: i.data_type for i in onnx.load(out / "model.onnx").graph.initializer}
    assert onnx.TensorProto.INT8 in initializers.values()  # int8 weights stored in the file (QDQ format)
    optimized = str(tmp_path / "optimized.onnx")
    make_session(out / "model.onnx", {}, optimized_path=optimized, level="extended")
    ops = [node.op_type for node in onnx.load(optimized).graph.node]
    assert ops.count("QLinearConv") >= 3 and "QGemm" in ops
    coverage = result["steps"][-1]["quantization"]["coverage"]
    assert coverage["int8"]["conv"] == 3 and coverage["fp32"]["conv"] == 1  # the 1-channel stem stays fp32


def test_int8_session_drops_the_stem_transpose_bit_for_bit(int8_run, base_run, tmp_path):
    import onnxruntime as ort


    out, result = int8_run
    session_kwargs = result["steps"][-1]["quantization"]["session"]
    rewritten = ort_session(out / "model.onnx", 1, session_kwargs=session_kwargs)
    assert rewritten.layout_rewrites == 1  # fp32 stem -> ReorderOutput -> QuantizeLinear -> Transpose, fused
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    plain = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"], **session_kwargs)
    x = torch.randn(37, 1, 28, 28, generator=torch.Generator().manual_seed(0)).numpy()
    assert (rewritten.run(None, {"input": x})[0] == plain.run(None, {"input": x})[0]).all()
    fp32 = export_onnx(load_run(base_run).model, (1, 28, 28), tmp_path / "fp32.onnx")
    assert ort_session(fp32, 1).layout_rewrites == 0  # nothing to rewrite: ORT's own session


def test_static_int8_accuracy_close_to_fp32_and_speed_recorded(int8_run):
    _, result = int8_run
    fp32, int8 = result["steps"][0], result["steps"][-1]
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= 0.03
    assert int8["file_bytes"] < 0.5 * fp32["file_bytes"]
    speed = int8["onnxruntime"]
    assert speed["int8"]["throughput_images_per_s"] > 0 and speed["fp32"]["latency_b1_median_ms"] > 0
    assert "quantize int8" in int8["summary"] and "int8 vs fp32 ONNX Runtime" in int8["summary"]
    assert "in throughput mode" in int8["summary"] and int8["onnxruntime"]["throughput_speedup_streams"] > 0
    assert set(int8["speed"]) == {"onnxruntime"} and set(fp32["speed"]) == {"torch", "onnxruntime"}


def test_int8_run_loads_as_onnx_module_and_runs_on_onnxruntime_only(int8_run, tmp_path, digits):
    out, result = int8_run
    run = load_run(out)
    assert isinstance(run.model, OnnxModule) and run.meta["runtime"] == "onnxruntime"
    x = torch.randn(4, 1, 28, 28)
    logits = run.model(x)
    assert logits.shape == (4, 10) and logits.dtype == torch.float32
    predict = get_runtime("onnxruntime").prepare(run.model, x)  # opens model.onnx itself, no re-export
    torch.testing.assert_close(predict(x), logits)
    streams = get_runtime("onnxruntime-streams").prepare(run.model, x)  # same file, same session options
    torch.testing.assert_close(streams(x), logits)
    with pytest.raises(LeanvisionError, match="only ONNX Runtime"):
        get_runtime("torch").prepare(run.model, x)
    copied = export_onnx(run.model, (1, 28, 28), tmp_path / "exported.onnx")
    assert copied.read_bytes() == (out / "model.onnx").read_bytes()


def test_dynamic_int8_covers_dense_layers_only(base_run, tmp_path, digits):
    result = optimize_run(base_run, ["quantize:mode=int8-dynamic"], tmp_path / "dyn", dataset=digits,
                          progress=False, repeats=5)
    step = result["steps"][-1]
    coverage = step["quantization"]["coverage"]
    assert coverage["int8"] == {"conv": 0, "dense": 1} and coverage["fp32"]["conv"] == 4
    assert "covers only the Dense" in step["summary"]
    assert abs(step["accuracy"] - result["steps"][0]["accuracy"]) <= 0.01


def test_qat_converted_model_agrees_with_its_fake_quant_version(base_run, tmp_path, digits):
    result = optimize_run(base_run, ["quantize:mode=qat,finetune_epochs=1,calibration_size=256"], tmp_path / "qat",
                          dataset=digits, progress=False, repeats=5)
    quantization = result["steps"][-1]["quantization"]
    assert quantization["qat_agreement"]["top1_agreement"] >= 0.99
    assert "quantize_static" in quantization["conversion"]
    assert quantization["coverage"]["int8"]["conv"] == 3
    # no real loss (the fine-tuning epoch may also gain: 94.4% -> 98.1% on one AVX2 CPU, the source is under-trained)
    assert result["test_accuracy"] >= result["source_test_accuracy"] - 0.03


def test_graph_coverage_of_fp32_model(tmp_path):
    from leanvision.models import create_model

    path = export_onnx(create_model("compact"), (1, 28, 28), tmp_path / "fp32.onnx")
    coverage = graph_coverage(path)
    assert coverage["int8"] == {"conv": 0, "dense": 0} and coverage["fp32"]["conv"] == 4


def test_reduce_range_gives_7_bit_weights_and_is_on_by_default_without_vnni(tmp_path, monkeypatch):
    import numpy as np
    from onnx import numpy_helper

    from leanvision.techniques import quantize
    from leanvision.techniques.qat import fake_quant_weight
    from leanvision.techniques.quantize import QuantizeConfig, quantize_onnx

    monkeypatch.setattr(quantize, "cpu_features", lambda: {"cpu_isa": "AVX2", "cpu_int8": None, "cpu_bf16": None})
    assert quantize.reduce_range(QuantizeConfig()) is True
    assert quantize.reduce_range(QuantizeConfig(reduce_range=False)) is False
    monkeypatch.setattr(quantize, "cpu_features", lambda: {"cpu_isa": "AVX512", "cpu_int8": "AVX-512 VNNI",
                                                           "cpu_bf16": None})
    assert quantize.reduce_range(QuantizeConfig()) is False and quantize.reduce_range(QuantizeConfig(reduce_range=True))
    monkeypatch.setattr(quantize, "cpu_features", lambda: {"cpu_isa": "SVE256", "cpu_int8": None, "cpu_bf16": None})
    assert quantize.reduce_range(QuantizeConfig()) is False  # the saturation is an x86 (vpmaddubsw) matter

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 12 * 12, 10)).eval()
    calibration = torch.randn(64, 3, 16, 16)
    widest = {}
    for reduce in (False, True):
        path = tmp_path / f"rr{reduce}.onnx"
        record = quantize_onnx(model, (3, 16, 16), path, QuantizeConfig(reduce_range=reduce), calibration)
        assert record["reduce_range"] is reduce and ("7-bit" in record["weights"]) is reduce
        weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.data_type == 3]
        widest[reduce] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.size > 1)
    assert widest[False] == 127 and widest[True] <= 64
    w = torch.randn(4, 3, 3, 3)
    assert fake_quant_weight(w, 64).div(w.abs().amax((1, 2, 3), keepdim=True) / 64).round().abs().max() <= 64


def test_loading_an_8_bit_int8_model_on_a_cpu_that_saturates_warns(int8_run, monkeypatch, tmp_path):
    from leanvision.techniques import quantize

    out = Path(shutil.copytree(int8_run[0], tmp_path / "int8"))
    monkeypatch.setattr(quantize, "reduce_range", lambda config: True)  # as on an x86 CPU without VNNI/AMX
    assert quantize.saturation_warning({"mode": "int8", "reduce_range": True}) is None
    assert quantize.saturation_warning({"mode": "int8-dynamic"}) is None
    assert "measured on an unrecorded CPU, but this CPU has no VNNI/AMX" in quantize.saturation_warning({"mode": "qat"})
    here = {"cpu_isa": "AVX2", "cpu_int8": None, "cpu_bf16": None}  # 8 bits forced on such a CPU: measured there
    assert quantize.saturation_warning({"mode": "int8", "reduce_range": False, "cpu": here}) is None
    meta = json.loads((out / "model.json").read_text())
    meta["quantization"].update(reduce_range=False, cpu={**here, "cpu_int8": "AMX"})
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"8-bit weights and was measured by AMX, but this CPU has no VNNI/AMX.*"
                                         r"re-quantize here \(leanvision optimize .*compact --quantize int8"):
        load_run(out)
    monkeypatch.setattr(quantize, "reduce_range", lambda config: False)  # a VNNI/AMX or non-x86 CPU: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(out)
