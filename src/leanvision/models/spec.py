"""Declarative models: a Keras-Sequential-like list of layers in YAML/JSON, validated before any training.

A spec is a list of layers, or a mapping `{name: str, layers: [...]}`. Each layer is written either way:
`{conv2d: {filters: 32, kernel_size: 3, activation: relu}}` or `{type: conv2d, filters: 32, kernel_size: 3}`
(a bare string such as `flatten` also works). Arguments and defaults follow Keras (padding "valid", strides 1,
glorot-uniform kernels, zero biases, BatchNormalization momentum 0.99 / epsilon 1e-3 in Keras's convention), so a
Keras `Sequential` translates line by line. Flatten runs on NCHW instead of Keras's NHWC: parameter counts are equal,
the feature order differs. A softmax on the last layer is dropped, because models return logits and the softmax is
folded into the cross-entropy loss; a softmax anywhere else is kept.

Example: `build_from_spec(load_spec("examples/specs/seed_baseline.yaml"), num_classes=10, in_chans=1, img_size=28)`.
(Over 300 lines: the layer table, its argument checks and the shape inference must agree layer by layer, so they
stay in one file; the layers themselves are in `layers.py`.)
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections import OrderedDict
from pathlib import Path

import torch
import yaml
from torch import nn

from ..errors import ModelSpecError, first_line
from .layers import (
    ACTIVATION_ALIASES,
    ACTIVATIONS,
    AvgPool2dSame,
    Dropout,
    GlobalAvgPool,
    GlobalMaxPool,
    check_model_args,
    keras_init_,
    make_activation,
    to_2tuple,
)

REQUIRED = object()
_CONV = {"strides": 1, "padding": "valid", "activation": None, "use_bias": True}
_POOL = {"pool_size": 2, "strides": None, "padding": "valid"}
LAYER_ARGS: dict[str, dict[str, object]] = {  # type -> {argument: default}
    "conv2d": {"filters": REQUIRED, "kernel_size": REQUIRED, **_CONV, "kernel_regularizer": None},
    "depthwise_conv2d": {"kernel_size": REQUIRED, **_CONV, "depth_multiplier": 1},
    "separable_conv2d": {"filters": REQUIRED, "kernel_size": REQUIRED, **_CONV, "depth_multiplier": 1},
    "dense": {"units": REQUIRED, "activation": None, "use_bias": True, "kernel_regularizer": None},
    "dropout": {"rate": REQUIRED},
    "flatten": {},
    "max_pool2d": _POOL,
    "avg_pool2d": _POOL,
    "batchnorm": {"momentum": 0.99, "epsilon": 1e-3},
    "global_avg_pool": {},
    "global_max_pool": {},
    "activation": {"activation": REQUIRED},
    **{name: {} for name in ACTIVATIONS},
    "leaky_relu": {"negative_slope": 0.3},  # Keras LeakyReLU layer default (the activation string uses 0.2)
}
TYPE_ALIASES = {
    **ACTIVATION_ALIASES,
    "batch_normalization": "batchnorm", "batchnormalization": "batchnorm",
    "global_average_pooling2d": "global_avg_pool", "globalaveragepooling2d": "global_avg_pool",
    "global_max_pooling2d": "global_max_pool", "globalmaxpooling2d": "global_max_pool",
    "max_pooling2d": "max_pool2d", "maxpooling2d": "max_pool2d", "maxpool2d": "max_pool2d",
    "average_pooling2d": "avg_pool2d", "averagepooling2d": "avg_pool2d", "avgpool2d": "avg_pool2d",
    "depthwiseconv2d": "depthwise_conv2d", "separableconv2d": "separable_conv2d",
}
ARG_ALIASES = {"stride": "strides"}
NEEDS_4D = {"conv2d", "depthwise_conv2d", "separable_conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool",
            "global_max_pool"}
TOP_LEVEL_KEYS = ("name", "description", "layers")


def _fail(index: int, layer_type: str | None, message: str) -> ModelSpecError:
    where = f"layer {index} ({layer_type})" if layer_type else f"layer {index}"
    return ModelSpecError(f"{where}: {message}")


def _one_line(error: Exception) -> str:
    return first_line(error, limit=10_000)


# ----- argument values: each check returns the normalized value or raises ValueError(what was expected) -----

def _positive_int(value, allow_num_classes=False):
    if allow_num_classes and value == "num_classes":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError("an integer >= 1" + (' or "num_classes"' if allow_num_classes else ""))


def _size(value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return [_size(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError("an integer >= 1 or a [height, width] pair" + (" (or null)" if allow_none else ""))


def _float(value, low, high=math.inf, high_open=True):
    if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value
    if not (ok and (value < high if high_open else value <= high)):
        raise ValueError(f"a number in [{low}, {high}{')' if high_open else ']'}")
    return float(value)


def _bool(value):
    if isinstance(value, bool):
        return value
    raise ValueError("true or false")


def _activation(value, required=False):
    if value in (None, "linear") and not required:
        return None
    if isinstance(value, str) and ACTIVATION_ALIASES.get(value, value) in ACTIVATIONS:
        return ACTIVATION_ALIASES.get(value, value)
    raise ValueError(f"one of {', '.join(ACTIVATIONS)}" + ("" if required else " or null"))


def _regularizer(value):
    if value is None:
        return None
    if value in ("l1", "l2"):  # Keras string shortcut, default factor 0.01
        return {value: 0.01}
    if isinstance(value, dict) and value and set(value) <= {"l1", "l2"}:
        try:
            return {key: _float(v, 0.0) for key, v in value.items()}
        except ValueError:
            pass
    raise ValueError('null, "l1", "l2" or a mapping like {l1: 0.0, l2: 0.01} with factors >= 0')


def _padding(value):
    if value in ("valid", "same"):
        return value
    raise ValueError("'valid' or 'same'")


VALUE_CHECKS = {  # argument -> (check, example shown in the error message)
    "filters": (_positive_int, "32"),
    "units": (lambda v: _positive_int(v, allow_num_classes=True), "num_classes"),
    "depth_multiplier": (_positive_int, "1"),
    "kernel_size": (_size, "3"),
    "pool_size": (_size, "2"),
    "strides": (lambda v: _size(v, allow_none=True), "2"),
    "padding": (_padding, "same"),
    "activation": (_activation, "relu"),
    "use_bias": (_bool, "false"),
    "kernel_regularizer": (_regularizer, "{l2: 0.01}"),
    "rate": (lambda v: _float(v, 0.0, 1.0), "0.5"),
    "momentum": (lambda v: _float(v, 0.0, 1.0, high_open=False), "0.99"),
    "epsilon": (lambda v: _float(v, 1e-12), "0.001"),
    "negative_slope": (lambda v: _float(v, 0.0), "0.2"),
}


# ----- parsing and validation (no building) -----

def _read(path: str | os.PathLike) -> object:
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"Model spec file not found: '{path}'. Expected a .yaml/.yml/.json file; check the path.")
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ModelSpecError(
            f"Cannot parse model spec '{path}': {_one_line(error)}. Fix the {path.suffix.lstrip('.').upper()} syntax."
        ) from None


def _parse_layer(index: int, raw: object) -> dict:
    if isinstance(raw, str):
        raw = {raw: None}
    if not isinstance(raw, dict):
        raise _fail(index, None, f"expected a mapping like {{conv2d: {{filters: 32}}}} or {{type: conv2d, "
                                 f"filters: 32}}. Received: {raw!r}.")
    if "type" in raw:
        layer_type, args = raw["type"], {k: v for k, v in raw.items() if k != "type"}
    elif len(raw) == 1:
        ((layer_type, args),) = raw.items()
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise _fail(index, layer_type, f"expected the arguments as a mapping, e.g. {{{layer_type}: {{...}}}}. "
                                           f"Received: {args!r}.")
    else:
        raise _fail(index, None, f"cannot tell the layer type from keys {sorted(map(str, raw))}; write "
                                 f"{{conv2d: {{filters: 32, kernel_size: 3}}}} or {{type: conv2d, filters: 32, ...}}.")
    name = TYPE_ALIASES.get(str(layer_type).lower(), str(layer_type).lower())
    if name not in LAYER_ARGS:
        close = difflib.get_close_matches(name, [*LAYER_ARGS, *TYPE_ALIASES], n=1)
        hint = f" Did you mean {TYPE_ALIASES.get(close[0], close[0])!r}?" if close else ""
        raise _fail(index, layer_type, f"unknown layer type {layer_type!r}.{hint} Accepted: {', '.join(LAYER_ARGS)}.")
    return {"type": name, **_parse_args(index, name, args)}


def _parse_args(index: int, layer_type: str, args: dict) -> dict:
    defaults = LAYER_ARGS[layer_type]
    accepted = ", ".join(defaults) or "none"
    out = {}
    for key, value in args.items():
        canonical = ARG_ALIASES.get(key, key)
        if canonical not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise _fail(index, layer_type, f"unknown argument {key!r}.{hint} Accepted: {accepted}.")
        if canonical in out:
            raise _fail(index, layer_type, f"argument {canonical!r} given twice (also as {key!r}); keep one.")
        check, example = VALUE_CHECKS[canonical]
        try:
            out[canonical] = _activation(value, required=True) if layer_type == "activation" else check(value)
        except ValueError as error:
            expected = error.args[0]
            raise _fail(index, layer_type, f"invalid value for `{canonical}`: expected {expected}. Received: "
                                           f"{canonical}={value!r}. Use e.g. {canonical}: {example}.") from None
    missing = [key for key, default in defaults.items() if default is REQUIRED and key not in out]
    if missing:
        raise _fail(index, layer_type, f"missing required argument(s) {', '.join(missing)}. Accepted: {accepted}.")
    return {key: out.get(key, default) for key, default in defaults.items()}


def _is_activation(layer: dict) -> bool:
    return layer["type"] == "activation" or layer["type"] in ACTIVATIONS


def load_spec(path_or_dict: str | os.PathLike | dict | list) -> dict:
    """Parses and validates a spec (file path, mapping or list of layers) without building it.

    Returns:
        The normalized spec `{"name": ..., "description": ..., "layers": [{"type": ..., every argument}, ...]}`,
        JSON-serializable; passing it back to `load_spec` or `create_model` gives the same model.

    Example: `load_spec({"layers": [{"flatten": None}, {"dense": {"units": "num_classes"}}]})`.
    """
    raw = path_or_dict if isinstance(path_or_dict, (dict, list)) else _read(path_or_dict)
    if isinstance(raw, list):
        raw = {"layers": raw}
    if not isinstance(raw, dict):
        raise ModelSpecError(f"Invalid model spec: expected a list of layers or a mapping with a `layers` list. "
                             f"Received: {type(raw).__name__}. Write e.g. `layers: [{{flatten: null}}, ...]`.")
    unknown = sorted(set(map(str, raw)) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ModelSpecError(f"Invalid model spec: unknown top-level key(s) {', '.join(map(repr, unknown))}. "
                             f"Accepted: {', '.join(TOP_LEVEL_KEYS)}.")
    for key in ("name", "description"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ModelSpecError(f"Invalid model spec `{key}`: expected a string. Received: {key}={raw[key]!r}.")
    layers = raw.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ModelSpecError(f"Invalid model spec: expected a non-empty `layers` list. Received: layers={layers!r}. "
                             f"Add layers, e.g. [{{flatten: null}}, {{dense: {{units: num_classes}}}}].")
    layers = [_parse_layer(i, layer) for i, layer in enumerate(layers)]
    _check_order(layers)
    return {"name": raw.get("name"), "description": raw.get("description"), "layers": layers}


def _check_order(layers: list[dict]) -> None:
    """Rank checks (dense needs a flat input, convs an image) and nothing but activations after the output Dense."""
    output = max((i for i, layer in enumerate(layers) if layer["type"] == "dense"), default=None)
    rank = 4
    for i, layer in enumerate(layers):
        kind = layer["type"]
        if output is not None and i > output and not _is_activation(layer):
            if kind == "dropout":
                raise _fail(i, kind, f"dropout after the output layer (the dense at layer {output}) would drop "
                                     f"logits/probabilities at random; put the dropout before the classifier Dense, "
                                     f"e.g. [..., flatten, dropout, dense].")
            raise _fail(i, kind, f"{kind} after the output layer (the dense at layer {output}); only activations may "
                                 f"follow the classifier Dense. Move it before that dense or remove it.")
        if kind == "dense" and rank == 4:
            raise _fail(i, kind, "dense received a 4-D (N, C, H, W) input; it expects a flat (N, features) input. "
                                 "Add a flatten or global_avg_pool layer before it.")
        if kind in NEEDS_4D and rank == 2:
            raise _fail(i, kind, f"{kind} received a flat (N, features) input; it expects (N, C, H, W). Move it "
                                 f"before the flatten/global_avg_pool layer.")
        if kind in ("flatten", "global_avg_pool", "global_max_pool"):
            rank = 2


# ----- building -----

def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after): output ceil(size / stride), extra pixel at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _window(layer: dict, shape: torch.Size, index: int, kernel, strides):
    """Returns (padding for the layer, padding module or None) after checking that the window fits."""
    (k_h, k_w), (s_h, s_w) = to_2tuple(kernel), to_2tuple(strides)
    height, width = shape[2], shape[3]
    if layer["padding"] == "valid":
        if k_h > height or k_w > width:
            raise _fail(index, layer["type"], f"a {k_h}x{k_w} 'valid' window does not fit the input of shape "
                                              f"{tuple(shape)} (N, C, H, W). Use padding: same, a smaller kernel, "
                                              f"or fewer pooling/stride-2 layers before it.")
        return (0, 0), None
    (top, bottom), (left, right) = _same_padding(height, k_h, s_h), _same_padding(width, k_w, s_w)
    if top == bottom and left == right:
        return (top, left), None
    return (0, 0), (left, right, top, bottom)


def _build_layer(index: int, layer: dict, shape: torch.Size, num_classes: int) -> list[tuple[str, nn.Module]]:
    kind, channels = layer["type"], shape[1]
    modules: list[tuple[str, nn.Module]] = []
    if kind in ("conv2d", "depthwise_conv2d", "separable_conv2d"):
        padding, pad = _window(layer, shape, index, layer["kernel_size"], layer["strides"])
        if pad:
            modules.append((f"pad_{index}", nn.ZeroPad2d(pad)))
        k, s = to_2tuple(layer["kernel_size"]), to_2tuple(layer["strides"])
        if kind == "conv2d":
            module = nn.Conv2d(channels, layer["filters"], k, s, padding, bias=layer["use_bias"])
        else:
            mult = layer["depth_multiplier"]
            depthwise_bias = layer["use_bias"] and kind == "depthwise_conv2d"  # Keras: separable has 1 bias, after pw
            module = nn.Conv2d(channels, channels * mult, k, s, padding, groups=channels, bias=depthwise_bias)
            if kind == "separable_conv2d":
                pointwise = nn.Conv2d(channels * mult, layer["filters"], 1, bias=layer["use_bias"])
                module = nn.Sequential(OrderedDict(depthwise=module, pointwise=pointwise))
    elif kind == "dense":
        units = num_classes if layer["units"] == "num_classes" else layer["units"]
        module = nn.Linear(channels, units, bias=layer["use_bias"])
    elif kind in ("max_pool2d", "avg_pool2d"):
        strides = layer["strides"] or layer["pool_size"]  # Keras: strides=None means strides=pool_size
        padding, pad = _window(layer, shape, index, layer["pool_size"], strides)
        k, s = to_2tuple(layer["pool_size"]), to_2tuple(strides)
        if kind == "avg_pool2d":  # TF 'same' averages only the pixels inside the image
            module = AvgPool2dSame(k, s, pad) if pad else nn.AvgPool2d(k, s, padding, count_include_pad=False)
        else:
            if pad:
                modules.append((f"pad_{index}", nn.ConstantPad2d(pad, float("-inf"))))
            module = nn.MaxPool2d(k, s, padding)
    elif kind == "batchnorm":  # Keras momentum m weighs the old running mean; PyTorch's momentum is 1 - m
        norm = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
        module = norm(channels, eps=layer["epsilon"], momentum=1.0 - layer["momentum"])
    elif kind == "dropout":
        module = Dropout(layer["rate"])
    elif kind == "flatten":
        module = nn.Flatten()
    elif kind == "global_avg_pool":
        module = GlobalAvgPool()
    elif kind == "global_max_pool":
        module = GlobalMaxPool()
    elif kind == "activation":
        module = make_activation(layer["activation"])
    else:  # a standalone activation layer
        module = make_activation(kind, **{k: v for k, v in layer.items() if k != "type"})
    if layer.get("kernel_regularizer"):
        module.kernel_regularizer = dict(layer["kernel_regularizer"])
    modules.append((f"{kind}_{index}", module))
    if kind != "activation" and layer.get("activation"):
        modules.append((f"{layer['activation']}_{index}", make_activation(layer["activation"])))
    return modules


class SpecModel(nn.Sequential):
    """A model built from a declarative spec; `model.spec` holds the normalized spec for saving and rebuilding."""

    def __init__(self, modules: OrderedDict, spec: dict, num_classes: int):
        super().__init__(modules)
        self.spec = spec
        self.num_classes = num_classes


def build_from_spec(
    spec: dict, num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28
) -> nn.Module:
    """Builds a validated spec (from `load_spec`), checking every layer's shape with a dry run on zeros.

    Returns logits: a softmax on the last layer is dropped (it is folded into the cross-entropy loss).
    """
    height, width = check_model_args(spec.get("name") or "spec", num_classes, in_chans, img_size, 0.0)
    layers = spec["layers"]
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    x = torch.zeros(1, in_chans, height, width)
    for i, layer in enumerate(layers):
        built = _build_layer(i, layer, x.shape, num_classes)
        if i == len(layers) - 1 and "softmax" in (layer["type"], layer.get("activation")):
            built = built[:-1]  # logits out; the softmax lives in the loss
        for name, module in built:
            try:
                with torch.no_grad():
                    x = module.eval()(x)
            except RuntimeError as error:
                raise _fail(i, layer["type"], f"cannot be applied to an input of shape {tuple(x.shape)}: "
                                              f"{_one_line(error)[:200]}. Check the layers before it.") from None
            modules[name] = module
    if x.dim() != 2 or x.shape[1] != num_classes:
        last = len(layers) - 1
        dense = max((i for i, layer in enumerate(layers) if layer["type"] == "dense"), default=None)
        if x.dim() == 2 and dense is not None:
            raise _fail(dense, "dense", f"the output layer has units={x.shape[1]} but num_classes={num_classes}. "
                                        f"Set `units: num_classes` so it follows the dataset.")
        raise _fail(last, layers[last]["type"], f"the model outputs shape {tuple(x.shape)} but a classifier must "
                                                f"output (N, num_classes={num_classes}). End the spec with flatten "
                                                f"(or global_avg_pool) and dense with units: num_classes.")
    return keras_init_(SpecModel(modules, spec, num_classes).train())
