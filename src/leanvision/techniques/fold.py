"""Conv-BN folding: BatchNorm2d after a Conv2d becomes the conv's weight scale and bias (inference only).

In eval mode BN is a per-channel affine map, so `bn(conv(x))` equals one conv with weight `w * g / sqrt(var + eps)`
and a bias; folding removes a whole pass over the activations. ONNX Runtime folds BN itself, eager PyTorch does not.
Run it after the last training step and before quantization (int8 scales must see the folded weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import LeanvisionError
from .base import Context, TechniqueConfig, register_technique


@dataclass(frozen=True)
class FoldConfig(TechniqueConfig):
    """Fold every Conv2d -> BatchNorm2d pair into one Conv2d (no options). Spec: `"fold"`."""


def conv_bn_pairs(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv name, bn name) for each BatchNorm2d that directly consumes a Conv2d's output.

    Candidates are consecutive children of one parent (registration order); a traced forward on zeros confirms
    that the BN's input is exactly the conv's output tensor, so custom `forward`s (ResNet blocks) are handled too.
    A max-pool between them (conv -> pool -> BN, as airbench-style nets order it) is folded through when every BN
    scale is positive: a per-channel increasing affine map commutes with the max.
    """
    candidates, pools = [], {}
    for parent in model.modules():
        children = list(parent.named_children())
        for i, (conv_name, conv) in enumerate(children[:-1]):
            middle = children[i + 1][1]
            via_pool = isinstance(middle, nn.MaxPool2d) and i + 2 < len(children)
            bn_name, bn = children[i + 2] if via_pool else children[i + 1]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats \
                    and conv.out_channels == bn.num_features and (not via_pool or _positive_scale(bn)):
                candidates.append((parent, conv_name, bn_name))
                if via_pool:
                    pools[id(conv)] = middle
    if not candidates:
        return []
    outputs: dict[int, int] = {}
    inputs: dict[int, int] = {}
    hooks = []
    for parent, conv_name, bn_name in candidates:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        producer = pools.get(id(conv), conv)  # the BN must consume exactly this module's output
        hooks.append(producer.register_forward_hook(lambda m, i, o, c=id(conv): outputs.__setitem__(c, id(o))))
        if producer is not conv:  # and the pool must consume exactly the conv's output
            hooks.append(conv.register_forward_hook(lambda m, i, o: outputs.__setitem__(("out", id(m)), id(o))))
            hooks.append(producer.register_forward_hook(
                lambda m, i, o, c=id(conv): inputs.__setitem__(("pool", c), id(i[0]))))
        hooks.append(bn.register_forward_hook(lambda m, i, o: inputs.__setitem__(id(m), id(i[0]))))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((2, *input_shape)))
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in flags:
            module.training = training
    def direct(conv: nn.Module, bn: nn.Module) -> bool:
        if id(conv) not in outputs or outputs[id(conv)] != inputs.get(id(bn)):
            return False
        return id(conv) not in pools or outputs.get(("out", id(conv))) == inputs.get(("pool", id(conv)))

    return [(p, c, b) for p, c, b in candidates if direct(getattr(p, c), getattr(p, b))]


def _positive_scale(bn: nn.BatchNorm2d) -> bool:
    # a shape-only (meta) copy has no values: it is being rebuilt like a fresh model, whose BN scales are all 1
    return bn.weight is None or bn.weight.is_meta or bool((bn.weight > 0).all())


@torch.no_grad()
def fold_conv_bn_(model: nn.Module, input_shape: tuple[int, ...], check: bool = True) -> int:
    """Fold BatchNorm2d into the preceding Conv2d in place; returns how many were folded.

    The BN module is deleted from an `nn.Sequential` and replaced by `nn.Identity` elsewhere. With `check`, the
    outputs before and after are compared on random inputs (a BN that also saw another tensor would be caught).

    Example: `fold_conv_bn_(model.eval(), (1, 28, 28))`.
    """
    pairs = conv_bn_pairs(model, input_shape)
    if not pairs:
        return 0
    model.eval()
    if check:  # (no random input otherwise: `rundir` rebuilds folded runs on the meta device, to check shapes only)
        x = torch.randn((4, *input_shape), generator=torch.Generator().manual_seed(0))
        before = model(x)
    for parent, conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(getattr(parent, conv_name), getattr(parent, bn_name))
        setattr(parent, conv_name, fused)
        if isinstance(parent, nn.Sequential):
            del parent._modules[bn_name]
        else:
            setattr(parent, bn_name, nn.Identity())
    if check:
        after = model(x)
        scale = before.abs().max().clamp_min(1.0)
        if not torch.allclose(after, before, atol=1e-4 * float(scale), rtol=1e-4):
            raise LeanvisionError(f"Conv-BN folding changed the outputs of {type(model).__name__} (max difference "
                                  f"{(after - before).abs().max():.2e}). Skip the fold step for this model.")
    return len(pairs)


@register_technique("fold", FoldConfig)
def fold_(model: nn.Module, config: FoldConfig, ctx: Context) -> nn.Module:
    """Technique entry point: fold Conv-BN pairs; records how many in the step info."""
    ctx.info["folded_pairs"] = fold_conv_bn_(model, ctx.input_shape)
    if not ctx.info["folded_pairs"]:
        ctx.notes.append("no Conv2d -> BatchNorm2d pair to fold")
    return model
