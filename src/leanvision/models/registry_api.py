"""The model registry and its verbs: `create_model`, `list_models`, `regularization_loss` (timm's `_factory`)."""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ModelSpecError
from ..registry import Registry
from .spec import build_from_spec, load_spec

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a glob, or containing `pattern` when it has no wildcard.

    Example: `list_models("seed-*")`, `list_models("resnet") == ["resnet8"]`.
    """
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return MODELS.names(pattern)


def create_model(
    name_or_spec: str | os.PathLike | dict | list,
    *,
    num_classes: int = 10,
    in_chans: int = 1,
    img_size: int | tuple[int, int] = 28,
    **kwargs,
) -> nn.Module:
    """Builds a model from a registered name, a spec file (.yaml/.yml/.json) or a spec dict/list.

    Keyword arguments whose value is None are dropped (timm), so unset CLI flags never override model defaults.
    Models return logits; the softmax belongs to the loss.

    Example: `create_model("resnet8", num_classes=10, in_chans=3, img_size=32, width=16)`.
    """
    kwargs = dict(kwargs, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if isinstance(name_or_spec, (dict, list, os.PathLike)) or (
        isinstance(name_or_spec, str) and name_or_spec.lower().endswith(SPEC_SUFFIXES)
    ):
        return _create_from_spec(name_or_spec, kwargs)
    if not isinstance(name_or_spec, str):
        raise ModelSpecError(
            f"Invalid model: expected a registered name, a spec file path or a spec dict. "
            f"Received: {type(name_or_spec).__name__}. Pass e.g. 'seed-baseline' or 'specs/my_net.yaml'."
        )
    builder = MODELS.get(name_or_spec)
    accepted = list(inspect.signature(builder).parameters)
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ModelSpecError(
                f"Unknown argument {key!r} for model {name_or_spec!r}.{hint} Accepted: {', '.join(accepted)}."
            )
    return builder(**kwargs)


def _create_from_spec(spec: str | os.PathLike | dict | list, kwargs: dict) -> nn.Module:
    extra = sorted(set(kwargs) - {"num_classes", "in_chans", "img_size"})
    if extra:
        raise ModelSpecError(
            f"Unknown argument(s) {', '.join(map(repr, extra))} for a spec model: a spec accepts only num_classes, "
            f"in_chans and img_size. Put dropout, widths and the like in the spec's layers instead."
        )
    return build_from_spec(load_spec(spec), **kwargs)


def regularization_loss(model: nn.Module) -> torch.Tensor:
    """Keras-style weight penalty: sum of l1*sum(|W|) + l2*sum(W**2) over modules with a `kernel_regularizer`.

    A module opts in with an attribute like `module.kernel_regularizer = {"l2": 0.01}`; only `module.weight` is
    penalized, never the bias. Add the result to the training loss. Example: `loss = ce + regularization_loss(model)`.

    Returns:
        A 0-dim tensor (zero when no module has a regularizer).
    """
    total = None
    for module in model.modules():
        reg = getattr(module, "kernel_regularizer", None)
        if not reg:
            continue
        weight = module.weight
        l1, l2 = float(reg.get("l1", 0.0)), float(reg.get("l2", 0.0))
        terms = ([l1 * weight.abs().sum()] if l1 else []) + ([l2 * weight.square().sum()] if l2 else [])
        for term in terms:
            total = term if total is None else total + term
    if total is None:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None,
                           dtype=param.dtype if param is not None and param.is_floating_point() else None)
    return total
