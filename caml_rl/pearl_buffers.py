"""PEARL's per-task replay buffers: preallocated tensors ``[tasks, capacity, ...]`` on the run's device.

Each training task has its own ring (first in, first out once full). Adding a batch of episodes
for many tasks at once, sampling a meta-batch, clearing some tasks and saving are whole-batch
tensor operations: no Python loop over tasks. A batch may name one task several times (oyster
draws the tasks it collects for with replacement); their transitions then follow one another.
Only the transitions that happened are stored (an episode that ended early leaves no padding).
:func:`transitions` turns the sampler's episodes into such rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, atomic_write_bytes, first_line
from .episodes import Episodes
from .pearl_nets import PEARLAgent

FIELDS = ("obs", "actions", "rewards", "next_obs", "terminals")


class NextObservations:
    """A sampler hook keeping every step's next observation: the next state of each transition,
    including an episode's last one (after the horizon, or where the episode ended early), which the
    episode buffers do not hold (they are zero after an episode ends)."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def on_reset(self, env: Any, obs: torch.Tensor) -> None:
        self.steps = []

    def on_step(self, env: Any, obs: torch.Tensor) -> None:
        self.steps.append(obs.clone())  # an env may hand out the same buffer every step

    def of(self, ep: Episodes) -> torch.Tensor:
        """The episodes' next observations ``[T, tasks, episodes, obs]``, zero where no step was taken."""
        out = torch.zeros_like(ep.obs)
        if self.steps:
            out[: len(self.steps)] = torch.stack(self.steps).to(out.device).view(len(self.steps), *out.shape[1:])
        return out * ep.mask[..., None]


