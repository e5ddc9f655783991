from pathlib import Path

import pytest
import torch
from torch import nn

from leanvision.errors import LeanvisionError
from leanvision.io import read_json
from leanvision.measure import count_macs, count_params
from leanvision.models import create_model
from leanvision.optimize import optimize_run
from leanvision.runs import load_run
from leanvision.techniques import (
    Context,
    PruneConfig,
    apply_,
    apply_shape_overrides,
    fold_conv_bn_,
    shape_overrides,
)

SHAPE = (1, 28, 28)


def _bare(**fields) -> PruneConfig:
    """A prune with no fine-tuning (the default fine-tunes one epoch): the pruning mechanics alone."""
    return PruneConfig(**{"finetune_epochs": 0, **fields})


def _ctx(tmp_path=Path("."), dataset=None):
    return Context(dataset=dataset, train=None, work_dir=tmp_path,
                   meta={"num_classes": 10, "input_shape": list(SHAPE)})


@pytest.mark.parametrize("name", ["compact", "lenet5", "dsconv", "resnet8", "seed-baseline"])
def test_structured_prune_gives_smaller_dense_model_that_reloads(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    params, macs = count_params(model), count_macs(model, SHAPE)
    pruned = apply_(model, _bare(ratio=0.5), _ctx())
    assert count_params(pruned) < 0.6 * params and count_macs(pruned, SHAPE) < 0.6 * macs
    x = torch.randn(3, *SHAPE)
    assert pruned(x).shape == (3, 10)
    classifiers = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    assert classifiers[-1].out_features == 10  # the output layer is never pruned
    overrides = shape_overrides(pruned, create_model(name))
    assert overrides and all(set(d) <= {"in_channels", "out_channels", "groups", "num_features", "in_features",
                                        "out_features"} for d in overrides.values())
    rebuilt = apply_shape_overrides(create_model(name), overrides)
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), pruned(x), rtol=0, atol=0)


def test_pruned_run_saved_and_reloaded_gives_identical_outputs(base_run, tmp_path, digits):
    result = optimize_run(base_run, ["prune:ratio=0.5,finetune_epochs=0", "fold"], tmp_path / "pruned", dataset=digits,
                          progress=False)
    meta = read_json(tmp_path / "pruned" / "model.json")
    assert meta["folded"] and meta["shape_overrides"]["features.conv1.conv"] == {"out_channels": 8}
    assert meta["shape_overrides"]["head.fc"] == {"in_features": 32} and meta["num_classes"] == 10
    reloaded = load_run(tmp_path / "pruned").model
    reference = apply_(load_run(base_run).model, _bare(ratio=0.5), _ctx(dataset=digits))  # deterministic
    fold_conv_bn_(reference, SHAPE)
    x = torch.randn(16, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), reference(x))
    prune_step = result["steps"][1]
    source = result["steps"][0]
    assert prune_step["params"] < source["params"] / 3 and prune_step["macs"] < source["macs"] / 3
    assert "prune 50% (structured, l1)" in prune_step["summary"]
    for step in result["steps"]:  # every step measured on every CPU runtime that can run it
        assert set(step["speed"]) == {"torch", "onnxruntime"}
        assert all(s["throughput_images_per_s"] > 0 and s["latency_b1_median_ms"] > 0 for s in step["speed"].values())
    assert "batch-256 throughput" in prune_step["summary"] and "torch" in prune_step["summary"]
    assert "onnxruntime" in prune_step["summary"]


def test_unstructured_prune_reports_sparsity_and_no_speed_change():
    torch.manual_seed(0)
    model = create_model("compact").eval()
    params, macs = count_params(model), count_macs(model, SHAPE)
    ctx = _ctx()
    pruned = apply_(model, _bare(ratio=0.6, structured=False), ctx)
    assert ctx.info["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert count_params(pruned) == params and count_macs(pruned, SHAPE) == macs  # same dense tensors
    assert not any(name.endswith("_mask") for name, _ in pruned.named_buffers())  # made permanent
    assert "no speed change expected" in ctx.notes[0]
    assert pruned.head.fc.weight.ne(0).all()  # the classifier keeps all its weights


def test_global_and_per_layer_ratios():
    torch.manual_seed(0)
    model = apply_(create_model("compact").eval(), _bare(ratio=0.0, layer_ratios={"features.conv4.conv": 0.75}),
                   _ctx())
    assert model.features.conv4.conv.out_channels == 16 and model.features.conv1.conv.out_channels == 16
    glob = apply_(create_model("compact").eval(), _bare(ratio=0.5, global_pruning=True), _ctx())
    assert count_params(glob) < count_params(create_model("compact"))


def test_prune_errors_are_one_line():
    with pytest.raises(LeanvisionError, match="no BatchNorm layer"):
        apply_(create_model("lenet5").eval(), _bare(method="bn"), _ctx())
    with pytest.raises(LeanvisionError, match="Unknown module"):
        apply_(create_model("compact").eval(), _bare(layer_ratios={"features.nope": 0.5}), _ctx())


def test_batchnorm_statistics_are_recalibrated_after_pruning(base_run, digits):
    from leanvision.optimize import _accuracy

    stale = apply_(load_run(base_run).model, _bare(ratio=0.5), _ctx())
    recalibrated = apply_(load_run(base_run).model, _bare(ratio=0.5), _ctx(dataset=digits))
    assert not torch.equal(stale.features.conv2.bn.running_mean, recalibrated.features.conv2.bn.running_mean)
    assert _accuracy(recalibrated, digits)[0] >= _accuracy(stale, digits)[0]
