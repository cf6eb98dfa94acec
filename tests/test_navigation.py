import caml_rl.envs as envs
import gymnasium as gym
import numpy as np
import pytest
import torch


def test_navigation_dynamics_reward_and_termination():
    dist = envs.make("navigation2d")
    env = dist.make_vec_env(2, torch.device("cpu"))
    obs = env.reset(np.array([[0.05, 0.0], [0.3, 0.3]]), np.random.default_rng(0))
    assert torch.equal(obs, torch.zeros(2, 2))  # exact: the start is the origin
    obs, reward, done = env.step(torch.tensor([[0.05, 0.0], [1.0, -1.0]]))  # second is clipped to 0.1
    # float32 against hand values: default rtol 1.3e-6, atol 1e-5 (a few float32 ulp of O(0.1) numbers)
    torch.testing.assert_close(obs, torch.tensor([[0.05, 0.0], [0.1, -0.1]]))
    torch.testing.assert_close(reward, -torch.tensor([0.0, (0.2**2 + 0.4**2) ** 0.5]))
    assert done.tolist() == [True, False]


def test_tasks_are_uniform_in_the_configured_square():
    dist = envs.make("navigation2d", goal_low=-0.2, goal_high=0.2)
    tasks = dist.sample_tasks(np.random.default_rng(0), 1000)
    assert tasks.shape == (1000, 2) and tasks.min() >= -0.2 and tasks.max() <= 0.2
    # uniform on [-0.2, 0.2] per axis: quartiles at -0.1, 0, 0.1 (standard error of each about 0.006, so 0.025 is
    # 4 standard errors; numpy's generator draws the same numbers on every machine anyway)
    np.testing.assert_allclose(
        np.quantile(tasks, [0.25, 0.5, 0.75], axis=0), [[-0.1] * 2, [0.0] * 2, [0.1] * 2], atol=0.025
    )
    assert tasks.min() < -0.19 and tasks.max() > 0.19  # fills the whole square (P(not) = 2 * 0.975^2000 ~ 1e-21)
    assert not np.array_equal(tasks, dist.sample_tasks(np.random.default_rng(1), 1000))


def test_gymnasium_single_env():
    env = gym.make("caml/Navigation2D-v0", task=[0.2, 0.1])
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and np.allclose(info["task"], [0.2, 0.1])
    obs, reward, terminated, truncated, _ = env.step(np.array([0.1, 0.1], dtype=np.float32))
    assert reward == pytest.approx(-0.1)  # a distance in float32: ~1e-7 relative; approx allows 1e-6


def test_bad_settings_and_unknown_env():
    with pytest.raises(envs.TaskDistributionError, match="goal_low.*goal_high"):
        envs.make("navigation2d", goal_low=1.0)
    with pytest.raises(envs.TaskDistributionError, match="unknown setting env.settings.goal_radus"):
        envs.make("navigation2d", goal_radus=0.1)
    with pytest.raises(envs.TaskDistributionError, match="unknown env 'nav'; registered:"):
        envs.make("nav")
