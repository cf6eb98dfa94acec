"""Task distributions for the distributed tests, importable by torchrun's workers (``early_end:EarlyEnd``
with this folder on ``PYTHONPATH``).

``EarlyEnd``: 2D navigation whose first half of every meta-batch ends after one step while the second
half runs the whole horizon, so with two workers one worker's whole shard ends at once; resets are
random (the start is drawn around the origin, one row per simulation), so a worker's initial states
depend on which rows of the reset noise it gets. ``NoisyPoint``: a Gymnasium env whose ``reset``
draws its start from the seed the adapter gives it (simulation ``i`` gets ``seed + i``).
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import torch
from caml_rl.envs.navigation import Navigation2D, NavigationVecEnv

from caml_rl import envs


@dataclasses.dataclass
class EarlyEnd(Navigation2D):
    name = "early_end"
    task_names = ("goal_x", "goal_y", "quick")
    horizon: int = 15

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        goals = rng.uniform(self.goal_low, self.goal_high, size=(num_tasks, 2))
        return np.column_stack([goals, np.arange(num_tasks) < num_tasks // 2]).astype(np.float64)

    def make_vec_env(self, num_envs: int, device: torch.device) -> envs.BatchedEnv:
        return EarlyEndVecEnv(self, num_envs, device)


class EarlyEndVecEnv(NavigationVecEnv):
    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        tasks = np.asarray(tasks, dtype=np.float64).reshape(self.num_envs, 3)
        self.quick = torch.as_tensor(tasks[:, 2] > 0.5, device=self.device)
        super().reset(tasks[:, :2], rng)
        start = rng.uniform(-0.1, 0.1, size=(self.num_envs, 2))
        self.pos = torch.as_tensor(start, dtype=torch.float32, device=self.device)
        return self.pos.clone()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs, reward, reached = super().step(actions)
        return obs, reward, reached | self.quick


class NoisyPointEnv(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-0.1, 0.1, (1,), np.float32)

    def __init__(self) -> None:
        self.x, self.goal = 0.0, 0.0

    def set_task(self, task: np.ndarray) -> None:
        self.goal = float(task[0])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1.0, 1.0))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += float(np.clip(action[0], -0.1, 0.1))
        return np.array([self.x], np.float32), -abs(self.x - self.goal), False, False, {}


@dataclasses.dataclass
class NoisyPoint(envs.GymTaskDistribution):
    name = "noisy_point"
    task_names = ("goal",)
    horizon: int = 3

    def make_env(self) -> gym.Env:
        return NoisyPointEnv()

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=(num_tasks, 1))
