"""The search space: a parametric conv-net family, training knobs and compression, sampled per Optuna trial.

A space is a mapping of three sections (`architecture`, `training`, `compression`); each entry is a fixed value
(`batchnorm: true`), a numeric range (`[low, high]`: integers if both bounds are, log scale for learning_rate and
weight_decay), or `{choices: [...]}` (a list of strings or booleans is read as choices too). Unknown sections or
keys, empty choices and reversed ranges are refused with one line. Conditional parameters: `width_<i>` exists only
for stages below the sampled `stages`, `kernel_size` (the convolutions after the stem) only with 2 stages or more,
`pool_first` (conv -> max pool -> BatchNorm -> ReLU, as fastnet and airbench order them) only with pooling,
`prune_ratio` only when `prune` is true, and `learning_rate_<optimizer>` when `learning_rate` is `per-optimizer`
(each optimizer its own range, `LEARNING_RATES`; a space that sets `learning_rate` but no `optimizer` means Adam,
the trainer's default). `precision: auto` trains in bf16 where the CPU has bf16
instructions (as the `fast` recipe does), else fp32; the trained model is exported in fp32 either way.
The default space covers the registry's hand-designed models (LeNet-like, compact, separable dsconv nets, and
fastnet exactly: `REGISTRY_SEEDS` writes it in the space's terms, and `seed_trials` lists the ones a space can
express so the search can start from them).

Example: `arch, train, compress = sample(load_space("default"), trial)`, then `conv_spec(arch, num_classes=10,
input_shape=(1, 28, 28))` is a model spec for `models.create_model`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from ..errors import LeanvisionError

SECTIONS: dict[str, tuple[str, ...]] = {
    "architecture": ("stages", "width", "stem_kernel_size", "kernel_size", "block", "downsample", "pool_first",
                     "padding", "batchnorm", "head"),
    "training": ("optimizer", "learning_rate", "epochs", "label_smoothing", "weight_decay", "augment", "batch_size",
                 "schedule", "precision"),
    "compression": ("prune", "prune_ratio", "int8"),
}
LOG_SCALE = {"learning_rate", "weight_decay", "width"}
CHOICES = {"block": ("plain", "separable"), "downsample": ("pool", "stride"),
           "head": ("global_pool", "global_max_pool", "flatten"), "padding": ("same", "valid"),
           "optimizer": ("sgd", "adam", "adamw"), "precision": ("auto", "fp32", "bf16"),
           "augment": ("none", "flip", "crop", "crop-flip", "translate-flip"),
           "schedule": ("constant", "warmup", "onecycle", "cosine", "triangle")}
BOOLS = {"batchnorm", "prune", "int8", "pool_first"}
INTS = {"stages", "width", "kernel_size", "stem_kernel_size", "epochs", "batch_size"}
POSITIVE = {"stages", "width", "kernel_size", "stem_kernel_size", "epochs", "batch_size", "learning_rate"}
BOUNDS = {"stages": (1, 6), "width": (1, 1024), "kernel_size": (1, 11), "stem_kernel_size": (1, 11),
          "epochs": (1, 1000), "prune_ratio": (0, 0.95), "label_smoothing": (0, 0.99), "batch_size": (1, 65536)}
#: The learning-rate range each optimizer gets when the space does not set `learning_rate` itself.
LEARNING_RATES = {"sgd": [0.02, 0.4], "adam": [3e-4, 1e-2], "adamw": [3e-4, 1e-2]}

DEFAULT_SPACE: dict[str, dict[str, Any]] = {  # covers lenet/compact/dsconv-like nets and fastnet (see REGISTRY_SEEDS)
    "architecture": {"stages": [1, 4], "width": [8, 128], "stem_kernel_size": {"choices": [3, 5]},
                     "kernel_size": {"choices": [3, 5]}, "block": ["plain", "separable"],
                     "downsample": ["pool", "stride"], "pool_first": [True, False], "padding": ["same", "valid"],
                     "batchnorm": [True, False], "head": ["global_pool", "global_max_pool", "flatten"]},
    "training": {"optimizer": ["sgd", "adam"], "learning_rate": "per-optimizer",
                 "epochs": {"choices": [1, 2, 3, 4, 6, 8]},
                 "label_smoothing": [0.0, 0.15], "weight_decay": [1e-6, 1e-3], "augment": ["none", "crop"],
                 "batch_size": 128, "schedule": "onecycle", "precision": "auto"},
    "compression": {"prune": [True, False], "prune_ratio": [0.1, 0.6], "int8": [True, False]},
}

#: Registry designs written in the default space's terms; `seed_trials` enqueues those the space can express, so a
#: search starts from what the registry already knows (fastnet with the `fast` recipe's training) and spends its
#: budget on beating it.
REGISTRY_SEEDS: dict[str, dict[str, Any]] = {}


def _fastnet_seed(width: int, epochs: int, int8: bool) -> dict[str, Any]:
    """fastnet(width, pool_first=True) trained as the `fast`/`accurate` recipes train it, in the space's terms."""
    return {"stages": 3, "width_0": width, "width_1": 2 * width, "width_2": 4 * width, "stem_kernel_size": 5,
            "kernel_size": 3, "block": "plain", "downsample": "pool", "pool_first": True, "padding": "valid",
            "batchnorm": True, "head": "global_max_pool", "optimizer": "sgd", "learning_rate_sgd": 0.1,
            "epochs": epochs, "label_smoothing": 0.1, "weight_decay": 5e-4, "augment": "none", "prune": False,
            "int8": int8}


