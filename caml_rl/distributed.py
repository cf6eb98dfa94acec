"""Distributed meta-training over ``torch.distributed`` (launched with ``torchrun``).

Every rank draws the same meta-batch of tasks from the shared seed stream and keeps a
contiguous share; it samples, fits baselines and adapts only those. The meta-gradient, every
Fisher-vector product and the line search's losses and KLs are averaged over ranks, so all
ranks take the same TRPO step. Every random stream advances alike on every rank: the sampler
draws the whole batch's action and reset noise and keeps its share, and makes the same number
of draws however soon its episodes end (``Sampler.sample``), so the PPO minibatch order and
TRPO's metric subsample agree across ranks and rank 0's checkpointed streams are every rank's.
Only rank 0 writes logs and checkpoints.

Environment variables are read when a command needs them, never at import, and a bad or
incomplete launcher environment stops with one line naming the variable instead of waiting
for workers that will never come.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from .checkpoint import first_line
from .config import ConfigError

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A rank died, a collective timed out, or the launcher's environment is incomplete or bad."""


class WorkerLostError(DistributedError):
    """A collective failed: another worker died or stopped answering within the timeout.

    Raised only around ``torch.distributed`` calls, so an error of this worker's own (out of
    memory, a bug) is never mistaken for a lost worker. The backend's error is the ``__cause__``.
    """


T = TypeVar("T")


def env_int(name: str, default: int, minimum: int) -> int:
    """An integer environment variable, or one line naming it and what is allowed."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise DistributedError(f"environment variable {name}={raw!r} is not allowed; expected an integer >= {minimum}")
    return value


def dist_timeout() -> timedelta:
    """How long a collective (and joining the workers) may wait: ``CAML_RL_DIST_TIMEOUT`` seconds."""
    return timedelta(seconds=env_int("CAML_RL_DIST_TIMEOUT", 600, 1))


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
        self._collective("all_reduce", lambda: dist.all_reduce(y, op=dist.ReduceOp.SUM))
        return (y / self.world_size).to(x.device)

    def broadcast_(self, x: torch.Tensor) -> None:
        """Overwrite ``x`` with rank 0's value, in place."""
        if self.world_size > 1:
            y = x.detach().to(self.comm_device, copy=True)
            self._collective("broadcast", lambda: dist.broadcast(y, src=0))
            x.data.copy_(y.to(x.device))

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (a collective: every rank must call it)."""
        if self.world_size == 1:
            return flag
        y = torch.tensor([float(flag)], device=self.comm_device)
        self._collective("all_reduce", lambda: dist.all_reduce(y, op=dist.ReduceOp.MAX))
        return bool(y.item() > 0)

    def _collective(self, name: str, call: Callable[[], T]) -> T:
        """Run one ``torch.distributed`` call; the backend's failure (gloo and nccl raise a
        RuntimeError when a peer closes the connection or a collective times out) is a lost worker."""
        try:
            return call()
        except RuntimeError as exc:
            raise WorkerLostError(f"rank {self.rank}: {name} failed ({first_line(exc, 100)})") from exc

    def shard(self, num_tasks: int) -> tuple[int, int]:
        """``(first task, number of tasks)`` of this rank's share of the meta-batch."""
        per_rank = num_tasks // self.world_size
        return self.rank * per_rank, per_rank

    def close(self) -> None:
        """Leave the group together: a rank that tears gloo down while a peer is still finishing
        (rank 0 writes the last checkpoint) can abort the peer at exit."""
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            gc.collect()  # free the group's gloo threads now, not in the interpreter's teardown


def launched_by_torchrun() -> bool:
    return env_int("WORLD_SIZE", 1, 1) > 1


def rank_from_env() -> int:
    """This process's rank: 0 outside a multi-worker launch, whatever ``RANK`` says."""
    if not launched_by_torchrun():
        return 0
    world = env_int("WORLD_SIZE", 1, 1)
    rank = env_int("RANK", 0, 0)
    if rank >= world:
        raise DistributedError(
            f"environment variable RANK={rank} is not allowed; expected 0 to WORLD_SIZE-1={world - 1}"
        )
    return rank


def check_launcher_env() -> None:
    """Refuse a multi-worker environment that lacks what torchrun sets, instead of waiting for
    workers that were never started."""
    missing = [v for v in LAUNCHER_VARIABLES if not os.environ.get(v, "").strip()]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for distributed training but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; start the workers with torchrun "
            "(or unset WORLD_SIZE for one process)"
        )
    rank_from_env()
    local_world = env_int("LOCAL_WORLD_SIZE", 1, 1)
    env_int("MASTER_PORT", 0, 1)
    if env_int("LOCAL_RANK", 0, 0) >= local_world:
        raise DistributedError(
            f"environment variable LOCAL_RANK={os.environ['LOCAL_RANK']} is not allowed; expected 0 to "
            f"LOCAL_WORLD_SIZE-1={local_world - 1}"
        )


def _pin_to_own_cores() -> None:
    """Give each CPU worker on a machine its own share of the cores, so that the simulator's
    threads (sized from the affinity mask) and torch's do not oversubscribe them."""
    local_rank = env_int("LOCAL_RANK", 0, 0)
    local_world = env_int("LOCAL_WORLD_SIZE", 1, 1)
    if local_world < 2 or not hasattr(os, "sched_getaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < local_world:
        return
    mine = set(cores[local_rank::local_world])
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key device={name!r} but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def init_workers(device: torch.device) -> tuple[Workers, torch.device]:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPUs); returns the
    workers and this rank's device (``cuda:LOCAL_RANK`` for GPU runs)."""
    if not launched_by_torchrun():
        return Workers(comm_device=device), device
    check_launcher_env()
    timeout = dist_timeout()
    if device.type == "cuda":
        device = torch.device("cuda", env_int("LOCAL_RANK", 0, 0))
        torch.cuda.set_device(device)
    else:
        _pin_to_own_cores()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, ValueError, OSError) as exc:
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            line = first_line(exc, 100)
            raise DistributedError(
                f"could not join the {os.environ['WORLD_SIZE']} workers at {where} within "
                f"{int(timeout.total_seconds())} s (CAML_RL_DIST_TIMEOUT) ({line}); were they all started by torchrun?"
            ) from None
    return Workers(dist.get_rank(), dist.get_world_size(), device), device
