"""Plain warnings for results that look wrong, from the numbers a run recorded: one line each, naming the fix.

`training_warnings(history, num_classes, ...)` reads a run's per-epoch history; `step_warning(step, before)` reads one
`leanvision optimize` step. Neither prints: the run/optimize result carries them as `warnings`, the CLI prints them
to stderr as `warning: ...`.

Rules (thresholds here and only here):
- validation collapse: the last epoch's validation accuracy is near chance (below chance + NEAR_CHANCE of the way to
  100%), or more than VAL_GAP below the training accuracy of that epoch;
- loss spike: an epoch's training loss is above SPIKE_FACTOR x the lowest earlier one, above SPIKE_FACTOR x ln(classes)
  (the loss of a uniform guess, where training starts), or it rose over the last two epochs in a row;
- a compression step that loses more than STEP_DROP_PP percentage points of test accuracy, or a structured prune
  step that removed no parameters.
"""

from __future__ import annotations

import math
from typing import Any

from .measure.env import x86_without_int8_dot

NEAR_CHANCE = 0.10  # fraction of the way from chance to 100% still counted as "near chance"
VAL_GAP = 0.30  # train - val accuracy (fraction) above which validation is called collapsed
SPIKE_FACTOR = 3.0
STEP_DROP_PP = 2.0


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def near_chance(accuracy: float, num_classes: int) -> bool:
    """Accuracy below chance + NEAR_CHANCE of the way from chance to 100%: the model has not learned."""
    chance = 1.0 / max(1, num_classes)
    return accuracy < chance + NEAR_CHANCE * (1 - chance)


def _loss_diverged(losses: list[Any], uniform: float) -> bool:
    """Any training loss non-finite, above SPIKE_FACTOR x a uniform guess's, or above SPIKE_FACTOR x an earlier one."""
    seen: list[float] = []
    for loss in losses:
        if loss is None:
            continue
        if not math.isfinite(loss) or loss > SPIKE_FACTOR * uniform or (seen and loss > SPIKE_FACTOR * min(seen)):
            return True
        seen.append(loss)
    return False


def training_warnings(history: list[dict[str, Any]], num_classes: int, *, steps_per_epoch: int | None = None,
                      learning_rate: float | None = None, batchnorm: bool = False) -> list[str]:
    """Warnings for a finished training history (the records `fit` returns); [] for a healthy run.

    A near-chance run advises a lower learning rate only when its loss spiked or diverged; otherwise (loss still
    falling, few steps) it is under-trained: more epochs, and for BatchNorm nets (`batchnorm`) a note that few steps
    leave the BatchNorm statistics unsettled."""
    if not history:
        return []
    out: list[str] = []
    last = history[-1]
    epochs = len(history)
    n = (steps_per_epoch or 0) * epochs
    steps = f", {n} optimizer step{'s' * (n != 1)}" if steps_per_epoch else ""
    lr = f", now {learning_rate:g}" if learning_rate else ""
    val, train = last.get("val_accuracy"), last.get("train_accuracy")
    chance = 1.0 / max(1, num_classes)
    losses = [h.get("train_loss") for h in history]
    uniform = math.log(max(2, num_classes))
    if val is not None:
        if near_chance(val, num_classes):
            if _loss_diverged(losses, uniform):
                fix = f"the training loss spiked or diverged, so lower the learning rate (`learning_rate`{lr})"
            else:
                fix = f"it is under-trained; train more epochs (`epochs`, now {epochs})"
                if batchnorm:
                    fix += " (with this few steps the BatchNorm running statistics have not settled either)"
            where = "near" if val >= chance else "below"
            out.append(f"validation accuracy {_pct(val)} after {epochs} epoch{'s' * (epochs != 1)}{steps} is {where} "
                       f"chance ({_pct(chance)}): the model has not learned yet; {fix}.")
        elif train is not None and train - val > VAL_GAP:
            out.append(f"validation accuracy {_pct(val)} is far below training accuracy {_pct(train)} at the last "
                       f"epoch{steps}: too few steps for BatchNorm statistics to settle, or overfitting; train more "
                       "epochs (`epochs`) or lower the learning rate (`learning_rate`).")
    for i, loss in enumerate(losses):
        if loss is None or not math.isfinite(loss):
            continue
        earlier = [x for x in losses[:i] if x is not None and math.isfinite(x)]
        if loss > SPIKE_FACTOR * uniform:
            out.append(f"training loss {loss:.2f} at epoch {i + 1} is over {SPIKE_FACTOR:g}x that of a uniform guess "
                       f"({uniform:.2f}): the learning rate is too high for this model and data; lower it "
                       f"(`learning_rate`{lr}).")
            break
        if earlier and loss > SPIKE_FACTOR * min(earlier):
            out.append(f"training loss spiked to {loss:.3f} at epoch {i + 1}, over {SPIKE_FACTOR:g}x its earlier "
                       f"minimum {min(earlier):.3f}: lower the learning rate (`learning_rate`{lr}).")
            break
    else:
        tail = [x for x in losses[-3:] if x is not None]
        if len(tail) == 3 and tail[0] < tail[1] < tail[2]:
            out.append(f"training loss grew epoch over epoch ({tail[0]:.3f} -> {tail[1]:.3f} -> {tail[2]:.3f}): "
                       f"lower the learning rate (`learning_rate`{lr}).")
    return out


def step_warning(step: dict[str, Any], before: dict[str, Any]) -> str | None:
    """A warning when a `leanvision optimize` step lost more than STEP_DROP_PP of test accuracy, naming the fix."""
    name, config = step["step"], step.get("config") or {}
    if name == "prune" and config.get("structured", True) and step["params"] >= before["params"]:
        round_to = config.get("round_to")
        why = (f"round_to={round_to} is larger than the layers' channel counts to prune, so rounding undid the "
               f"pruning; use a smaller `round_to` (e.g. 8) or drop it" if round_to and round_to > 1 else
               "raise the prune ratio or check which layers can be pruned")
        return f"prune removed nothing ({before['params']:,} -> {step['params']:,} params): {why}."
    drop = (before["accuracy"] - step["accuracy"]) * 100
    if drop <= STEP_DROP_PP:
        return None
    loss = f"{name} lost {drop:.2f} pp of test accuracy ({_pct(before['accuracy'])} -> {_pct(step['accuracy'])})"
    if name == "prune":
        ratio, epochs = config.get("ratio"), config.get("finetune_epochs", 0)
        fix = (f"fine-tune longer (finetune_epochs={max(3, 2 * epochs + 1)}; now {epochs}) or prune less "
               f"(prune:ratio={max(0.1, round((ratio or 0.5) / 2, 2))})")
    elif name == "distill":
        fix = ("train the student longer (distill uses the source run's epochs: train the source with more "
               "`epochs`) or lower `alpha`")
    elif name == "quantize":
        fix = ("use more calibration images (`calibration_size`), or quantize:mode=qat with finetune_epochs=2")
        applied = (step.get("quantization") or {}).get("reduce_range", config.get("reduce_range"))
        if x86_without_int8_dot((step.get("onnxruntime") or {}).get("cpu")) and not applied:
            fix += ("; this CPU has no VNNI/AMX, where ONNX Runtime's uint8 x int8 products can saturate: try "
                    "quantize:mode=int8,reduce_range=true (7-bit weights)")
    else:
        fix = "check this step's settings"
    return f"{loss}: {fix}."
