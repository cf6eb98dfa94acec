"""Checks a task distribution against the contract on first use, so a broken user env fails
with one line naming the env, the step and the problem instead of deep inside training."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from .base import TaskDistribution, TaskDistributionError

_VALIDATED: set[tuple[str, str]] = set()


def _fail(name: str, where: str, problem: str) -> None:
    raise TaskDistributionError(f"env {name!r} broke the task-distribution contract at {where}: {problem}")


def _check_tensor(name: str, where: str, what: str, x: object, shape: tuple[int, ...]) -> None:
    if not isinstance(x, torch.Tensor):
        _fail(name, where, f"{what} is a {type(x).__name__}; expected a torch.Tensor")
    if tuple(x.shape) != shape:
        _fail(name, where, f"{what} has shape {tuple(x.shape)}; expected {shape}")
    if x.dtype != torch.bool and not torch.isfinite(x).all():
        _fail(name, where, f"{what} has non-finite values")


def validate(dist: TaskDistribution, num_envs: int = 4, steps: int = 10, seed: int = 0) -> None:
    """Sample tasks, reset and step a small batch; raise ``TaskDistributionError`` on any breach."""
    name = getattr(dist, "name", type(dist).__name__)
    key = (name, repr(dist.settings()))
    if key in _VALIDATED:
        return
    rng = np.random.default_rng(seed)
    tasks = dist.sample_tasks(rng, 2)
    n_names = len(dist.task_names)
    if not isinstance(tasks, np.ndarray) or tasks.shape != (2, n_names):
        got = getattr(tasks, "shape", type(tasks).__name__)
        _fail(name, "sample_tasks", f"returned {got}; expected an array of shape (2, {n_names})")
    if not np.isfinite(tasks).all():
        _fail(name, "sample_tasks", "returned non-finite task parameters")
    obs_dim = int(np.prod(dist.observation_space.shape))
    discrete = isinstance(dist.action_space, gym.spaces.Discrete)
    env = dist.make_vec_env(num_envs, torch.device("cpu"))
    try:
        rows = np.repeat(tasks, num_envs // 2, axis=0)
        obs = env.reset(rows, rng)
        _check_tensor(name, "reset", "observation", obs, (num_envs, obs_dim))
        if obs.dtype != torch.float32:
            _fail(name, "reset", f"observation dtype is {obs.dtype}; expected torch.float32")
        dist.action_space.seed(seed)
        differ = False
        for t in range(steps):
            one = np.asarray(dist.action_space.sample())
            actions = torch.as_tensor(np.repeat(one[None], num_envs, axis=0))  # same actions for every task
            obs, reward, terminated = env.step(actions.float() if not discrete else actions.long())
            where = f"step {t}"
            _check_tensor(name, where, "observation", obs, (num_envs, obs_dim))
            _check_tensor(name, where, "reward", reward, (num_envs,))
            _check_tensor(name, where, "terminated", terminated, (num_envs,))
            if terminated.dtype != torch.bool:
                _fail(name, where, f"terminated dtype is {terminated.dtype}; expected torch.bool")
            half = num_envs // 2
            differ |= not torch.allclose(reward[:half], reward[half:]) or not torch.allclose(obs[:half], obs[half:])
        if not differ and not np.allclose(tasks[0], tasks[1]):
            _fail(
                name,
                f"steps 0-{steps - 1}",
                "two different tasks gave identical observations and rewards (does reset()/set_task apply the task?)",
            )
    finally:
        env.close()
    _VALIDATED.add(key)
