"""Distributed meta-training over ``torch.distributed`` (launched with ``torchrun``).

Every rank draws the same meta-batch of tasks from the shared seed stream and keeps a
contiguous share; it samples, fits baselines and adapts only those. The meta-gradient, every
Fisher-vector product and the line search's losses and KLs are averaged over ranks, so all
ranks take the same TRPO step. Only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=int(os.environ.get("CAML_RL_DIST_TIMEOUT", "600")))


class DistributedError(RuntimeError):
    """A rank died or a collective timed out; the last checkpoint is intact."""


@dataclass
class Workers:
    rank: int = 0
    world_size: int = 1
    comm_device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``x`` over ranks (identity in a single process)."""
        if self.world_size == 1:
            return x
        y = x.detach().to(self.comm_device, copy=True)
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return (y / self.world_size).to(x.device)

    def broadcast_(self, x: torch.Tensor) -> None:
        """Overwrite ``x`` with rank 0's value, in place."""
        if self.world_size > 1:
            y = x.detach().to(self.comm_device, copy=True)
            dist.broadcast(y, src=0)
            x.data.copy_(y.to(x.device))

    def shard(self, num_tasks: int) -> tuple[int, int]:
        """``(first task, number of tasks)`` of this rank's share of the meta-batch."""
        per_rank = num_tasks // self.world_size
        return self.rank * per_rank, per_rank

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0"))


def _pin_to_own_cores() -> None:
    """Give each CPU worker on a machine its own share of the cores, so that the simulator's
    threads (sized from the affinity mask) and torch's do not oversubscribe them."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world < 2 or not hasattr(os, "sched_getaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < local_world:
        return
    mine = set(cores[local_rank::local_world])
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))


def init_workers(device: torch.device) -> tuple[Workers, torch.device]:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPUs); returns the
    workers and this rank's device (``cuda:LOCAL_RANK`` for GPU runs)."""
    if not launched_by_torchrun():
        return Workers(comm_device=device), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        _pin_to_own_cores()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Workers(dist.get_rank(), dist.get_world_size(), device), device
