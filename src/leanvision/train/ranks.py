"""Data parallelism as one object the training loop calls the same way with or without torchrun: `OneProcess`
(every method the identity; this process writes the files) and `Ranks` (DDP through `distributed.DataParallel`:
batch shards, loss weights, metric reductions, rank 0 writes the files). `ranks_for` picks one."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..loss_tracker import LAZY_LOSS_CHECK_EVERY
from .stopping import sigint_flag


class OneProcess:
    """A single training process: `net` is the model itself, nothing is sharded or reduced."""

    rank, world_size, main = 0, 1, True
    loss_check_every: int | None = None  # LossTracker's default for the device

    def __init__(self, model: nn.Module):
        self.net = model  # runs the training forward; `model` holds the weights

    def sigint(self):
        """Ctrl-C becomes a flag checked between steps (see `stopping.sigint_flag`)."""
        return sigint_flag()

    def local_size(self, global_size: int) -> int:
        return global_size

    def shard(self, batches):
        return batches

    def weighted(self, loss: torch.Tensor, local_size: int) -> torch.Tensor:
        return loss

    def shard_split(self, split: Any) -> Any:
        return split

    def end_epoch(self, model: nn.Module, running: dict[str, Any]) -> dict[str, Any]:
        """The epoch's train totals over all processes (here: this one's)."""
        return running

    def reduce_val(self, val: dict[str, float], split: Any) -> dict[str, float]:
        return val

    def any(self, flag: bool, device: torch.device) -> bool:
        return flag


class Ranks(OneProcess):
    """One rank under torchrun: `net` is the DDP wrapper; only rank 0 writes files."""

    loss_check_every = LAZY_LOSS_CHECK_EVERY  # every rank reads the loss at the same steps (no per-step sync)

    def __init__(self, model: nn.Module, device: torch.device, batch_size: int):
        self.dp = distributed.DataParallel(model, device, batch_size)
        self.net, self.rank, self.world_size = self.dp.ddp, self.dp.rank, self.dp.world_size
        self.main = self.rank == 0

    def sigint(self):
        return nullcontext({"hit": False})  # torchrun: Ctrl-C stops all ranks

    def local_size(self, global_size: int) -> int:
        return self.dp.local_size(global_size)

    def shard(self, batches):
        return self.dp.shard(batches)  # this rank's slice of each global batch

    def weighted(self, loss: torch.Tensor, local_size: int) -> torch.Tensor:
        return loss * self.dp.loss_weight(local_size)  # DDP averages over ranks

    def shard_split(self, split: Any) -> Any:
        return self.dp.shard_split(split)

    def end_epoch(self, model: nn.Module, running: dict[str, Any]) -> dict[str, Any]:
        """Every rank gets rank 0's BatchNorm statistics; train metrics summed over ranks."""
        self.dp.sync_buffers(model)
        return self.dp.reduce_running(running)

    def reduce_val(self, val: dict[str, float], split: Any) -> dict[str, float]:
        return self.dp.reduce_means(val, len(split) if split is not None else 0)  # each rank validated its shard

    def any(self, flag: bool, device: torch.device) -> bool:
        return distributed.any_rank(flag, device)


def ranks_for(model: nn.Module, device: torch.device, batch_size: int) -> OneProcess:
    """`Ranks` when launched by torchrun (see distributed.py), else `OneProcess`."""
    return Ranks(model, device, batch_size) if distributed.active() else OneProcess(model)
