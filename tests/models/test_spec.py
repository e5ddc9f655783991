"""Declarative model specs: parsing, validation messages, building, and the shipped examples."""

import json
from pathlib import Path

import pytest
import torch

from leanvision.errors import ModelSpecError
from leanvision.models import create_model, load_spec, regularization_loss

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "specs"

BASELINE = [
    {"conv2d": {"filters": 32, "kernel_size": 3, "activation": "relu"}},
    {"conv2d": {"filters": 64, "kernel_size": 3, "activation": "relu"}},
    "flatten",
    {"dense": {"units": "num_classes", "activation": "softmax"}},
]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_types(model: torch.nn.Module) -> list[type]:
    return [type(m) for m in model.modules()]


# ----- happy paths -----

def test_example_seed_baseline_matches_registered_model():
    model = create_model(str(EXAMPLES / "seed_baseline.yaml"))
    assert count_params(model) == count_params(create_model("seed-baseline")) == 387_466
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_example_seed_dropout_l2():
    model = create_model(EXAMPLES / "seed_dropout_l2.yaml")
    assert count_params(model) == 387_466
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())  # leanvision Dropout: an nn.Dropout
    torch.testing.assert_close(regularization_loss(model), 0.01 * model.dense_4.weight.pow(2).sum())


def test_both_layer_syntaxes_build_the_same_model():
    type_form = [{"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"}, {"type": "flatten"},
                 {"type": "dense", "units": "num_classes"}]
    key_form = [{"conv2d": {"filters": 8, "kernel_size": 3, "activation": "relu"}}, {"flatten": None},
                {"dense": {"units": "num_classes"}}]
    assert load_spec(type_form) == load_spec(key_form)
    expected = 8 * 9 + 8 + 26 * 26 * 8 * 10 + 10
    assert count_params(create_model(type_form)) == count_params(create_model(key_form)) == expected


def test_final_softmax_dropped_but_inner_softmax_kept():
    assert torch.nn.Softmax not in layer_types(create_model(BASELINE))
    assert torch.nn.Softmax not in layer_types(create_model(["flatten", {"dense": {"units": 10}}, "softmax"]))
    inner = create_model(["flatten", {"dense": {"units": 20, "activation": "softmax"}}, {"dense": {"units": 10}}])
    assert torch.nn.Softmax in layer_types(inner)


def test_spec_round_trips_through_json():
    model = create_model({"name": "tiny", "layers": BASELINE}, num_classes=5, in_chans=3, img_size=16)
    rebuilt = create_model(json.loads(json.dumps(model.spec)), num_classes=5, in_chans=3, img_size=16)
    assert model.spec["name"] == "tiny" and model.num_classes == 5
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_json_spec_file(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"layers": BASELINE}))
    assert count_params(create_model(str(path))) == 387_466


def test_all_layer_types_build_and_export():
    spec = [
        {"conv2d": {"filters": 8, "kernel_size": [3, 3], "stride": 2, "padding": "same", "use_bias": False}},
        {"batch_normalization": {"momentum": 0.9}},
        "relu6",
        {"depthwise_conv2d": {"kernel_size": 3, "padding": "same", "depth_multiplier": 2, "activation": "swish"}},
        {"separable_conv2d": {"filters": 16, "kernel_size": 3, "padding": "same", "activation": "gelu"}},
        {"max_pool2d": {"pool_size": 3, "strides": 2, "padding": "same"}},
        {"avg_pool2d": {"pool_size": 3, "strides": 2, "padding": "same"}},
        {"activation": {"activation": "hardswish"}},
        {"leaky_relu": {"negative_slope": 0.1}},
        "MaxPooling2D",
        "global_average_pooling2d",
        {"batchnorm": None},
        {"dense": {"units": 12, "activation": "elu"}},
        {"dropout": {"rate": 0.2}},
        "tanh",
        {"dense": {"units": "num_classes", "activation": "softmax"}},
    ]
    model = create_model(spec, in_chans=3, img_size=28).eval()
    x = torch.randn(2, 3, 28, 28)
    assert model(x).shape == (2, 10)
    assert torch.nn.BatchNorm1d in layer_types(model)  # batchnorm on a flat input
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert bn.momentum == pytest.approx(0.1)  # Keras momentum 0.9 == PyTorch momentum 0.1
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def test_separable_conv_param_count_matches_keras():
    spec = [{"separable_conv2d": {"filters": 16, "kernel_size": 3}}, "global_avg_pool", {"dense": {"units": 10}}]
    # Keras: depthwise 3*3*8 (no bias) + pointwise 8*16 + 16 bias; then dense 16*10 + 10.
    assert count_params(create_model(spec, in_chans=8, img_size=8)) == 9 * 8 + 8 * 16 + 16 + 170


def test_avg_pool_same_excludes_padding_like_tensorflow():
    model = create_model([{"avg_pool2d": {"pool_size": 3, "strides": 2, "padding": "same"}}, "flatten",
                          {"dense": {"units": 4}}], num_classes=4, img_size=4)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = model[0](x)  # TF pads 0 before and 1 after: the last window covers rows/cols 2..3 only
    assert pooled.shape == (1, 1, 2, 2)
    assert pooled[0, 0, 1, 1].item() == pytest.approx(x[0, 0, 2:, 2:].mean().item())
    assert pooled[0, 0, 0, 0].item() == pytest.approx(x[0, 0, :3, :3].mean().item())


