"""2D navigation (Finn et al. 2017): a point walks from the origin to a hidden goal.

Pure torch, so the whole batch steps on the policy's device with no host round-trip.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import torch

from .base import BatchedEnv, TaskDistribution, TaskDistributionError


@dataclasses.dataclass
class Navigation2D(TaskDistribution):
    """Goal ~ U[goal_low, goal_high]^2; reward = -distance to goal; ends within ``goal_radius``."""

    name = "navigation2d"
    task_names = ("goal_x", "goal_y")

    horizon: int = 100
    goal_low: float = -0.5
    goal_high: float = 0.5
    max_action: float = 0.1
    goal_radius: float = 0.01

    @property
    def observation_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)

    @property
    def action_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-self.max_action, self.max_action, shape=(2,), dtype=np.float32)

    def validate_settings(self) -> None:
        super().validate_settings()
        if not self.goal_low < self.goal_high:
            raise TaskDistributionError(
                f"env settings goal_low={self.goal_low} and goal_high={self.goal_high}: need goal_low < goal_high"
            )
        for key in ("max_action", "goal_radius"):
            if not getattr(self, key) > 0:
                raise TaskDistributionError(f"env setting {key}={getattr(self, key)!r} must be > 0")

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        return rng.uniform(self.goal_low, self.goal_high, size=(num_tasks, 2))

    def make_vec_env(self, num_envs: int, device: torch.device) -> BatchedEnv:
        return NavigationVecEnv(self, num_envs, device)


class NavigationVecEnv(BatchedEnv):
    def __init__(self, dist: Navigation2D, num_envs: int, device: torch.device):
        self.dist, self.num_envs, self.device = dist, num_envs, torch.device(device)
        self.pos = torch.zeros(num_envs, 2, device=self.device)
        self.goal = torch.zeros(num_envs, 2, device=self.device)

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        self.goal = torch.as_tensor(tasks, dtype=torch.float32, device=self.device).reshape(self.num_envs, 2)
        self.pos = torch.zeros(self.num_envs, 2, device=self.device)
        return self.pos.clone()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = actions.to(self.device, torch.float32).clamp(-self.dist.max_action, self.dist.max_action)
        self.pos = self.pos + a
        distance = torch.linalg.vector_norm(self.pos - self.goal, dim=-1)
        return self.pos.clone(), -distance, distance < self.dist.goal_radius
