"""Any task distribution with the task parameters appended to the observation.

The "oracle" baseline: a policy that is told the task needs no adaptation, so its return is an
upper line for what adapting a policy from experience can reach.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from .base import BatchedEnv, TaskDistribution, TaskDistributionError, make


class _TaskInObservationEnv(BatchedEnv):
    def __init__(self, inner: BatchedEnv):
        self.inner, self.num_envs, self.device = inner, inner.num_envs, inner.device
        self._tasks: torch.Tensor | None = None

    @property
    def success(self) -> torch.Tensor | None:  # type: ignore[override]
        return self.inner.success

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        obs = self.inner.reset(tasks, rng)
        self._tasks = torch.as_tensor(np.asarray(tasks), dtype=obs.dtype, device=obs.device)
        return torch.cat([obs, self._tasks], dim=-1)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs, reward, terminated = self.inner.step(actions)
        return torch.cat([obs, self._tasks], dim=-1), reward, terminated

    def close(self) -> None:
        self.inner.close()


@dataclasses.dataclass
class TaskInObservation(TaskDistribution):
    """``base``'s tasks, with each task's parameter row appended to every observation."""

    name: ClassVar[str] = "task_in_observation"
    base: str = "halfcheetah_vel"
    """The registered task distribution to wrap."""
    base_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Settings of the wrapped distribution."""

    def __post_init__(self) -> None:
        if not isinstance(self.base_settings, dict):
            raise TaskDistributionError(f"env setting base_settings={self.base_settings!r} must be a mapping")
        self._base = make(self.base, **self.base_settings)
        self.horizon = self._base.horizon  # the wrapped distribution's horizon, always

    @property
    def task_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return self._base.task_names

    @property
    def observation_space(self) -> gym.spaces.Box:
        space, k = self._base.observation_space, len(self._base.task_names)
        low = np.concatenate([space.low.reshape(-1), np.full(k, -np.inf)]).astype(space.dtype)
        high = np.concatenate([space.high.reshape(-1), np.full(k, np.inf)]).astype(space.dtype)
        return gym.spaces.Box(low, high, dtype=space.dtype)

    @property
    def action_space(self) -> gym.spaces.Space:
        return self._base.action_space

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        return self._base.sample_tasks(rng, num_tasks)

    def make_vec_env(self, num_envs: int, device: torch.device) -> BatchedEnv:
        return _TaskInObservationEnv(self._base.make_vec_env(num_envs, device))

    def settings(self) -> dict[str, Any]:
        return {"base": self.base, "base_settings": self._base.settings()}

    def validate_settings(self) -> None:
        self._base.validate_settings()
