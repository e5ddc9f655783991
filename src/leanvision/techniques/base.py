"""The technique contract (torchao's config + transform): a frozen config dataclass, one `apply` function, a registry.

A technique is registered once with `@register_technique("prune", PruneConfig)` on its function
`prune_(model, config, ctx) -> model`. A spec string such as `"prune:ratio=0.5,finetune_epochs=2"` becomes a typed,
validated config with `parse_technique`, so users type strings and the code receives dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..errors import LeanvisionError
from ..io import load_weights
from ..registry import Registry, did_you_mean
from ..train import fit


@dataclass(frozen=True)
class TechniqueConfig:
    """Base of every technique config. `stage`: "train" (shapes the loss) or "post" (transforms a trained model)."""

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "post"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def unused(self) -> frozenset[str]:
        """Fields this config's other choices make irrelevant (e.g. QAT-only fields of a static int8 config)."""
        return frozenset()

    def spec(self) -> str:
        """The spec string that parses back to this config, e.g. `prune:ratio=0.5,method=l1`; fields that do not
        apply and keep their defaults are left out."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        skip = self.unused()
        args = ",".join(f"{k}={_format(v)}" for k, v in dataclasses.asdict(self).items()
                        if v is not None and not (k in skip and v == defaults.get(k)))
        return f"{self.name}:{args}" if args else self.name


@dataclass
class Context:
    """What a technique may use besides the model: data, the source run's training config, a work folder.

    A technique reports facts about its step in `info` (merged into the step record) and honest remarks in `notes`
    (e.g. "masks only, no speed change expected"); the orchestrator resets both before each step.
    """

    dataset: Any  # leanvision Dataset (train/val/test splits, mean/std)
    train: Any  # TrainConfig of the source run: fine-tuning starts from it
    work_dir: Path  # the new run directory; steps write their files under it
    meta: dict[str, Any]  # model.json of the source run (num_classes, input_shape, ...)
    progress: bool = False
    # Given by the orchestrator (optimize), which sits above both techniques and run directories, so no technique
    # imports the run-directory layer: load another run (distill's teacher), and build the source run's
    # architecture fresh from its model.json (distill's student).
    load_run: Callable[[str | Path], Any] | None = None
    rebuild: Callable[[], nn.Module] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])  # type: ignore[return-value]


@dataclass(frozen=True)
class Technique:
    name: str
    config_cls: type[TechniqueConfig]
    apply: Callable[[nn.Module, TechniqueConfig, Context], nn.Module]


TECHNIQUES: Registry[Technique] = Registry("technique")


def register_technique(name: str, config_cls: type[TechniqueConfig]):
    """Register `fn(model, config, ctx) -> model` as technique `name` configured by `config_cls`."""

    def decorator(fn):
        config_cls.name = name
        TECHNIQUES.register(name)(Technique(name, config_cls, fn))
        return fn

    return decorator


def list_techniques(pattern: str = "*") -> list[str]:
    return TECHNIQUES.names(pattern)


def apply_(model: nn.Module, config: TechniqueConfig, ctx: Context) -> nn.Module:
    """Apply one technique; returns the (possibly new) model. Example: `apply_(model, PruneConfig(ratio=0.5), ctx)`."""
    return TECHNIQUES.get(config.name).apply(model, config, ctx)


def parse_technique(spec: str | TechniqueConfig | dict) -> TechniqueConfig:
    """`"prune:ratio=0.5,method=l2"` (or a dict with `name`) -> a validated config; values cast to the field types.

    Example: `parse_technique("quantize:mode=int8")` == `QuantizeConfig(mode="int8")`.
    """
    if isinstance(spec, TechniqueConfig):
        return spec
    if not isinstance(spec, (str, dict)):
        raise LeanvisionError(f"Invalid technique {spec!r} ({type(spec).__name__}). Expected a spec string such as "
                              "'prune:ratio=0.5' or a technique config such as QuantizeConfig(mode='int8').")
    if isinstance(spec, dict):
        values = {k: v for k, v in spec.items() if k != "name"}
        name = str(spec.get("name", ""))
    else:
        name, _, rest = str(spec).strip().partition(":")
        values = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise LeanvisionError(f"Invalid technique spec {spec!r}: {item!r} is not key=value. "
                                      "Write e.g. 'prune:ratio=0.5,finetune_epochs=2'.")
            if key.strip() in values:
                raise LeanvisionError(f"Invalid technique spec {spec!r}: {key.strip()!r} is given twice. Give it "
                                      "once.")
            values[key.strip()] = value.strip()
    cls = TECHNIQUES.get(name.strip()).config_cls
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        expected = f"Expected some of: {', '.join(sorted(fields))}." if fields else f"{name!r} takes no options."
        raise LeanvisionError(f"Unknown option(s) {', '.join(unknown)} for technique {name!r}. {expected}")
    typed = {key: _cast(name, key, value, hints[key]) for key, value in values.items()}
    return cls(**typed)


def _cast(technique: str, key: str, value: Any, hint: Any) -> Any:
    if not isinstance(value, str):
        return value
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if type(None) in options and value.lower() in ("none", "null", ""):
        return None
    kind = next(t for t in options if t is not type(None))
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind in (int, float, str):
            return kind(value)
        if typing.get_origin(kind) is dict:  # "features.conv1:0.2;features.conv2:0.4"
            pairs = (item.rpartition(":") for item in value.split(";") if item.strip())
            return {name.strip(): float(ratio) for name, _, ratio in pairs}
    except ValueError:
        pass
    expected = "true or false (also yes/no, 1/0)" if kind is bool else getattr(kind, "__name__", str(kind))
    raise LeanvisionError(f"Invalid value for `{key}` of technique {technique!r}. Expected {expected}. "
                          f"Received: {key}={value!r}")


def _format(value: Any) -> str:
    if isinstance(value, dict):
        return ";".join(f"{k}:{v}" for k, v in value.items())
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_range(technique: str, key: str, value: float, low: float, high: float, *, high_open: bool = True) -> None:
    """One-line error unless low <= value < high (or <= high)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (low <= value < high if high_open else low <= value <= high):
        upper = f"< {high}" if high_open else f"<= {high}"
        raise LeanvisionError(f"Invalid `{key}` for {technique}: expected a number >= {low} and {upper}. "
                              f"Received: {key}={value!r}")


