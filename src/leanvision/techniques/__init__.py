"""Model compression techniques: one frozen config dataclass + one `apply` function each, in one registry.

| name     | config         | what it does                                                                 |
|----------|----------------|------------------------------------------------------------------------------|
| distill  | DistillConfig  | retrain the architecture with a teacher's soft targets (Hinton et al. 2015)   |
| prune    | PruneConfig    | remove channels (torch-pruning DepGraph) or zero weights; iterative fine-tune |
| fold     | FoldConfig     | fold BatchNorm2d into the preceding Conv2d                                    |
| quantize | QuantizeConfig | int8 ONNX Runtime model: static QDQ, dynamic (Dense only) or QAT             |

Example: `parse_technique("prune:ratio=0.5,finetune_epochs=1")`; `leanvision optimize RUN --prune 0.5 --quantize int8`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import distill, fold, prune, quantize  # noqa: F401  (registers the techniques)
from .base import (
    TECHNIQUES,
    Context,
    Technique,
    TechniqueConfig,
    apply_,
    finetune_,
    list_techniques,
    parse_technique,
    register_technique,
)
from .distill import DistillConfig, distillation_loss
from .fold import FoldConfig, fold_conv_bn_
from .prune import PruneConfig, apply_shape_overrides, shape_overrides
from .quantize import QuantizeConfig


def restore_structure_(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """Give a freshly built model the structure `leanvision optimize` left it in (pruned shapes, folded BN), so the
    saved weights load. Called by `rundir.load_run`. Example: `restore_structure_(create_model("compact"), meta)`.
    """
    apply_shape_overrides(model, meta.get("shape_overrides") or {})
    if meta.get("folded"):
        fold_conv_bn_(model, tuple(meta["input_shape"]), check=False)
    return model


__all__ = [
    "TECHNIQUES", "Context", "DistillConfig", "FoldConfig", "PruneConfig", "QuantizeConfig", "Technique",
    "TechniqueConfig", "apply_", "apply_shape_overrides", "distillation_loss", "finetune_", "fold_conv_bn_",
    "list_techniques", "parse_technique", "register_technique", "restore_structure_", "shape_overrides",
]
