"""Registry sweep over every model, reference parameter counts, the compact budget and `regularization_loss`."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from leanvision.errors import LeanvisionError, ModelSpecError
from leanvision.models import create_model, list_models, regularization_loss

SEED_BASELINE_PARAMS = 387_466
SEED_BASELINE_MACS = 11_180_160  # per 28x28x1 image: 26*26*32*9 + 24*24*64*288 + 36864*10


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, in_chans: int = 1, img_size: int = 28) -> int:
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, in_chans, img_size, img_size))
    return counter.get_total_flops() // 2


# ----- registry sweep: every registered model gets these for free -----

@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_chans,img_size", [(1, 28), (3, 32)])
def test_model_forward_backward(name, in_chans, img_size):
    torch.manual_seed(0)
    model = create_model(name, in_chans=in_chans, img_size=img_size)
    out = model(torch.randn(2, in_chans, img_size, img_size))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # frozen: whitenet stem, BN scales
    assert count_params(model) > 0
    assert model.num_classes == 10


@pytest.mark.parametrize("name", list_models())
def test_model_num_classes_override(name):
    model = create_model(name, num_classes=3)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    assert model.num_classes == 3


@pytest.mark.parametrize("name", list_models())
def test_model_exports(name):
    """torch.export is strict: it fails on data-dependent Python control flow, so ONNX export has what it needs."""
    model = create_model(name).eval()
    x = torch.randn(2, 1, 28, 28)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("name", list_models())
def test_model_has_docstring_example(name):
    from leanvision.models import MODELS

    assert "Example:" in (MODELS.get(name).__doc__ or "")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside torch.onnx's exporter, not by our code
def test_onnx_export_matches_eager(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = create_model("compact").eval()
    x = torch.randn(2, 1, 28, 28)
    torch.onnx.export(model, (x,), tmp_path / "compact.onnx", dynamo=True)
    session = onnxruntime.InferenceSession(str(tmp_path / "compact.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-4, rtol=1e-4)


# ----- reference models -----

@pytest.mark.parametrize("name,expected", [
    ("seed-baseline", SEED_BASELINE_PARAMS),
    ("seed-shallow", 216_650),
    ("seed-l2", SEED_BASELINE_PARAMS),
    ("seed-dropout", SEED_BASELINE_PARAMS),
    ("lenet5", 61_706),
])
def test_reference_param_counts(name, expected):
    assert count_params(create_model(name)) == expected


def test_resnet8_matches_mlperf_tiny_param_count():
    # Keras reports 78,666 including 480 BatchNorm moving statistics, which PyTorch keeps as buffers.
    assert count_params(create_model("resnet8", in_chans=3, img_size=32)) == 78_666 - 480


def test_seed_baseline_macs():
    assert count_macs(create_model("seed-baseline")) == SEED_BASELINE_MACS


def test_seed_layer_structure_is_readable():
    names = [name for name, _ in create_model("seed-dropout").named_children()]
    assert names == ["conv1", "relu1", "conv2", "relu2", "flatten", "dropout", "fc"]
    assert create_model("seed-dropout").dropout.p == 0.5
    assert [name for name, _ in create_model("seed-shallow").named_children()] == ["conv1", "relu1", "flatten", "fc"]


def test_compact_budget():
    model = create_model("compact")
    assert count_params(model) < SEED_BASELINE_PARAMS / 8
    assert count_macs(model) < SEED_BASELINE_MACS / 4


def test_width_kwargs_scale_models():
    assert count_params(create_model("compact", width=8)) < count_params(create_model("compact"))
    assert count_params(create_model("dsconv", width_mult=0.5)) < count_params(create_model("dsconv"))
    assert count_params(create_model("resnet8", width=8)) < count_params(create_model("resnet8"))


def test_lenet5_small_and_rectangular_inputs():
    assert create_model("lenet5", img_size=8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert create_model("lenet5", img_size=(28, 36))(torch.randn(2, 1, 28, 36)).shape == (2, 10)
    with pytest.raises(ModelSpecError, match=r"Invalid `img_size` for model 'lenet5'.*>= 8. Received: img_size=7"):
        create_model("lenet5", img_size=7)


# ----- regularization_loss -----

def test_regularization_loss_seed_l2():
    model = create_model("seed-l2")
    loss = regularization_loss(model)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, 0.01 * model.fc.weight.pow(2).sum())
    loss.backward()
    assert model.fc.weight.grad is not None and model.fc.bias.grad is None


def test_regularization_loss_zero_without_regularizers():
    loss = regularization_loss(create_model("seed-baseline"))
    assert loss.dim() == 0 and loss.item() == 0.0


def test_regularization_loss_l1_and_l2():
    layer = torch.nn.Linear(4, 3)
    layer.kernel_regularizer = {"l1": 0.1, "l2": 0.2}
    expected = 0.1 * layer.weight.abs().sum() + 0.2 * layer.weight.pow(2).sum()
    torch.testing.assert_close(regularization_loss(torch.nn.Sequential(layer)), expected)


# ----- create_model arguments and errors -----

def test_create_model_unknown_name_suggests():
    with pytest.raises(LeanvisionError, match="Did you mean 'seed-baseline'?"):
        create_model("seed-basline")


def test_create_model_unknown_kwarg():
    with pytest.raises(ModelSpecError, match=r"Unknown argument 'widht' for model 'resnet8'. Did you mean 'width'?"):
        create_model("resnet8", widht=8)


def test_create_model_drops_none_kwargs():
    model = create_model("compact", width=None, drop_rate=None, num_classes=None, img_size=None)
    assert model.num_classes == 10 and model.head.dropout.p == 0.1


@pytest.mark.parametrize("kwargs,match", [
    ({"num_classes": 0}, r"Invalid `num_classes`.*Received: num_classes=0"),
    ({"in_chans": 1.5}, r"Invalid `in_chans`"),
    ({"drop_rate": 1.5}, r"Invalid `drop_rate`.*Received: drop_rate=1.5"),
    ({"img_size": "28"}, r"Invalid `img_size`"),
    ({"width": 0}, r"Invalid `width` for model 'compact'"),
])
def test_create_model_invalid_values(kwargs, match):
    with pytest.raises(ModelSpecError, match=match):
        create_model("compact", **kwargs)


def test_model_errors_are_one_line():
    for call in (lambda: create_model("resnet8", widht=8), lambda: create_model("compact", drop_rate=2.0)):
        with pytest.raises(LeanvisionError) as info:
            call()
        assert "\n" not in str(info.value)


def test_cpu_dropout_keeps_nn_dropout_semantics():
    from leanvision.models.layers import Dropout

    torch.manual_seed(0)
    layer = Dropout(0.3).train()
    x = torch.ones(400, 1000, requires_grad=True)
    y = layer(x)
    kept = y > 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # keep probability 1 - p
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))  # inverted-dropout scale
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.7)  # gradient flows through kept elements only
    layer.eval()
    assert torch.equal(layer(x), x) and isinstance(layer, torch.nn.Dropout)
