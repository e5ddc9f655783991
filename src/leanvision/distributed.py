"""Data-parallel training over several processes (GPUs or machines) started by torchrun, with torch.distributed.

Launch: `torchrun --nproc-per-node N -m leanvision train ...` (add `--nnodes`/`--rdzv-endpoint` for machines).
torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `init_from_env` then joins the process group (nccl on CUDA, one GPU
per local rank; gloo on CPU), and `fit` wraps the model in DistributedDataParallel (DDP).

Batch and learning-rate semantics: `batch_size` stays the GLOBAL batch, the images per optimizer step, exactly as
in a one-process run. Every rank draws the same seeded permutation each epoch, and each global batch is split into
`world_size` contiguous slices; rank r trains on slice r. So steps per epoch, the learning-rate schedule and
warm-up are those of a one-process run with the same `--batch-size`, and no learning-rate scaling is needed: the
same command gives the same hyper-parameters on 1 or N processes (per-process batch = batch_size / world_size).
Each rank's loss is weighted by `n_r * world_size / n` before backward, so DDP's gradient average equals the
gradient of the mean loss over the global batch even when slices differ by one image.

Metrics (loss sums, correct counts, images seen) are summed over ranks with all_reduce; validation is sharded the
same way and reduced, so every rank sees the same numbers and takes the same early-stopping decision. Only rank 0
writes files (metrics.jsonl, weights, checkpoints, config.json, model.json, result.json); the others wait at a
barrier where they need rank 0's files. Known limits: Ctrl-C under torchrun stops the job without a mid-epoch
checkpoint (resume then restarts from the last epoch boundary), a resumed multi-process run is not bitwise
identical to an uninterrupted one (every rank restores rank 0's random state), and `on_epoch_end` runs on rank 0
only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .device import launch_env, local_device_name, resolve_device
from .errors import LeanvisionError


def active() -> bool:
    """True when a process group with more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single-process run): the one process that writes files and prints."""
    if active():
        return dist.get_rank() == 0
    env = launch_env()
    return env is None or env.rank == 0


def init_from_env(device_name: str = "auto") -> bool:
    """Join the torchrun process group when launched by torchrun; returns True if this call created it.

    The caller that created the group destroys it at the end (`destroy`). Example: `owns = init_from_env("cpu")`.
    """
    env = launch_env()
    if env is None or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise LeanvisionError("WORLD_SIZE > 1 (torchrun) but this PyTorch build has no torch.distributed. "
                              "Run a single process, or install a PyTorch build with distributed support.")
    device = resolve_device(local_device_name(device_name))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    elif device.type == "cpu":
        dist.init_process_group(backend="gloo")
    else:
        raise LeanvisionError(f"Data-parallel training under torchrun supports cpu (gloo) and cuda (nccl) devices. "
                              f"Received: device='{device}'. Use device='cuda' or device='cpu', or run a single "
                              "process.")
    return True


def barrier() -> None:
    if active():
        dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """Sums of `values` over all ranks (float64; exact for counts below 2**53); `values` itself when alone."""
    if not active():
        return [float(v) for v in values]
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when `flag` is True on at least one (an all-reduce MAX), so all ranks take the same branch
    (e.g. stop on a NaN loss seen by one rank instead of leaving the others waiting in the next all-reduce)."""
    if not active():
        return bool(flag)
    if device is None or device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device or "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def contiguous_slice(total: int, part: int, parts: int) -> tuple[int, int]:
    """[lo, hi) of slice `part` when `total` items are cut into `parts` contiguous slices (torch.tensor_split)."""
    base, extra = divmod(total, parts)
    lo = part * base + min(part, extra)
    return lo, lo + base + (1 if part < extra else 0)


class DataParallel:
    """DDP wrapper, batch sharding and metric reduction for one rank inside `fit`.

    Example: `dp = DataParallel(model, device); for xb, yb in dp.shard(batches): loss * dp.loss_weight(len(yb))`.
    """

    def __init__(self, model: nn.Module, device: torch.device, batch_size: int):
        from torch.nn.parallel import DistributedDataParallel

        self.rank, self.world_size, self.device = dist.get_rank(), dist.get_world_size(), device
        if batch_size < self.world_size:
            raise LeanvisionError(f"batch_size={batch_size} is the global batch and is split over {self.world_size} "
                                  f"processes. Expected batch_size >= {self.world_size}.")
        self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self._global_size = 0

    def local_size(self, global_size: int) -> int:
        lo, hi = contiguous_slice(global_size, self.rank, self.world_size)
        return hi - lo

    def shard(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's slice of each global batch (every rank iterates the same seeded global order)."""
        for xb, yb in batches:
            self._global_size = len(yb)
            lo, hi = contiguous_slice(len(yb), self.rank, self.world_size)
            yield xb[lo:hi], yb[lo:hi]

    def loss_weight(self, local_size: int) -> float:
        """Factor on this rank's mean loss so DDP's gradient average is the global batch's mean gradient."""
        return local_size * self.world_size / max(1, self._global_size)

    def shard_split(self, split: Any) -> Any:
        """This rank's contiguous share of an evaluation split (a view for in-memory splits)."""
        if split is None or len(split) == 0:
            return split
        lo, hi = contiguous_slice(len(split), self.rank, self.world_size)
        return split.subset(np.arange(lo, hi))

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank, so all evaluate and save the same model."""
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def reduce_running(self, running: dict[str, Any]) -> dict[str, Any]:
        """`running` with loss_sum, correct and seen summed over ranks (time stays this rank's)."""
        loss_sum, correct, seen = all_reduce_sum([running["loss_sum"], running["correct"], running["seen"]],
                                                 self._comm_device())
        return {**running, "loss_sum": loss_sum, "correct": int(round(correct)), "seen": int(round(seen))}

    def reduce_means(self, metrics: dict[str, float], count: int) -> dict[str, float]:
        """Global means of per-shard means (`loss`, `accuracy`) over `count` images per shard."""
        loss, acc = metrics.get("loss", 0.0), metrics.get("accuracy", 0.0)
        loss_sum, acc_sum, total = all_reduce_sum([loss * count, acc * count, count], self._comm_device())
        return {"loss": loss_sum / total, "accuracy": acc_sum / total} if total else {}

    def _comm_device(self) -> torch.device | None:
        return self.device if dist.get_backend() == "nccl" else None
