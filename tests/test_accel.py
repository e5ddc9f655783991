"""Devices, torch.compile and the extra inference runtimes (leanvision.accel: devices, compile, runtimes)."""

import json
import os

import pytest
import torch
from testkit import one_error_line as shared_one_error_line
from torch import nn

from leanvision.cli import main
from leanvision.compile import compile_support
from leanvision.config import TrainConfig
from leanvision.device import prepare_input, setup_device
from leanvision.errors import LeanvisionError
from leanvision.loss_tracker import LossTracker
from leanvision.runtimes import get_runtime

QUICK = ["--dataset", "digits", "--epochs", "1", "--no-progress"]
HAS_CUDA = torch.cuda.is_available()
HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
COMPILE_OK, COMPILE_WHY = compile_support("cpu")


def _has_xla() -> bool:
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        return False
    return True


def one_error_line(err: str) -> str:
    return shared_one_error_line(err, only=True)


def tiny_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


# ---- devices ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, present", [("cuda", HAS_CUDA), ("mps", HAS_MPS), ("tpu", _has_xla())])
def test_cli_train_on_absent_device_is_one_line_error_before_any_file(device, present, tmp_path, capsys):
    if present:
        pytest.skip(f"{device} is present here")
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--model", "seed-shallow", "--device", device, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert repr(device) in line and "--device cpu" in line
    assert not out.exists() or not any(out.iterdir())  # failed before writing anything


def test_setup_device_rejects_cuda_only_options_elsewhere():
    with pytest.raises(LeanvisionError, match="memory_fraction .*device='cpu'.*device='cuda'"):
        setup_device("cpu", memory_fraction=0.5)
    with pytest.raises(LeanvisionError, match="expandable_segments configure the CUDA allocator"):
        setup_device("cpu", expandable_segments=True)
    assert setup_device("cpu", channels_last=True) == torch.device("cpu")
    with pytest.raises(LeanvisionError, match="Invalid device 'gpu7'"):
        setup_device("gpu7")


def test_train_config_memory_fraction_is_validated():
    with pytest.raises(LeanvisionError, match="memory_fraction=1.5"):
        TrainConfig(memory_fraction=1.5)
    assert TrainConfig(memory_fraction=1.0).memory_fraction == 1.0


def test_prepare_input_channels_last_keeps_values():
    x = torch.randn(2, 3, 5, 5)
    y = prepare_input(x, channels_last=True)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, y)
    assert prepare_input(x, channels_last=False) is x


def test_loss_tracker_eager_is_exact_and_lazy_reads_every_n_steps():
    eager = LossTracker(torch.device("cpu"))
    assert eager.add(torch.tensor(0.5), 4) == 0.5 and eager.pop() == 2.0 and eager.pop() == 0.0
    lazy = LossTracker(torch.device("cpu"), check_every=3)  # what XLA devices get (every 50)
    assert lazy.add(torch.tensor(1.0), 2) == 0.0 and lazy.add(torch.tensor(1.0), 2) == 0.0
    assert lazy.pop() == 0.0  # nothing read from the device yet
    assert lazy.add(torch.tensor(1.0), 2) == 6.0  # third step: one read of the device-side sum
    lazy.add(torch.tensor(float("nan")), 1)
    assert lazy.pop() == 6.0 and lazy.flush() != lazy.flush()  # flush reads the NaN remainder (NaN != NaN)


