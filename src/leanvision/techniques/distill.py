"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

The student learns from the teacher's softened class probabilities as well as from the labels:

    loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, y)

with `p^T = softmax(logits / T)`. The T^2 factor keeps the soft-target gradients on the same scale as the hard ones
when T changes (section 2 of the paper). The KL term is `F.kl_div(log p_student, log p_teacher)`, i.e. the
divergence of the student's distribution from the teacher's, as in the paper and in timm. The teacher runs in eval
mode without gradients. With alpha=0 the loss is exactly the trainer's own cross-entropy (the teacher is not even
called), so a distilled run with alpha=0 reproduces a plain run bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LeanvisionError
from ..io import load_weights
from ..train import fit
from .base import Context, TechniqueConfig, check_range, register_technique

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DistillConfig(TechniqueConfig):
    """Train the run's architecture from fresh weights with a trained teacher run.

    Spec: `"distill:teacher=runs/big,alpha=0.5,temperature=4"`.
    """

    stage = "train"
    teacher: str = ""  # run directory of the trained teacher (same dataset, classes and normalization)
    alpha: float = 0.5  # weight of the soft-target (teacher) term; 0 = plain training on labels
    temperature: float = 4.0  # softmax temperature T for both teacher and student
    epochs: int = 0  # training epochs; 0 = the source run's own

    def __post_init__(self) -> None:
        check_range("distill", "alpha", self.alpha, 0.0, 1.0, high_open=False)
        check_range("distill", "temperature", self.temperature, 1e-3, 1e3, high_open=False)
        check_range("distill", "epochs", self.epochs, 0, 10_000)
        if not self.teacher:
            raise LeanvisionError("distill needs a teacher: give `teacher`, the run directory of a trained model "
                                  "(e.g. 'distill:teacher=runs/big').")
        if not (Path(self.teacher) / "model.json").is_file():
            raise LeanvisionError(f"Teacher run {self.teacher!r} not found. Expected a run directory with model.json "
                                  "(written by `leanvision train`); check `teacher`.")


def distillation_loss(teacher: nn.Module, alpha: float = DistillConfig.alpha,
                      temperature: float = DistillConfig.temperature, label_smoothing: float = 0.0) -> LossFn:
    """A `fit(..., loss_fn=...)` loss mixing the teacher's soft targets with the labels.

    Example: `fit(student, ds, cfg, "runs/s", loss_fn=distillation_loss(load_run("runs/t").model, alpha=0.7))`.
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t2 = temperature * temperature
    placed = {"device": None}

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)  # exactly the trainer's own loss
        if alpha == 0:
            return hard
        if placed["device"] != inputs.device:  # follow the student onto the training device, once
            teacher.to(inputs.device)
            placed["device"] = inputs.device
        with torch.no_grad():
            soft_targets = F.log_softmax(teacher(inputs).float() / temperature, dim=1)
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft_targets, reduction="batchmean",
                        log_target=True) * t2
        return alpha * soft + (1 - alpha) * hard

    return loss_fn


def load_teacher(teacher_dir: str | Path, student_meta: dict, load_run: Callable[[str | Path], Any]) -> nn.Module:
    """Load a teacher run with `load_run` (e.g. `leanvision.load_run`) and check it sees the same inputs and classes
    as the student."""
    run = load_run(teacher_dir)
    for key in ("num_classes", "input_shape", "classes", "mean", "std"):
        if run.meta.get(key) != student_meta.get(key):
            raise LeanvisionError(f"Teacher {teacher_dir} does not match the student: its {key} is "
                                  f"{run.meta.get(key)!r}, the student's {student_meta.get(key)!r}. Use a teacher "
                                  "trained on the same dataset and preprocessing.")
    return run.model


@register_technique("distill", DistillConfig)
def distill_(model: nn.Module, config: DistillConfig, ctx: Context) -> nn.Module:
    """Technique entry point: train the source run's architecture from its own initial weights (same seed) with the
    teacher, for the source run's training schedule; the best validation weights are kept.

    Fresh weights (not the source run's trained ones) make the result directly comparable to the source run: same
    architecture, same initialization, same schedule, only the loss differs.
    """
    import dataclasses

    if ctx.load_run is None or ctx.rebuild is None:
        raise LeanvisionError("distill needs Context.load_run and Context.rebuild (optimize_run gives both); call it "
                              "through leanvision.optimize.")
    teacher = load_teacher(config.teacher, ctx.meta, ctx.load_run)
    cfg = dataclasses.replace(ctx.train, epochs=config.epochs or ctx.train.epochs)
    torch.manual_seed(cfg.seed)  # the same initial weights as the source run (train_run seeds, then builds)
    student = ctx.rebuild()
    if [tuple(p.shape) for p in student.parameters()] != [tuple(p.shape) for p in model.parameters()]:
        raise LeanvisionError("distill retrains the source run's architecture from scratch, so it must come first "
                              "in a technique chain (before prune). Reorder the techniques.")
    out = ctx.work_dir / "steps" / "distill"
    loss_fn = distillation_loss(teacher, config.alpha, config.temperature, cfg.label_smoothing)
    history = fit(student, ctx.dataset, cfg, out, progress=ctx.progress, loss_fn=loss_fn)
    student.load_state_dict(load_weights(out / "best.safetensors"))
    (out / "checkpoint.safetensors").unlink(missing_ok=True)
    ctx.info.update(teacher=str(config.teacher), epochs=len(history),
                    best_val_accuracy=max((h["val_accuracy"] or 0.0) for h in history))
    return student.cpu().eval()
