"""The batch of episodes one sampling pass produces, and the return/advantage maths over it.

Layout: time first, then tasks, then episodes: ``obs [T, tasks, episodes, obs_dim]``. ``mask``
is 1 for steps that happened and 0 after an episode ended; masked entries are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Episodes:
    obs: torch.Tensor  # [T, tasks, episodes, obs_dim]
    actions: torch.Tensor  # [T, tasks, episodes, act_dim] (or [T, tasks, episodes] if discrete)
    rewards: torch.Tensor  # [T, tasks, episodes]
    mask: torch.Tensor  # [T, tasks, episodes], float
    success: torch.Tensor | None = None  # [tasks, episodes] bool, for envs that report success

    @property
    def num_tasks(self) -> int:
        return self.rewards.shape[1]

    @property
    def num_steps(self) -> int:
        """Env steps actually taken (masked steps excluded)."""
        return int(self.mask.sum().item())

    def episode_returns(self) -> torch.Tensor:
        """Undiscounted return of each episode, ``[tasks, episodes]``."""
        return (self.rewards * self.mask).sum(0)

    def task_returns(self) -> torch.Tensor:
        """Mean episode return of each task, ``[tasks]``."""
        return self.episode_returns().mean(-1)

    def task_success(self) -> torch.Tensor | None:
        """Fraction of each task's episodes that succeeded, ``[tasks]`` (None if not reported)."""
        return None if self.success is None else self.success.float().mean(-1)


def select_tasks(ep: Episodes, idx: torch.Tensor) -> Episodes:
    """The episodes of tasks ``idx`` (the task dimension is 1)."""
    success = ep.success[idx] if ep.success is not None else None
    return Episodes(ep.obs[:, idx], ep.actions[:, idx], ep.rewards[:, idx], ep.mask[:, idx], success)


def discount_matrix(length: int, factor: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``M[t, s] = factor**(s - t)`` for ``s >= t``: discounted sums become one matmul over time."""
    idx = torch.arange(length, device=device, dtype=dtype)
    power = idx[None, :] - idx[:, None]
    return torch.where(power >= 0, factor ** power.clamp(min=0), torch.zeros((), device=device, dtype=dtype))


def discounted_sum(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``y_t = sum_{s>=t} factor^(s-t) x_s`` along dim 0, for ``x [T, ...]``."""
    m = discount_matrix(x.shape[0], factor, x.device, x.dtype)
    return (m @ x.reshape(x.shape[0], -1)).reshape(x.shape)


def discounted_returns(episodes: Episodes, gamma: float) -> torch.Tensor:
    """Reward-to-go ``[T, tasks, episodes]`` (zero on masked steps)."""
    return discounted_sum(episodes.rewards * episodes.mask, gamma) * episodes.mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimation over ``[T, ...]`` tensors; the value after the last
    valid step (episode end or horizon) is taken as zero."""
    values = values * mask
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
    deltas = (rewards + gamma * next_values - values) * mask
    return discounted_sum(deltas, gamma * lam) * mask


def normalize_per_task(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit std over each task's valid steps (task dim = 1)."""
    count = mask.sum((0, 2), keepdim=True).clamp(min=1)
    mean = (advantages * mask).sum((0, 2), keepdim=True) / count
    var = (((advantages - mean) * mask) ** 2).sum((0, 2), keepdim=True) / count
    return (advantages - mean) / (var.sqrt() + eps) * mask
