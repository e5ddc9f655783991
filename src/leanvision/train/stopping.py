"""Why a run stops before its last epoch: Ctrl-C (`sigint_flag`, checked between steps; the run saves a
checkpoint and raises `TrainingInterrupted`), the test hook `interrupt_at_step`, and a NaN/inf loss
(`stop_if_diverged` raises `TrainingDiverged`). Early stopping on validation accuracy is a config option of the
loop (`early_stopping`)."""

from __future__ import annotations

import math
import signal
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import TrainingDiverged, TrainingInterrupted

interrupt_at_step: int | None = None  # test hook: behave as if Ctrl-C came after this many optimizer steps


def should_interrupt(sigint: dict, global_step: int) -> bool:
    """Whether the run stops after optimizer step `global_step`: Ctrl-C was pressed, or the test hook says so."""
    return sigint["hit"] or (interrupt_at_step is not None and global_step == interrupt_at_step)


def interrupted(epoch: int, step: int, out: Path) -> TrainingInterrupted:
    return TrainingInterrupted(f"Interrupted at epoch {epoch + 1}, step {step}; checkpoint saved in {out}. "
                               "Run the same command with `resume` to continue.")


@contextmanager
def sigint_flag():
    """Turn the first Ctrl-C into a flag checked between steps; a second Ctrl-C interrupts immediately."""
    state = {"hit": False}

    def handler(signum, frame):
        if state["hit"]:
            raise KeyboardInterrupt
        state["hit"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_if_diverged(value: float, ranks, device: torch.device, epoch: int, step: int, learning_rate: float,
                     out: Path) -> None:
    """Raise `TrainingDiverged` when `value` (a loss or loss sum) is NaN/inf; under torchrun on every rank as soon as
    one rank sees it (an all-reduce of the flag), so no rank is left waiting in the next gradient all-reduce."""
    mine = not math.isfinite(value)
    anyone = ranks.any(mine, device)  # under torchrun every rank joins the all-reduce
    if anyone:
        last_good = f"the last good checkpoint (epoch {epoch}) is kept" if epoch else "no weights were saved"
        value, where = (value, "") if mine else (float("nan"), " on another rank")
        raise TrainingDiverged(
            f"Loss became {value}{where} at epoch {epoch + 1}, step {step + 1} (lr={learning_rate:.3g}); "
            f"{last_good} in {out}. Lower `learning_rate`, or use precision='fp32'."
        )
