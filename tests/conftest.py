import gymnasium as gym
import numpy as np
import pytest
import torch

from caml_rl.episodes import Episodes
from caml_rl.policies import ContextMLPPolicy


def random_episodes(T=6, tasks=3, eps=4, obs_dim=2, act_dim=2, dtype=torch.float64, seed=0, ragged=True):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, tasks, eps, obs_dim, generator=g, dtype=dtype)
    actions = torch.randn(T, tasks, eps, act_dim, generator=g, dtype=dtype)
    rewards = torch.randn(T, tasks, eps, generator=g, dtype=dtype)
    mask = torch.ones(T, tasks, eps, dtype=dtype)
    if ragged:  # some episodes end early
        lengths = torch.randint(2, T + 1, (tasks, eps), generator=g)
        mask = (torch.arange(T)[:, None, None] < lengths[None]).to(dtype)
    return Episodes(obs * mask[..., None], actions * mask[..., None], rewards * mask, mask)


def tiny_policy(context_size=2, obs_dim=2, act_dim=2, hidden=(5,), seed=0, activation="tanh"):
    torch.manual_seed(seed)
    space = gym.spaces.Box(-1, 1, shape=(act_dim,), dtype=np.float32)
    return ContextMLPPolicy(obs_dim, space, hidden, activation, context_size, init_std=0.7).double()


@pytest.fixture
def episodes():
    return random_episodes()
