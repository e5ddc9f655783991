"""What a training run shows while it runs: a live progress bar (rich) with loss, accuracy and images/s, one
summary line per epoch (`Progress`), and the epoch's metrics record written to metrics.jsonl (`epoch_record`).

`rich` is imported when a bar is shown: it is not needed by `import leanvision` (CLI start-up speed)."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch


def epoch_record(epoch: int, totals: dict[str, Any], val: dict[str, float], learning_rate: float,
                 epoch_time_s: float) -> dict[str, Any]:
    """One metrics.jsonl line: train loss/accuracy over the epoch, validation loss/accuracy, last learning rate,
    the epoch's training time and throughput."""
    return {
        "epoch": epoch + 1,
        "train_loss": totals["loss_sum"] / max(1, totals["seen"]),
        "train_accuracy": totals["correct"] / max(1, totals["seen"]),
        "val_loss": val.get("loss"),
        "val_accuracy": val.get("accuracy"),
        "learning_rate": learning_rate,
        "epoch_time_s": epoch_time_s,
        "train_images_per_s": totals["seen"] / max(epoch_time_s, 1e-9),
    }


class Progress:
    """Live progress bar (rich) with loss, accuracy and images/s; prints one summary line per epoch."""

    def __init__(self, enabled: bool, total_epochs: int, steps_per_epoch: int, lines: bool | None = None):
        self.enabled, self.total_epochs, self.steps_per_epoch = enabled, total_epochs, steps_per_epoch
        self.lines = enabled if lines is None else lines  # per-epoch lines also without the live bar
        self.progress = None
        self.task = None
        self._last = 0.0

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.progress = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=True,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, done: int) -> None:
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch + 1}/{self.total_epochs}", total=self.steps_per_epoch,
                                               completed=done, info="")

    def advance(self, loss: torch.Tensor, correct: torch.Tensor, running: dict[str, Any], elapsed: float) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self._last > 0.25:  # reading the accuracy syncs the device: only a few times per second
            self._last = now
            seen = running["seen"]
            accuracy = (running["correct"] + int(correct.item())) / max(1, seen)
            info = f"loss {float(loss.detach()):.4f}  acc {accuracy:.2%}  {seen / max(elapsed, 1e-9):,.0f} img/s"
            self.progress.update(self.task, advance=1, info=info)
        else:
            self.progress.update(self.task, advance=1)

    def end_epoch(self, r: dict[str, Any]) -> None:
        if not self.lines:
            return
        val = f"val_acc {r['val_accuracy']:.2%}  " if r["val_accuracy"] is not None else ""
        line = (f"epoch {r['epoch']}/{self.total_epochs}  loss {r['train_loss']:.4f}  acc {r['train_accuracy']:.2%}  "
                f"{val}{r['epoch_time_s']:.1f} s  {r['train_images_per_s']:,.0f} img/s")
        self.note(line)

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        elif self.lines:
            print(text, file=sys.stderr, flush=True)
