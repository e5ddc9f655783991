import pytest
import torch
from torch import nn

from leanvision.models import create_model
from leanvision.techniques import fold_conv_bn_, restore_structure_


def _randomize_bn_(model):
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding has something to fold
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name, num_pairs", [("compact", 4), ("resnet8", 7), ("dsconv", 7)])
def test_fold_conv_bn_keeps_outputs_and_removes_batchnorm(name, num_pairs):
    model = _randomize_bn_(create_model(name))
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    modules_before = len(list(model.modules()))
    assert fold_conv_bn_(model, (1, 28, 28)) == num_pairs
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if name != "resnet8":  # Sequential parents lose the BN module; custom blocks get an Identity in its place
        assert len(list(model.modules())) == modules_before - num_pairs


def test_fold_skips_models_without_batchnorm():
    model = create_model("lenet5").eval()
    assert fold_conv_bn_(model, (1, 28, 28)) == 0


def test_folded_structure_is_rebuilt_for_loading():
    model = _randomize_bn_(create_model("compact"))
    fold_conv_bn_(model, (1, 28, 28))
    fresh = restore_structure_(create_model("compact"), {"folded": True, "input_shape": [1, 28, 28]})
    fresh.load_state_dict(model.state_dict())  # same keys and shapes: the folded weights load
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), model(x))
