import pytest

from leanvision.errors import LeanvisionError
from leanvision.optimize import build_chain, order_chain
from leanvision.techniques import (
    DistillConfig,
    PruneConfig,
    QuantizeConfig,
    TechniqueConfig,
    list_techniques,
    parse_technique,
)


def test_parse_technique_casts_values_to_field_types():
    config = parse_technique("prune:ratio=0.25,finetune_epochs=2,structured=false,global_pruning=yes,round_to=8")
    assert config == PruneConfig(ratio=0.25, finetune_epochs=2, structured=False, global_pruning=True, round_to=8)
    assert parse_technique("prune:layer_ratios=features.conv1.conv:0.2;features.conv4.conv:0.6").layer_ratios == {
        "features.conv1.conv": 0.2, "features.conv4.conv": 0.6}
    assert parse_technique("quantize:mode=int8-dynamic") == QuantizeConfig(mode="int8-dynamic")
    assert parse_technique("fold").name == "fold"


@pytest.mark.parametrize("name", [n for n in list_techniques() if n != "distill"])
def test_technique_default_config_round_trips(name):
    config = parse_technique(name)
    assert isinstance(config, TechniqueConfig) and config.name == name
    assert parse_technique(config.spec()) == config
    assert parse_technique(config.to_dict()) == config


def test_distill_config_round_trips(tmp_path):
    (tmp_path / "model.json").write_text("{}")
    config = DistillConfig(teacher=str(tmp_path), alpha=0.7, temperature=2.0)
    assert parse_technique(config.spec()) == config


@pytest.mark.parametrize("spec, fragment", [
    ("prune:ratio=1.5", "ratio=1.5"),
    ("prune:ratio=-0.1", "ratio=-0.1"),
    ("prune:ratio=abc", "ratio='abc'"),
    ("prune:method=l3", "method='l3'"),
    ("prune:method=bn,structured=false", "structured=true"),
    ("prune:amount=0.5", "Unknown option(s) amount"),
    ("prune:0.5", "key=value"),
    ("quantize:mode=int4", "mode='int4'"),
    ("quantize:activation_type=float", "activation_type"),
    ("distill:teacher=no/such/run", "not found"),
    ("prun:ratio=0.5", "Did you mean 'prune'"),
])
def test_bad_technique_specs_fail_with_one_line(spec, fragment):
    with pytest.raises(LeanvisionError) as info:
        parse_technique(spec)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_order_chain_inserts_fold_before_quantize_and_checks_order():
    names = [c.name for c in order_chain(["prune:ratio=0.5", "quantize:mode=int8"])]
    assert names == ["prune", "fold", "quantize"]
    with pytest.raises(LeanvisionError, match="must come last"):
        order_chain(["quantize", "prune"])
    with pytest.raises(LeanvisionError, match="before fold"):
        order_chain(["fold", "prune"])
    with pytest.raises(LeanvisionError, match="appears 2 times"):
        order_chain(["quantize", "quantize"])


def test_build_chain_orders_cli_flags():
    chain = build_chain(prune=0.5, unstructured=0.3, quantize="qat", finetune_epochs=2)
    assert [c.name for c in chain] == ["prune", "prune", "fold", "quantize"]
    assert chain[0].structured and not chain[1].structured and chain[-1].finetune_epochs == 2
    assert [c.name for c in build_chain(prune=0.5, fold=False)] == ["prune"]


@pytest.mark.parametrize("name", [n for n in list_techniques() if n != "distill"])
def test_technique_default_config_applies_to_a_fresh_model(name, digits, tmp_path):
    import torch

    from leanvision.config import TrainConfig
    from leanvision.models import create_model
    from leanvision.techniques import Context, apply_

    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    ctx = Context(dataset=digits, train=TrainConfig(epochs=1, device="cpu"), work_dir=tmp_path,
                  meta={"num_classes": 10, "input_shape": [1, 28, 28]})
    model = apply_(create_model("compact").eval(), parse_technique(name), ctx)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
