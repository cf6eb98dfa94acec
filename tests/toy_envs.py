"""Small task distributions shared by tests: a Discrete(3) walk towards a hidden goal on a line."""

from __future__ import annotations

import dataclasses

import caml_rl.envs as envs
import gymnasium as gym
import numpy as np


class DiscreteLine(gym.Env):
    """Move left, stay or right by 0.1 towards a hidden goal; reward -distance. With ``goal_radius``
    the episode ends within that distance of the goal, else only at the horizon."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, goal_radius: float | None = None):
        self.goal, self.x, self.goal_radius = 0.0, 0.0, goal_radius

    def set_task(self, task):
        self.goal = float(task[0])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0.0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        assert action in (0, 1, 2)
        self.x += 0.1 * (int(action) - 1)
        distance = abs(self.x - self.goal)
        ends = self.goal_radius is not None and distance < self.goal_radius
        return np.array([self.x], np.float32), -distance, ends, False, {}


@dataclasses.dataclass
class LineGoals(envs.GymTaskDistribution):
    """Goals ~ U[-1, 1]; episodes run the whole horizon."""

    name = "line_goals"
    task_names = ("goal",)
    horizon: int = 10

    def make_env(self):
        return DiscreteLine()

    def sample_tasks(self, rng, num_tasks):
        return rng.uniform(-1, 1, size=(num_tasks, 1))


@dataclasses.dataclass
class EndingLineGoals(LineGoals):
    """The same, but an episode ends within 0.05 of its goal."""

    name = "ending_line_goals"

    def make_env(self):
        return DiscreteLine(goal_radius=0.05)
