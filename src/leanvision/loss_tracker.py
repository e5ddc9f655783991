"""Per-epoch training-loss accounting that reads the device rarely (CUDA and XLA) or every step (CPU)."""

from __future__ import annotations

import torch

LAZY_LOSS_CHECK_EVERY = 50  # optimizer steps between host reads of the loss on CUDA and XLA (each read is a sync)
XLA_LOSS_CHECK_EVERY = LAZY_LOSS_CHECK_EVERY


class LossTracker:
    """Per-epoch sum of `batch loss x batch size`, read on the host every `check_every` steps for the NaN check.

    The CPU reads every step (a read costs nothing there). CUDA and XLA devices keep the step losses on the device
    and read them all at once every `LAZY_LOSS_CHECK_EVERY` steps, so a step never waits for the GPU or TPU; each
    read adds the losses one by one in float64 on the host, so the sum is the same whichever way it is read. Call
    `add` after the optimizer step (after `step_done`), so on XLA the read does not cut an extra graph.

    Example: `value = tracker.add(loss, len(y)); running += tracker.pop()` (value is NaN/inf when it diverged).
    """

    def __init__(self, device: torch.device, check_every: int | None = None):
        lazy = device.type in ("cuda", "xla")
        self.check_every = check_every or (LAZY_LOSS_CHECK_EVERY if lazy else 1)
        self._pending: list[tuple[torch.Tensor, int]] = []  # device-side losses since the last read (lazy mode)
        self._host: list[float] = []  # host-side `loss x batch size` values not yet popped, in step order
        self._steps = 0
        self.read_last = False  # whether the last `add` read the device (its value is then worth checking)

    def add(self, loss: torch.Tensor, batch_size: int) -> float:
        """Account one batch; returns a finite-or-not value to check (the loss, or a partial sum, or 0.0 unread)."""
        self._steps += 1
        if self.check_every == 1:
            value = loss.item()  # one host sync per step: the divergence check needs it anyway
            self._host.append(value * batch_size)
            self.read_last = True
            return value
        self._pending.append((loss.detach().float().reshape(()), batch_size))
        self.read_last = self._steps % self.check_every == 0
        return self._read() if self.read_last else 0.0

    def _read(self) -> float:
        if not self._pending:
            return 0.0
        values = torch.stack([v for v, _ in self._pending]).tolist()  # one device -> host copy for all of them
        total = 0.0
        for value, (_, batch_size) in zip(values, self._pending):
            self._host.append(value * batch_size)  # same float64 values as the eager path
            total += value * batch_size
        self._pending = []
        return total

    def pop(self) -> float:
        """The host-side sum accumulated since the last pop (without forcing a device read)."""
        return self.drain_into(0.0)

    def drain_into(self, total: float) -> float:
        """`total` plus each host-side value since the last pop, added one at a time in step order: the same float64
        sum however often the device was read (so a resumed run's loss matches an uninterrupted one bit for bit)."""
        for value in self._host:
            total += value
        self._host = []
        return total

    def flush(self) -> float:
        """Read any device-side remainder (a sync), then pop; raises nothing, check `math.isfinite` yourself."""
        self._read()
        return self.pop()

    def flush_into(self, total: float) -> float:
        """Read any device-side remainder (a sync), then `drain_into(total)`."""
        self._read()
        return self.drain_into(total)
