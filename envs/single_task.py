"""One env of a task distribution as a plain Gymnasium env, for inspection and SB3 tools.

Above the protocol (``base``) and its checks (``validation``): it runs the distribution's own
batched env with one simulation, through the same checker and action clipping as training.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from .actions import action_clipper
from .base import TaskDistribution
from .validation import StepChecker


class SingleTaskEnv(gym.Env):
    """One env of a task distribution as a plain Gymnasium env, for inspection and SB3 tools.

    It runs the distribution's batched env with one simulation on the CPU, so it behaves
    exactly like the envs used for training: Box actions are clipped to the action space, every
    step is checked, and episodes are truncated at the distribution's ``horizon`` (so SB3's
    ``evaluate_policy`` needs no ``TimeLimit``). ``set_task`` fixes the task; otherwise each
    ``reset`` draws a new one from the reset seed.
    """

    metadata = {"render_modes": []}

    def __init__(self, distribution: TaskDistribution, task: np.ndarray | None = None):
        self.distribution = distribution
        self.observation_space = distribution.observation_space
        self.action_space = distribution.action_space
        self._vec = distribution.make_vec_env(1, torch.device("cpu"))
        self._check = StepChecker(distribution, self._vec, 1)
        self._clip = action_clipper(distribution.action_space, torch.device("cpu"))
        self._task = None if task is None else np.asarray(task, dtype=np.float64).reshape(1, -1)
        self._fixed = task is not None
        self._t = 0

    def set_task(self, task: np.ndarray) -> None:
        """Fix the task for every following episode."""
        self._task = np.asarray(task, dtype=np.float64).reshape(1, -1)
        self._fixed = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if not self._fixed or (options or {}).get("new_task"):
            self._task = self.distribution.sample_tasks(self.np_random, 1)
        self._t = 0
        obs = self._check.reset(self._task, self.np_random)
        return obs[0].numpy().astype(self.observation_space.dtype), {"task": self._task[0].copy()}

    def step(self, action):
        act = torch.as_tensor(np.asarray(action)).unsqueeze(0)
        if act.is_floating_point():
            act = self._clip(act)
        obs, reward, terminated = self._check.step(self._t, act)
        self._t += 1
        truncated = self._t >= self.distribution.horizon
        return (
            obs[0].numpy().astype(self.observation_space.dtype),
            float(reward[0]),
            bool(terminated[0]),
            truncated,
            {"task": self._task[0].copy()},
        )

    def close(self) -> None:
        self._vec.close()