REGISTRY_SEEDS.update({"fastnet-fast": _fastnet_seed(16, 2, False), "fastnet-fast-int8": _fastnet_seed(16, 2, True),
                       "fastnet-accurate": _fastnet_seed(32, 8, False)})


class Param:
    """One entry of the space: fixed, a range, or choices. `suggest(trial, name)` draws it."""

    def __init__(self, name: str, value: Any, where: str):
        self.name, self.fixed, self.low, self.high, self.choices = name, None, None, None, None
        self.log = name in LOG_SCALE
        self.per_optimizer = name == "learning_rate" and value == "per-optimizer"
        if self.per_optimizer:
            return
        if isinstance(value, dict):
            if set(value) - {"choices", "low", "high", "log"}:
                raise SpaceError(f"{where}: unknown key(s) {sorted(set(value) - {'choices', 'low', 'high', 'log'})}. "
                                 "Expected {choices: [...]} or {low: L, high: H, log: true|false}.")
            if "choices" in value:
                self.choices = list(value["choices"] or [])
            else:
                if "low" not in value or "high" not in value:
                    raise SpaceError(f"{where}: a range needs both low and high. Received: {value}.")
                self.low, self.high, self.log = value["low"], value["high"], bool(value.get("log", self.log))
        elif isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value) \
                and name not in BOOLS:
            self.low, self.high = value
        elif isinstance(value, list):
            self.choices = list(value)
        else:
            self.fixed = value
        self._check(where)

    def _check(self, where: str) -> None:
        if self.choices is not None:
            if not self.choices:
                raise SpaceError(f"{where}: empty choices. Give at least one value, or remove the entry.")
            for v in self.choices:
                self._check_value(v, where)
        elif self.fixed is not None:
            self._check_value(self.fixed, where)
        else:
            if not (_is_number(self.low) and _is_number(self.high)):
                raise SpaceError(f"{where}: range bounds must be numbers. Received: [{self.low!r}, {self.high!r}].")
            if self.low > self.high:
                raise SpaceError(f"{where}: empty range [{self.low}, {self.high}] (low > high). Swap the bounds.")
            if self.name in BOOLS or self.name in CHOICES:
                raise SpaceError(f"{where}: takes choices, not a numeric range. Received: [{self.low}, {self.high}].")
            if self.log and self.low <= 0:
                raise SpaceError(f"{where}: a log-scale range needs low > 0. Received: low={self.low}.")
            for v in (self.low, self.high):
                self._check_value(v, where)

    def _check_value(self, v: Any, where: str) -> None:
        if self.name in BOOLS:
            if not isinstance(v, bool):
                raise SpaceError(f"{where}: expected true or false. Received: {v!r}.")
            return
        if self.name in CHOICES:
            if v not in CHOICES[self.name]:
                raise SpaceError(f"{where}: expected one of {', '.join(CHOICES[self.name])}. Received: {v!r}.")
            return
        if not _is_number(v) or (self.name in INTS and self.fixed is not None and not isinstance(v, int)):
            raise SpaceError(f"{where}: expected a number{' (integer)' if self.name in INTS else ''}. Received: {v!r}.")
        low, high = BOUNDS.get(self.name, (0, math.inf))
        if v < low or v > high or (self.name in POSITIVE and v <= 0):
            raise SpaceError(f"{where}: {v!r} is out of bounds. Expected a value in [{low}, {high}]"
                             f"{' and > 0' if self.name in POSITIVE else ''}.")

    @property
    def values(self) -> list[Any]:
        """Every value this entry can take (ranges: their two bounds)."""
        if self.fixed is not None:
            return [self.fixed]
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this entry can take (used to enqueue registry seeds only where they fit)."""
        if self.per_optimizer:
            return False
        if self.fixed is not None:
            return value == self.fixed
        if self.choices is not None:
            return value in self.choices
        return _is_number(value) and self.low <= value <= self.high

    def suggest(self, trial: Any, name: str | None = None) -> Any:
        name = name or self.name
        if self.fixed is not None:
            return self.fixed
        if self.choices is not None:
            return self.choices[0] if len(self.choices) == 1 else trial.suggest_categorical(name, self.choices)
        if self.name in INTS and isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(name, self.low, self.high, log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)


class SpaceError(LeanvisionError):
    """A search space file or mapping is invalid (the message names the entry)."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_space(space: str | Path | dict | None = "default") -> dict[str, dict[str, Param]]:
    """The validated space: `"default"`, a YAML file path, or a mapping; missing entries take the default's."""
    if space is None or (isinstance(space, str) and space == "default"):
        raw: Any = DEFAULT_SPACE
    elif isinstance(space, dict):
        raw = space
    else:
        path = Path(space)
        if not path.is_file():
            raise SpaceError(f"Search space file {path} not found. Pass `default` or a YAML file.")
        if path.stat().st_size > 1_000_000:
            raise SpaceError(f"Search space file {path} is over 1 MB. Expected a short YAML mapping.")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SpaceError(f"Search space file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"Empty or invalid search space: expected a mapping with sections "
                         f"{', '.join(SECTIONS)}. Received: {type(raw).__name__} {str(raw)[:60]!r}.")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise SpaceError(f"Unknown search space section(s): {', '.join(unknown)}. Expected: {', '.join(SECTIONS)}.")
    parsed: dict[str, dict[str, Param]] = {}
    for section, keys in SECTIONS.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise SpaceError(f"Search space section {section} must be a mapping. Received: {given!r}.")
        bad = sorted(set(given) - set(keys))
        if bad:
            raise SpaceError(f"Unknown key(s) in search space section {section}: {', '.join(bad)}. "
                             f"Expected some of: {', '.join(keys)}.")
        merged = {**DEFAULT_SPACE[section], **given}
        if section == "training" and "learning_rate" in given and "optimizer" not in given:
            merged["optimizer"] = "adam"  # rates written without an optimizer are Adam's (the trainer's default)
        parsed[section] = {k: Param(k, merged[k], f"space {section}.{k}") for k in keys}
    comp = parsed["compression"]
    if comp["prune"].values == [True] and comp["prune_ratio"].values == [0]:
        raise SpaceError("Contradictory search space: compression.prune is always true but prune_ratio is 0. "
                         "Set prune: false, or a prune_ratio above 0.")
    return parsed


