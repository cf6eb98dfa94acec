"""2D navigation with the goal in the observation: an upper bound for a method's policy on the task.

A diagnostic, not a meta-RL task (nothing is left to infer). PEARL's SAC on it, with every other
setting of ``navigation_pearl.yaml``, shows how good the policy can get when z is perfect
(experiments/README.md, "PEARL on 2D navigation"):

    caml-rl train experiments/configs/navigation_pearl.yaml --iterations 10 --out /tmp/goal_observed \
        --set env.name=experiments.navigation_goal_observed:NavigationGoalObserved
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import torch
from caml_rl.envs.navigation import Navigation2D, NavigationVecEnv


class GoalObservedVecEnv(NavigationVecEnv):
    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return torch.cat([super().reset(tasks, rng), self.goal], -1)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos, reward, done = super().step(actions)
        return torch.cat([pos, self.goal], -1), reward, done


@dataclasses.dataclass
class NavigationGoalObserved(Navigation2D):
    """Navigation2D whose observation is ``[x, y, goal_x, goal_y]``."""

    name = "navigation_goal_observed"

    @property
    def observation_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)

    def make_vec_env(self, num_envs: int, device: torch.device) -> GoalObservedVecEnv:
        return GoalObservedVecEnv(self, num_envs, device)
