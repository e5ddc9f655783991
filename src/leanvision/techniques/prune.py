"""Pruning: structured (whole channels removed, a genuinely smaller dense model) and unstructured (zeroed weights).

Structured pruning uses torch-pruning's dependency graph (Fang et al., "DepGraph", CVPR 2023): removing an output
channel of a conv also removes the matching BatchNorm channel and the next layer's input channel, so the pruned
model is an ordinary smaller network. Channels are ranked by L1/L2 weight magnitude (Li et al. 2017) or BatchNorm
scale |gamma| (Liu et al. 2017, "network slimming"). The classifier's output layer is never pruned.

The pruned shapes are saved as `shape_overrides` in model.json (module name -> new constructor dims), so a run is
rebuilt from its registered model plus those overrides, with no pickle: see `apply_shape_overrides`.

Unstructured pruning (`structured=false`) zeroes the smallest weights (torch.nn.utils.prune, made permanent). The
tensors stay dense, so dense runtimes (PyTorch, ONNX Runtime) run it at the same speed: it only helps compression
of the file with a generic compressor or a sparse runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.normalize import normalizer
from ..errors import LeanvisionError
from .base import Context, TechniqueConfig, check_choice, check_range, finetune_, register_technique

METHODS = ("l1", "l2", "bn")
_CONV_KEYS = ("in_channels", "out_channels", "groups")


@dataclass(frozen=True)
class PruneConfig(TechniqueConfig):
    """Prune channels (or single weights) by magnitude, then optionally fine-tune.

    Spec: `"prune:ratio=0.5,method=l1,steps=2,finetune_epochs=1"`.
    """

    ratio: float = 0.5  # fraction of channels removed from each prunable layer (of weights if structured=false)
    method: str = "l1"  # l1 | l2 (weight-norm ranking) | bn (BatchNorm |gamma| ranking, structured only)
    structured: bool = True  # remove whole channels (smaller, faster model) instead of zeroing single weights
    global_pruning: bool = False  # rank channels across layers (uneven per-layer ratios) instead of per layer
    layer_ratios: dict[str, float] | None = None  # per-module ratios overriding `ratio`, e.g. {"features.conv4": 0.3}
    steps: int = 1  # prune in this many equal rounds, fine-tuning after each (iterative pruning)
    finetune_epochs: int = 1  # epochs of fine-tuning after each round (pruning alone loses accuracy); 0 = none
    learning_rate: float | None = None  # fine-tuning peak learning rate (cosine decay); None = the source run's
    round_to: int | None = None  # keep channel counts a multiple of this (8/16 suits CPU SIMD blocks)

    def __post_init__(self) -> None:
        check_range("prune", "ratio", self.ratio, 0.0, 1.0)
        check_choice("prune", "method", self.method, METHODS)
        check_range("prune", "steps", self.steps, 1, 1000)
        check_range("prune", "finetune_epochs", self.finetune_epochs, 0, 10_000)
        for name, ratio in (self.layer_ratios or {}).items():
            check_range("prune", f"layer_ratios[{name}]", ratio, 0.0, 1.0)
        if self.method == "bn" and not self.structured:
            raise LeanvisionError("Invalid `method` for unstructured prune: 'bn' ranks channels, not weights. "
                                  "Received: method='bn', structured=false. Use method=l1, or structured=true.")
        if self.round_to is not None and self.round_to < 1:
            raise LeanvisionError(f"Invalid `round_to` for prune: expected an integer >= 1. Received: {self.round_to}")
        if self.learning_rate is not None:
            check_range("prune", "learning_rate", self.learning_rate, 1e-12, float("inf"))


def output_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The classifier layer(s): every Linear with `num_classes` outputs, else the last Linear/Conv2d."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not found:
        found = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1:]
    return found


def _structured_(model: nn.Module, config: PruneConfig, ctx: Context) -> nn.Module:
    try:
        import torch_pruning as tp
    except ImportError:
        raise LeanvisionError("Structured pruning needs torch-pruning, a dependency of leanvision that is missing "
                              "here. Reinstall it: pip install 'torch-pruning>=1.5' (or prune with `unstructured`, "
                              "which needs nothing extra).") from None

    if config.method == "bn" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise LeanvisionError(f"prune method 'bn' ranks channels by BatchNorm scale, but {type(model).__name__} has "
                              "no BatchNorm layer. Use prune_method='l1' or 'l2'.")
    importance = {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
                  "l2": lambda: tp.importance.MagnitudeImportance(p=2),
                  "bn": lambda: tp.importance.BNScaleImportance()}[config.method]()
    named = dict(model.named_modules())
    missing = sorted(set(config.layer_ratios or {}) - set(named))
    if missing:
        raise LeanvisionError(f"Unknown module(s) {', '.join(missing)} in prune layer_ratios. Expected names such as "
                              f"{', '.join(n for n, m in named.items() if isinstance(m, nn.Conv2d))}.")
    model.cpu().eval()  # the dependency graph is traced with one example; BatchNorm must not update
    pruner = tp.pruner.MetaPruner(
        model, torch.zeros((1, *ctx.input_shape)), importance=importance, global_pruning=config.global_pruning,
        pruning_ratio=config.ratio, max_pruning_ratio=max(0.9, config.ratio), iterative_steps=config.steps,
        pruning_ratio_dict={named[n]: r for n, r in (config.layer_ratios or {}).items()} or None,
        ignored_layers=output_layers(model, ctx.meta["num_classes"]), round_to=config.round_to,
    )
    for step in range(config.steps):
        pruner.step()
        recalibrate_batchnorm_(model, ctx)
        if config.finetune_epochs:
            # the run's own peak rate: removing half the channels is heavy damage (on MNIST, one epoch at 0.1x that
            # rate recovered 94.9% test accuracy, at 1x 98.3%)
            finetune_(model, ctx, config.finetune_epochs, f"prune-{step + 1}",
                      config.learning_rate or ctx.train.learning_rate)
            model.eval()
    widths = sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)})
    odd = [w for w in widths if w % 8]
    if odd and config.round_to is None:  # an explicit --round-to is the user's choice: no advice against it
        ctx.notes.append(f"channel counts {', '.join(map(str, odd))} are not multiples of 8; CPU kernels work in "
                         "blocks of 8-16 channels, so the speed-up can be smaller than the MAC saving (try "
                         "round_to=8)")
    return model


@torch.no_grad()
def recalibrate_batchnorm_(model: nn.Module, ctx: Context, num_batches: int = 50, batch_size: int = 128) -> None:
    """Re-estimate BatchNorm running statistics on training batches after pruning (adaptive BN, Li et al. 2020,
    "EagleEye"): removing input channels shifts every following layer's activations, and stale statistics alone
    can take a pruned net to chance accuracy before any fine-tuning."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or ctx.dataset is None:
        return

    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    normalize = normalizer(ctx.dataset.mean, ctx.dataset.std, torch.device("cpu"))
    model.train()
    try:
        batches = ctx.dataset.train.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
        for index, (xb, _) in enumerate(batches):
            if index == num_batches:
                break
            model(normalize(xb) if xb.dtype == torch.uint8 else xb.float())
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def _unstructured_(model: nn.Module, config: PruneConfig, ctx: Context) -> nn.Module:
    from torch.nn.utils import prune as torch_prune

    keep = set(map(id, output_layers(model, ctx.meta["num_classes"])))
    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in keep]
    for step in range(config.steps):
        amount = 1 - (1 - config.ratio) ** ((step + 1) / config.steps)  # cumulative fraction after this round
        if config.global_pruning:
            torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)
        else:
            named = {id(m): n for n, m in model.named_modules()}
            for module, name in targets:
                ratio = (config.layer_ratios or {}).get(named[id(module)], config.ratio)
                layer_amount = 1 - (1 - ratio) ** ((step + 1) / config.steps)
                torch_prune.l1_unstructured(module, name, amount=layer_amount)
                torch_prune.remove(module, name)  # re-prune from the already-zeroed weights next round
        if config.global_pruning:
            for module, name in targets:
                torch_prune.remove(module, name)
        if config.finetune_epochs:
            masks = [(m.weight != 0).float() for m, _ in targets]
            for (module, name), mask in zip(targets, masks):  # keep zeros zero while fine-tuning
                torch_prune.custom_from_mask(module, name, mask)
            finetune_(model, ctx, config.finetune_epochs, f"sparsify-{step + 1}",
                      config.learning_rate or ctx.train.learning_rate)
            for module, name in targets:
                torch_prune.remove(module, name)
            model.eval()
    total = sum(m.weight.numel() for m, _ in targets)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    ctx.info["sparsity"] = zeros / max(1, total)
    ctx.notes.append(f"unstructured pruning: {zeros / max(1, total):.1%} of prunable weights are zero, but the tensors "
                     "stay dense (same shapes, same MACs): dense runtimes run it at the same speed, no speed change "
                     "expected")
    return model