def sample(space: dict[str, dict[str, Param]], trial: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Draw (architecture, training options, compression) for one trial; conditional entries only when they apply."""
    a = space["architecture"]
    stages = a["stages"].suggest(trial)
    arch: dict[str, Any] = {"stages": stages,
                            "widths": [a["width"].suggest(trial, f"width_{i}") for i in range(stages)],
                            "stem_kernel_size": a["stem_kernel_size"].suggest(trial)}
    arch["kernel_size"] = a["kernel_size"].suggest(trial) if stages > 1 else arch["stem_kernel_size"]
    for key in ("block", "downsample", "padding", "batchnorm", "head"):
        arch[key] = a[key].suggest(trial)
    arch["pool_first"] = a["pool_first"].suggest(trial) if arch["downsample"] == "pool" else False
    t = space["training"]
    train = {k: p.suggest(trial) for k, p in t.items() if k != "learning_rate"}
    lr = t["learning_rate"]
    train["learning_rate"] = (trial.suggest_float(f"learning_rate_{train['optimizer']}",
                                                  *LEARNING_RATES[train["optimizer"]], log=True)
                              if lr.per_optimizer else lr.suggest(trial))
    c = space["compression"]
    prune = c["prune"].suggest(trial)
    compress = {"prune_ratio": c["prune_ratio"].suggest(trial) if prune else 0.0, "int8": c["int8"].suggest(trial)}
    return arch, train, compress


def seed_trials(space: dict[str, dict[str, Param]]) -> dict[str, dict[str, Any]]:
    """The `REGISTRY_SEEDS` this space can express (every parameter they set is a value of the space)."""
    flat = {**space["architecture"], **space["training"], **space["compression"]}
    fits = {}
    for name, params in REGISTRY_SEEDS.items():
        ok = True
        for key, value in params.items():
            if key.startswith("width_"):
                ok &= flat["width"].contains(value)
            elif key.startswith("learning_rate_"):
                lr = flat["learning_rate"]
                ok &= (key.removeprefix("learning_rate_") in flat["optimizer"].values) if lr.per_optimizer \
                    else lr.contains(value)
            else:
                ok &= flat[key].contains(value)
        if ok and not flat["learning_rate"].per_optimizer:  # the seed's rate goes by the space's own name
            params = {("learning_rate" if k.startswith("learning_rate_") else k): v for k, v in params.items()}
        if ok:
            fits[name] = dict(params)
    return fits


def conv_spec(arch: dict[str, Any], *, num_classes: int, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """A `models.spec` model for `arch`: per stage a conv (the stem with `stem_kernel_size`, the others with
    `kernel_size`; plain, or depthwise-separable after the stem; 'same' padding, or 'valid' while the map is larger
    than the kernel), optional BatchNorm (PyTorch's momentum 0.1, as the registry's nets: short trainings need
    running statistics that keep up), ReLU, then halving the size by 2x2 max pooling (before BatchNorm and ReLU
    when `pool_first`) or a stride-2 conv while the map is at least 4 pixels; a global average/max pool or flatten
    head and one dense layer to the logits."""
    layers: list[dict[str, Any]] = []
    size = min(input_shape[1:])
    bn = bool(arch["batchnorm"])
    widths = arch["widths"]
    for i, width in enumerate(widths):
        kernel = int(arch.get("stem_kernel_size", arch["kernel_size"]) if i == 0 else arch["kernel_size"])
        valid = arch.get("padding", "same") == "valid" and size > kernel + 1
        if valid:
            size = size - kernel + 1
        down = size >= 4 and i < len(widths) - 1 or (size >= 8 and len(widths) == 1)
        stride = 2 if down and arch["downsample"] == "stride" else 1
        pool = down and arch["downsample"] == "pool"
        kind = "separable_conv2d" if arch["block"] == "separable" and i > 0 else "conv2d"
        layers.append({kind: {"filters": int(width), "kernel_size": kernel, "strides": stride,
                              "padding": "valid" if valid else "same", "use_bias": not bn}})
        if pool and arch.get("pool_first"):
            layers.append({"max_pool2d": {"pool_size": 2}})
        if bn:
            layers.append({"batchnorm": {"momentum": 0.9, "epsilon": 1e-5}})
        layers.append("relu")
        if pool and not arch.get("pool_first"):
            layers.append({"max_pool2d": {"pool_size": 2}})
        if stride == 2:  # 'same': ceil(size / 2); 'valid' (size already less kernel - 1): ceil of that / 2
            size = (size + 1) // 2
        elif pool:
            size //= 2
    head = arch["head"]
    layers.append({"global_pool": "global_avg_pool", "global_max_pool": "global_max_pool"}.get(head, "flatten"))
    layers.append({"dense": {"units": int(num_classes)}})
    return {"name": "search-convnet", "layers": layers}