def check_choice(technique: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LeanvisionError(f"Invalid `{key}` for {technique}: expected one of {', '.join(choices)}. "
                              f"Received: {key}={value!r}.{did_you_mean(value, choices)}")


def finetune_(model: nn.Module, ctx: Context, epochs: int, tag: str, learning_rate: float | None = None,
              loss_fn: Callable | None = None) -> nn.Module:
    """Fine-tune `model` in place for `epochs` with the source run's settings, cosine-decayed from `learning_rate`
    (default: 0.1x the run's peak rate); the best validation weights are kept. Files go to `work_dir/steps/<tag>`.

    Example: `finetune_(pruned, ctx, epochs=2, tag="prune")`.
    """
    if epochs < 1:
        return model
    cfg = dataclasses.replace(ctx.train, epochs=epochs, schedule="cosine", warmup_epochs=0.0, early_stopping=0,
                              learning_rate=learning_rate or ctx.train.learning_rate * 0.1)
    out = ctx.work_dir / "steps" / tag
    history = fit(model, ctx.dataset, cfg, out, progress=ctx.progress, loss_fn=loss_fn)
    model.load_state_dict(load_weights(out / "best.safetensors"))
    (out / "checkpoint.safetensors").unlink(missing_ok=True)  # resumable state is of no use once the step is done
    ctx.info.setdefault("finetune", []).append({"epochs": epochs, "learning_rate": cfg.learning_rate,
                                                "best_val_accuracy": max((h["val_accuracy"] or 0.0) for h in history)})
    return model.cpu().eval()