def test_kernel_regularizer_l1_in_spec():
    model = create_model([{"conv2d": {"filters": 4, "kernel_size": 3, "kernel_regularizer": {"l1": "1e-3"}}},
                          "flatten", {"dense": {"units": 10, "kernel_regularizer": "l2"}}])
    conv, dense = model.conv2d_0, model.dense_2
    expected = 0.001 * conv.weight.abs().sum() + 0.01 * dense.weight.pow(2).sum()
    torch.testing.assert_close(regularization_loss(model), expected)


# ----- validation errors: each names the layer, what was received and what to do -----

def spec_error(layers, match, **kwargs):
    with pytest.raises(ModelSpecError, match=match) as info:
        create_model(layers, **kwargs)
    assert "\n" not in str(info.value)


def test_error_unknown_layer_type_suggests():
    spec_error([{"conv2": {"filters": 32}}, *BASELINE], r"^layer 0 \(conv2\): unknown layer type 'conv2'. "
                                                        r"Did you mean 'conv2d'\?")


def test_error_unknown_argument_lists_accepted():
    spec_error([{"conv2d": {"filter": 32, "kernel_size": 3}}, *BASELINE[2:]],
               r"^layer 0 \(conv2d\): unknown argument 'filter'. Did you mean 'filters'\? Accepted: filters, ")


def test_error_missing_argument():
    spec_error([{"conv2d": {"kernel_size": 3}}, *BASELINE[2:]],
               r"^layer 0 \(conv2d\): missing required argument\(s\) filters")


def test_error_dropout_rate_out_of_range():
    spec_error([*BASELINE[:3], {"dropout": {"rate": 1.5}}, BASELINE[3]],
               r"^layer 3 \(dropout\): invalid value for `rate`: expected a number in \[0.0, 1.0\). Received: rate=1.5")


def test_error_negative_filters():
    spec_error([{"conv2d": {"filters": -8, "kernel_size": 3}}, *BASELINE[2:]],
               r"^layer 0 \(conv2d\): invalid value for `filters`: expected an integer >= 1. Received: filters=-8")


@pytest.mark.parametrize("arg,value", [("padding", "full"), ("activation", "relu7"), ("use_bias", "yes"),
                                       ("kernel_size", [3, 3, 3]), ("kernel_regularizer", {"l3": 0.1})])
def test_error_invalid_conv_values(arg, value):
    spec_error([{"conv2d": {"filters": 8, "kernel_size": 3, arg: value}}, *BASELINE[2:]],
               rf"^layer 0 \(conv2d\): invalid value for `{arg}`")


def test_error_dropout_after_output_layer():
    spec_error([*BASELINE, {"dropout": {"rate": 0.5}}],
               r"^layer 4 \(dropout\): dropout after the output layer \(the dense at layer 3\).*"
               r"put the dropout before the classifier Dense")


def test_error_other_layer_after_output_layer():
    spec_error([*BASELINE, "batchnorm"], r"^layer 4 \(batchnorm\): batchnorm after the output layer")


def test_error_dense_on_4d_input():
    spec_error([BASELINE[0], {"dense": {"units": 10}}],
               r"^layer 1 \(dense\): dense received a 4-D .*Add a flatten or global_avg_pool layer before it")


def test_error_conv_after_flatten():
    spec_error(["flatten", BASELINE[0], {"dense": {"units": 10}}], r"^layer 1 \(conv2d\): conv2d received a flat")


def test_error_shape_does_not_fit():
    spec_error([{"max_pool2d": {"pool_size": 14}}, {"conv2d": {"filters": 8, "kernel_size": 3}}, *BASELINE[2:]],
               r"^layer 1 \(conv2d\): a 3x3 'valid' window does not fit the input of shape \(1, 1, 2, 2\)")


def test_error_empty_layer_list():
    spec_error([], r"expected a non-empty `layers` list")
    spec_error({"name": "x", "layers": []}, r"expected a non-empty `layers` list")


def test_error_output_units_differ_from_num_classes():
    spec_error([*BASELINE[:3], {"dense": {"units": 5}}],
               r"^layer 3 \(dense\): the output layer has units=5 but num_classes=10")


def test_error_output_not_flat():
    spec_error([BASELINE[0]], r"^layer 0 \(conv2d\): the model outputs shape \(1, 32, 26, 26\)")


def test_error_layer_not_a_mapping():
    spec_error([42], r"^layer 0: expected a mapping")
    spec_error([{"conv2d": 32}], r"^layer 0 \(conv2d\): expected the arguments as a mapping")


def test_error_unknown_top_level_key():
    spec_error({"layer": BASELINE}, r"unknown top-level key\(s\) 'layer'")


def test_error_extra_kwargs_for_spec():
    spec_error(BASELINE, r"Unknown argument\(s\) 'drop_rate' for a spec model", drop_rate=0.5)


def test_error_missing_file(tmp_path):
    with pytest.raises(ModelSpecError, match=r"Model spec file not found: '.*missing.yaml'"):
        create_model(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("suffix,text", [(".yaml", "layers: [\n  - conv2d: {filters: 32"), (".json", "{'layers': }")])
def test_error_malformed_file(tmp_path, suffix, text):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(ModelSpecError, match=r"Cannot parse model spec '.*bad\.(yaml|json)'") as info:
        load_spec(path)
    assert "\n" not in str(info.value)
