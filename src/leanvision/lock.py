"""Timing never overlaps training on one machine: trainers hold a shared lock, a measurement an exclusive one
(`leanvision search`; `leanvision study --storage` measures its report under it).

A readers-writer lock on files in the output directory (`fcntl.flock`): `training()` takes the shared lock and
releases it between epochs (`pause()`); `measuring()` takes the exclusive lock, so it waits until every local worker
has finished its current epoch and keeps new epochs from starting until the timing is done. A turnstile file gives
the measurement priority (a trainer passes the turnstile before taking its shared lock; the measurer holds the
turnstile while it waits), so a stream of epochs cannot starve it. The kernel releases the locks of a dead process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class MachineLock:
    """`with lock.training(): ...epoch...` and `with lock.measuring(): ...timing...` across local processes."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.main_path, self.gate_path = directory / ".measure.lock", directory / ".measure.turnstile"

    @contextlib.contextmanager
    def _flock(self, path: Path, mode: int) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def training(self) -> Iterator[SharedHold]:
        """Hold the shared side while training; `hold.pause()` between epochs lets a waiting measurement run."""
        hold = SharedHold(self)
        hold.acquire()
        try:
            yield hold
        finally:
            hold.release()

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        with self._flock(self.gate_path, fcntl.LOCK_EX), self._flock(self.main_path, fcntl.LOCK_EX):
            yield


class SharedHold:
    """A trainer's shared hold on the machine lock (taken through the turnstile)."""

    def __init__(self, lock: MachineLock):
        self.lock, self.fd = lock, None

    def acquire(self) -> None:
        with self.lock._flock(self.lock.gate_path, fcntl.LOCK_EX):
            self.fd = os.open(self.lock.main_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def pause(self) -> None:
        """Let a measurement that waits at the turnstile run now, then continue."""
        self.release()
        self.acquire()