@register_technique("prune", PruneConfig)
def prune_(model: nn.Module, config: PruneConfig, ctx: Context) -> nn.Module:
    """Technique entry point: structured or unstructured magnitude pruning, with optional iterative fine-tuning.

    Example: `prune_(model, PruneConfig(ratio=0.5, finetune_epochs=1), ctx)`.
    """
    if config.ratio == 0.0 and not config.layer_ratios:
        return model
    model = (_structured_ if config.structured else _unstructured_)(model, config, ctx)
    out = model(torch.zeros((1, *ctx.input_shape)))
    if out.shape[-1] != ctx.meta["num_classes"]:  # the output layer is never pruned; guard against surprises
        raise LeanvisionError(f"Pruning changed the output width to {out.shape[-1]}; expected num_classes="
                              f"{ctx.meta['num_classes']}. Please report this model.")
    return model


# ----- saving and rebuilding pruned shapes (no pickle) -----

def _dims(module: nn.Module) -> dict[str, int] | None:
    if isinstance(module, nn.Conv2d):
        return {k: getattr(module, k) for k in _CONV_KEYS}
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"num_features": module.num_features}
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features}
    return None


def shape_overrides(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, int]]:
    """Module name -> the constructor dims of `model` that differ from `reference` (the unpruned architecture)."""
    ref = dict(reference.named_modules())
    out: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        new, old = _dims(module), _dims(ref[name]) if name in ref else None
        if new is not None and old is not None and type(module) is type(ref[name]) and new != old:
            out[name] = {k: v for k, v in new.items() if old.get(k) != v}
    return out