def test_channels_last_training_on_cpu(tmp_path, capsys):
    out = tmp_path / "cl"
    assert main(["train", *QUICK, "--model", "compact", "--device", "cpu", "--channels-last", "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text())["test_total"] > 0
    assert json.loads((out / "config.json").read_text())["config"]["train"]["channels_last"] is True


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_training_really_uses_nhwc(digits, tmp_path, channels_last):
    """The convolutions see NHWC activations and weights exactly when channels_last is on (C > 1, where the two
    layouts differ)."""
    from leanvision.models import create_model
    from leanvision.train import fit

    torch.manual_seed(0)
    model = create_model("compact", num_classes=10, in_chans=1, img_size=28)
    seen = []

    def record(module, args):
        x, w = args[0], module.weight
        if module.training and min(x.shape[1:]) > 1 and min(w.shape[1:]) > 1:  # where NCHW and NHWC differ
            seen.append((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                         w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(record)
    fit(model, digits, TrainConfig(epochs=1, device="cpu", channels_last=channels_last), tmp_path, progress=False)
    assert seen and all(s == (channels_last, channels_last) for s in seen)


# ---- torch.compile ---------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not COMPILE_OK, reason=f"torch.compile unsupported here: {COMPILE_WHY}")
def test_cli_train_compile_records_compile_time_apart(tmp_path, capsys):
    out = tmp_path / "compiled"
    assert main(["train", *QUICK, "--model", "seed-shallow", "--device", "cpu", "--compile", "--out", str(out)]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    result = json.loads((out / "result.json").read_text())
    assert record["compile_time_s"] > 0 and result["compile_time_s"] == record["compile_time_s"]
    assert result["test_accuracy"] > 0.5  # compiled training learns (seed-shallow reaches ~0.9 in one epoch)


@pytest.mark.skipif(not COMPILE_OK, reason=f"torch.compile unsupported here: {COMPILE_WHY}")
def test_torch_compile_runtime_matches_eager_and_times_first_call():
    model = tiny_convnet().eval()
    x = torch.randn(3, 3, 8, 8)
    predict = get_runtime("torch-compile").prepare(model, x)
    with torch.no_grad():
        torch.testing.assert_close(predict(x), model(x), atol=1e-4, rtol=1e-4)
    predict(x)
    assert list(predict.compile_times_s) == [(3, 3, 8, 8)] and predict.compile_times_s[(3, 3, 8, 8)] > 0
    with pytest.raises(LeanvisionError, match="needs a CUDA device"):
        get_runtime("torch-compile").prepare(model, x, precision="fp16", device="cpu")


def test_compile_support_reports_a_reason_for_xla():
    ok, reason = compile_support("xla")
    assert not ok and "XLA" in reason


def test_openvino_runtime_unavailable_has_install_hint_or_matches_eager():
    runtime = get_runtime("openvino")
    ok, reason = runtime.is_available()
    model = tiny_convnet().eval()
    x = torch.randn(2, 3, 8, 8)
    if not ok:
        assert "pip install 'leanvision[openvino]'" in reason
        with pytest.raises(LeanvisionError, match="openvino is not installed"):
            runtime.prepare(model, x)
        return
    with torch.no_grad():
        torch.testing.assert_close(runtime.prepare(model, x)(x), model(x), atol=1e-4, rtol=1e-4)


# ---- accelerators (skipped here) -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_options_channels_last_bf16_training(tmp_path):
    os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    device = setup_device("cuda", memory_fraction=0.5, expandable_segments=not torch.cuda.is_initialized())
    assert device.type == "cuda" and torch.backends.cudnn.benchmark
    out = tmp_path / "gpu"
    assert main(["train", *QUICK, "--model", "compact", "--device", "cuda", "--precision", "bf16",
                 "--channels-last", "--memory-fraction", "0.5", "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text())["test_accuracy"] > 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_torch_compile_runtime_fp16():
    ok, reason = compile_support("cuda")
    if not ok:
        pytest.skip(reason)
    model = tiny_convnet().eval()
    x = torch.randn(4, 3, 8, 8)
    out = get_runtime("torch-compile").prepare(model, x, precision="fp16", device="cuda")(x)
    with torch.no_grad():
        torch.testing.assert_close(out.cpu(), model(x), atol=0.05, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_MPS, reason="needs Apple MPS")
def test_mps_training(tmp_path):
    assert main(["train", *QUICK, "--model", "compact", "--device", "mps", "--out", str(tmp_path / "m")]) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not _has_xla(), reason="needs torch_xla and a TPU")
def test_tpu_training(tmp_path):
    assert main(["train", *QUICK, "--model", "compact", "--device", "tpu", "--out", str(tmp_path / "t")]) == 0


@pytest.mark.skipif(not COMPILE_OK, reason=f"torch.compile unsupported here: {COMPILE_WHY}")
def test_cli_study_with_torch_compile_runtime_column(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: one\nvariants:\n  - {name: shallow, model: seed-shallow}\n")
    out = tmp_path / "study"
    assert main(["study", "--plan", str(plan), "--epochs", "1", "--repeats", "3", "--out", str(out), "--no-progress",
                 "--runtimes", "torch,onnxruntime,torch-compile"]) == 0
    record = json.loads((out / "variants" / "shallow" / "record.json").read_text())
    runtimes = record["runtimes"]
    assert set(runtimes) == {"torch", "onnxruntime", "torch-compile"}
    assert runtimes["torch-compile"]["compile_time_s"] > 0
    assert abs(runtimes["torch-compile"]["accuracy"] - runtimes["torch"]["accuracy"]) <= 0.001
    assert "torch-compile_latency_b1_median_ms" in (out / "results.csv").read_text().splitlines()[0]