def transitions(agent: PEARLAgent, ep: Episodes, next_obs: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """Episodes ``[T, tasks, episodes, ...]`` as per-task transition rows ``[tasks, episodes x T, ...]``
    (episode by episode) and which of them happened. A transition is terminal when its episode
    ended at it before the horizon. ``next_obs``: :meth:`NextObservations.of` (without it, the next
    step's observation, and zero after an episode's last step)."""
    mask = ep.mask
    horizon, n_t, n_e = mask.shape
    if next_obs is None:
        next_obs = torch.cat([ep.obs[1:], ep.obs[-1:] * 0])
    ended = mask * (1.0 - torch.cat([mask[1:], torch.zeros_like(mask[:1])]))
    ended[-1] = 0.0  # the horizon truncates; it does not terminate

    def rows(x: torch.Tensor) -> torch.Tensor:  # [T, t, e, ...] -> [t, e * T, ...]
        return x.movedim(0, 2).reshape(n_t, n_e * horizon, *x.shape[3:])

    batch = {
        "obs": rows(ep.obs),
        "actions": rows(agent.from_env(ep.actions)),
        "rewards": rows(ep.rewards),
        "next_obs": rows(next_obs),
        "terminals": rows(ended),
    }
    return batch, rows(mask) > 0


class TaskBuffers:
    """Transitions ``(obs, action in [-1, 1], reward, next obs, terminal)`` of ``num_tasks`` tasks."""

    def __init__(self, num_tasks: int, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.num_tasks, self.capacity, self.device = num_tasks, capacity, torch.device(device)
        shapes = {"obs": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_obs": (obs_dim,), "terminals": ()}
        # empty: pages that are never written are never touched; nothing reads past a task's size
        self.data = {k: torch.empty(num_tasks, capacity, *s, device=self.device) for k, s in shapes.items()}
        self.size = torch.zeros(num_tasks, dtype=torch.long, device=self.device)
        self.top = torch.zeros(num_tasks, dtype=torch.long, device=self.device)

    @staticmethod
    def nbytes(num_tasks: int, capacity: int, obs_dim: int, act_dim: int) -> int:
        return 4 * num_tasks * capacity * (2 * obs_dim + act_dim + 2)

    def clear(self, tasks: torch.Tensor) -> None:
        """Empty the buffers of ``tasks`` (a task named twice is emptied once)."""
        self.size[tasks] = 0
        self.top[tasks] = 0

    def add(self, tasks: torch.Tensor, batch: dict[str, torch.Tensor], valid: torch.Tensor) -> None:
        """Append row ``i`` of every field of ``batch [rows, length, ...]`` (where ``valid [rows, length]``)
        to the buffer of task ``tasks[i]``, in row order then position order. One call must add at most
        ``capacity`` transitions to any task (the caller's settings are checked against that once)."""
        rows, length = valid.shape
        task_of = tasks.to(self.device)[:, None].expand(rows, length).reshape(-1)
        keep = valid.reshape(-1).to(self.device)
        order = torch.argsort(task_of, stable=True)  # grouped by task, row order kept within a task
        task_sorted, keep_sorted = task_of[order], keep[order].long()
        counts = torch.zeros(self.num_tasks, dtype=torch.long, device=self.device).scatter_add_(0, task_of, keep.long())
        before = counts.cumsum(0) - counts  # valid transitions of lower-numbered tasks, in sorted order
        rank = keep_sorted.cumsum(0) - 1 - before[task_sorted]  # position within its task's new data
        slot = (self.top[task_sorted] + rank) % self.capacity
        chosen = keep_sorted.bool()
        task_idx, slot_idx, source = task_sorted[chosen], slot[chosen], order[chosen]
        for key, buffer in self.data.items():
            values = batch[key].to(self.device, torch.float32)
            buffer[task_idx, slot_idx] = values.reshape(rows * length, *values.shape[2:])[source]
        self.top = (self.top + counts) % self.capacity
        self.size = (self.size + counts).clamp(max=self.capacity)

    def sample(self, tasks: torch.Tensor, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``batch`` transitions of each of ``tasks`` (uniform, with replacement, from that task's own
        buffer only): every field ``[len(tasks), batch, ...]``."""
        tasks = tasks.to(self.device)
        size = self.size[tasks]
        u = torch.rand(len(tasks), batch, generator=generator, device=generator.device).to(self.device)
        index = torch.minimum((u * size[:, None]).long(), (size - 1).clamp(min=0)[:, None])
        rows = tasks[:, None].expand(-1, batch)
        return {key: buffer[rows, index] for key, buffer in self.data.items()}

    # ---------------------------------------------------------------- persistence
    def state(self) -> dict[str, torch.Tensor]:
        """The stored transitions (only those: ``[total, ...]`` per field, task by task) and each
        task's size and write position, on the CPU."""
        valid = torch.arange(self.capacity, device=self.device)[None, :] < self.size[:, None]
        out = {"size": self.size.cpu(), "top": self.top.cpu()}
        out.update({key: buffer[valid].cpu() for key, buffer in self.data.items()})
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state`; raise ``ValueError`` when it does not fit these buffers."""
        size, top = state["size"], state["top"]
        if size.shape != (self.num_tasks,) or top.shape != (self.num_tasks,) or size.dtype != torch.long:
            raise ValueError(f"buffers of {tuple(size.shape)} tasks; this run has {self.num_tasks}")
        if bool((size < 0).any() or (size > self.capacity).any() or (top < 0).any() or (top >= self.capacity).any()):
            raise ValueError(f"sizes or write positions outside a capacity of {self.capacity}")
        total = int(size.sum())
        for key, buffer in self.data.items():
            if tuple(state[key].shape) != (total, *buffer.shape[2:]):
                raise ValueError(f"{key} has shape {tuple(state[key].shape)}; expected {(total, *buffer.shape[2:])}")
        self.size, self.top = size.to(self.device), top.to(self.device)
        valid = torch.arange(self.capacity, device=self.device)[None, :] < self.size[:, None]
        for key, buffer in self.data.items():
            buffer[valid] = state[key].to(self.device, buffer.dtype)


def save_buffers(path: Path, buffers: dict[str, TaskBuffers]) -> None:
    """Every buffer's :meth:`TaskBuffers.state` in one file, written atomically (tensors only, so it
    loads with ``weights_only=True``)."""
    payload = {name: b.state() for name, b in buffers.items()}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load_buffers(path: Path, buffers: dict[str, TaskBuffers]) -> None:
    """Restore :func:`save_buffers`' file into ``buffers``; a missing or unusable file is one line."""
    if not path.is_file():
        raise CheckpointError(
            f"replay buffers {str(path)!r} do not exist, so this PEARL run cannot continue exactly from its "
            "checkpoint (they are saved beside each checkpoint; copied without them?)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        for name, buffer in buffers.items():
            buffer.load(payload[name])
    except Exception as exc:  # torch raises many kinds for damaged files
        raise CheckpointError(
            f"replay buffers {str(path)!r} are damaged or do not fit this run ({first_line(exc)})"
        ) from None