def apply_shape_overrides(model: nn.Module, overrides: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace each listed Conv2d/BatchNorm/Linear with a same-config module of the new dims (weights are loaded
    afterwards). Example: `apply_shape_overrides(model, {"features.0": {"out_channels": 12}})`.
    """
    for name, dims in overrides.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise LeanvisionError(f"model.json lists shape override for {name!r}, which the model does not have. "
                                  "The run directory does not match its model; re-create it.") from None
        if isinstance(old, nn.Conv2d):
            d = {k: dims.get(k, getattr(old, k)) for k in _CONV_KEYS}
            new = nn.Conv2d(d["in_channels"], d["out_channels"], old.kernel_size, old.stride, old.padding,
                            old.dilation, d["groups"], old.bias is not None, old.padding_mode)
        elif isinstance(old, (nn.BatchNorm1d, nn.BatchNorm2d)):
            new = type(old)(int(dims["num_features"]), old.eps, old.momentum, old.affine, old.track_running_stats)
        elif isinstance(old, nn.Linear):
            new = nn.Linear(int(dims.get("in_features", old.in_features)),
                            int(dims.get("out_features", old.out_features)), old.bias is not None)
        else:
            raise LeanvisionError(f"Shape override for {name!r} targets a {type(old).__name__}; only Conv2d, "
                                  "BatchNorm and Linear can be resized.")
        if hasattr(old, "kernel_regularizer"):
            new.kernel_regularizer = old.kernel_regularizer
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model
