"""Any Gymnasium env with a ``set_task(task)`` hook as a task distribution.

Stepped through Gymnasium's synchronous vector API: one Python-level ``step`` per env per time
step, so it is much slower than a batched env (a few thousand steps/s instead of ~100k for the
built-in MuJoCo tasks). Use it to get a new env working; write a ``BatchedEnv`` when speed matters.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod

import gymnasium as gym
import numpy as np
import torch

from .base import BatchedEnv, TaskDistribution, TaskDistributionError


@dataclasses.dataclass
class GymTaskDistribution(TaskDistribution):
    """Subclass it: set ``name`` and ``task_names``, implement ``make_env`` and ``sample_tasks``.

    ``make_env()`` returns a fresh env whose unwrapped instance has ``set_task(task_row)``;
    the adapter calls it on every env before each batch of episodes.
    """

    @abstractmethod
    def make_env(self) -> gym.Env:
        """A fresh single env (with a ``set_task`` method)."""

    @property
    def _probe(self) -> gym.Env:
        if not hasattr(self, "_probe_env"):
            object.__setattr__(self, "_probe_env", self.make_env())
        return self._probe_env

    @property
    def observation_space(self) -> gym.spaces.Box:
        return self._probe.observation_space

    @property
    def action_space(self) -> gym.spaces.Space:
        return self._probe.action_space

    def make_vec_env(self, num_envs: int, device: torch.device) -> BatchedEnv:
        if not callable(getattr(self._probe.unwrapped, "set_task", None)):
            raise TaskDistributionError(
                f"env {self.name!r}: {type(self._probe.unwrapped).__name__} has no set_task(task) method"
            )
        return GymVecEnv(self, num_envs, device)


class GymVecEnv(BatchedEnv):
    def __init__(self, dist: GymTaskDistribution, num_envs: int, device: torch.device):
        self.num_envs, self.device = num_envs, torch.device(device)
        self.vec = gym.vector.SyncVectorEnv([dist.make_env for _ in range(num_envs)])
        self.discrete = isinstance(dist.action_space, gym.spaces.Discrete)

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        for env, task in zip(self.vec.envs, tasks):  # once per batch of episodes, not per step
            env.unwrapped.set_task(task)
        obs, _ = self.vec.reset(seed=int(rng.integers(2**31)))
        self.success = None
        return torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        act = actions.detach().cpu().numpy()
        obs, reward, terminated, truncated, info = self.vec.step(act)
        if "success" in info:  # e.g. Meta-World: logged as success rates beside the return
            self.success = torch.as_tensor(np.asarray(info["success"], dtype=bool), device=self.device)
        return (
            torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device),
            torch.as_tensor(np.asarray(reward, dtype=np.float32), device=self.device),
            torch.as_tensor(np.logical_or(terminated, truncated), device=self.device),
        )

    def close(self) -> None:
        self.vec.close()
