"""envs.TaskVecEnv: a task distribution as one SB3 VecEnv (SB3's own checks, auto-reset, tasks, seeding, PPO)."""

import importlib.util
import json
import re
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from caml_rl.envs import TaskVecEnv
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecCheckNan, VecEnv, VecMonitor, VecNormalize
from toy_envs import EndingLineGoals

from caml_rl import envs

ROOT = Path(__file__).parents[1]


def nav(horizon=5):
    return envs.make("navigation2d", horizon=horizon)


class OneEnv(gym.Env):
    """Env 0 of a one-env TaskVecEnv as a plain gymnasium env, so SB3's check_env can inspect the view."""

    def __init__(self, view: TaskVecEnv):
        self.view, self.observation_space, self.action_space = view, view.observation_space, view.action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.view.seed(seed)
        return self.view.reset()[0], {}

    def step(self, action):
        obs, reward, done, info = self.view.step(np.asarray(action)[None])
        truncated = bool(info[0]["TimeLimit.truncated"])
        obs = info[0]["terminal_observation"] if done[0] else obs[0]
        return obs, float(reward[0]), bool(done[0]) and not truncated, truncated, {}


def test_sb3_check_env_and_wrappers_accept_the_view():
    view = TaskVecEnv(nav(), [[0.3, -0.2]], seed=0)
    assert isinstance(view, VecEnv) and view.num_envs == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "use a [-1, 1] Box": navigation's actions are +-0.1
        check_env(OneEnv(view))
    cheetah = TaskVecEnv("halfcheetah_vel", [[1.0]], seed=0)
    check_env(OneEnv(cheetah))
    # SB3's NaN/inf check, reward/observation normalisation and episode monitor wrap the view unchanged
    wrapped = VecMonitor(VecNormalize(VecCheckNan(TaskVecEnv(nav(), [[0.3, -0.2], [0.1, -0.1]]), raise_exception=True)))
    wrapped.reset()
    for _ in range(5):
        obs, reward, done, info = wrapped.step(np.full((2, 2), 0.05, np.float32))
    assert done.all() and [i["episode"]["l"] for i in info] == [5, 5]


@pytest.mark.parametrize("name", ["navigation2d", "halfcheetah_vel"])
def test_shapes_and_dtypes_are_sb3s(name):
    dist = envs.make(name)
    view = TaskVecEnv(dist, dist.sample_tasks(np.random.default_rng(0), 3), seed=1)
    obs = view.reset()
    obs_dim = dist.observation_space.shape[0]
    assert obs.shape == (3, obs_dim) and obs.dtype == np.float32
    obs, reward, done, info = view.step(np.stack([dist.action_space.sample() for _ in range(3)]))
    assert obs.shape == (3, obs_dim) and obs.dtype == np.float32
    assert reward.shape == (3,) and reward.dtype == np.float32
    assert done.shape == (3,) and done.dtype == bool and not done.any()
    assert len(info) == 3 and all(i["TimeLimit.truncated"] is False for i in info)
    assert view.observation_space == dist.observation_space and view.action_space == dist.action_space


def test_first_steps_equal_single_task_env_and_the_batched_env():
    dist = nav(horizon=8)
    tasks = np.array([[0.3, -0.2], [-0.4, 0.1], [0.05, 0.25]])
    actions = np.random.default_rng(0).uniform(-0.3, 0.3, size=(8, 3, 2)).astype(np.float32)  # some beyond +-0.1
    view = TaskVecEnv(dist, tasks)
    singles = [envs.SingleTaskEnv(dist, task) for task in tasks]
    assert np.array_equal(view.reset(), np.stack([s.reset(seed=0)[0] for s in singles]))
    for t in range(8):
        obs, reward, done, info = view.step(actions[t])
        for i, single in enumerate(singles):
            o, r, terminated, truncated, _ = single.step(actions[t, i])
            assert np.array_equal(info[i].get("terminal_observation", obs[i]), o) and reward[i] == np.float32(r)
            assert done[i] == (terminated or truncated)
            assert info[i]["TimeLimit.truncated"] == (truncated and not terminated)
    assert done.all() and all(i["TimeLimit.truncated"] for i in info)  # the horizon ends every episode

    # a MuJoCo task: the view's first steps are the batched env's, reset noise included (same seed)
    cheetah = envs.make("halfcheetah_vel")
    tasks = np.array([[0.5], [1.5]])
    view, batch = TaskVecEnv(cheetah, tasks, seed=7), cheetah.make_vec_env(2, torch.device("cpu"))
    obs, ref = view.reset(), batch.reset(tasks, np.random.default_rng(7))
    assert np.array_equal(obs, ref.numpy())
    for a in np.random.default_rng(1).uniform(-1.5, 1.5, size=(5, 2, 6)).astype(np.float32):
        obs, reward, _, _ = view.step(a)
        ref, ref_reward, _ = batch.step(torch.as_tensor(a).clamp(-1, 1))
        assert np.array_equal(obs, ref.numpy()) and np.array_equal(reward, ref_reward.numpy())


def test_early_termination_auto_resets_that_env_alone_and_the_horizon_truncates_all():
    # env 0's goal is one 0.05-step away, so it terminates at every step; env 1's is far
    view = TaskVecEnv(nav(horizon=5), [[0.05, 0.0], [0.4, 0.4]], seed=0)
    assert np.array_equal(view.reset(), np.zeros((2, 2), np.float32))
    step = np.array([[0.05, 0.0], [0.05, 0.0]], np.float32)
    for t in range(1, 6):
        obs, reward, done, info = view.step(step)
        assert done[0] and info[0]["TimeLimit.truncated"] is False  # terminated, not truncated
        assert np.allclose(info[0]["terminal_observation"], [0.05, 0.0]) and np.array_equal(obs[0], [0.0, 0.0])
        assert reward[0] == 0.0  # distance 0 at the goal
        if t < 5:
            assert not done[1] and "terminal_observation" not in info[1]
            assert np.allclose(obs[1], [0.05 * t, 0.0]) and np.isclose(reward[1], -np.hypot(0.4 - 0.05 * t, 0.4))
    assert done[1] and info[1]["TimeLimit.truncated"] is True  # the horizon: truncated, bootstrapped by SB3
    assert np.allclose(info[1]["terminal_observation"], [0.25, 0.0]) and np.array_equal(obs[1], [0.0, 0.0])
    obs, _, done, _ = view.step(step)  # the next batch episode: env 1 starts again from the origin
    assert np.allclose(obs[1], [0.05, 0.0]) and not done[1]

    # a new episode started after an early end runs until the horizon, where it is cut (truncated)
    view = TaskVecEnv(nav(horizon=4), [[0.05, 0.0]])
    view.reset()
    _, _, done, info = view.step(np.array([[0.05, 0.0]], np.float32))
    assert done[0] and not info[0]["TimeLimit.truncated"]
    for t in range(2, 5):
        obs, _, done, info = view.step(np.array([[-0.1, 0.0]], np.float32))  # away from the goal
        assert bool(done[0]) == (t == 4)
    assert info[0]["TimeLimit.truncated"] and np.allclose(info[0]["terminal_observation"], [-0.3, 0.0])


def test_discrete_actions_terminations_and_a_ppo_run():
    dist = EndingLineGoals(horizon=6)
    view = TaskVecEnv(dist, [[0.2], [-0.9]], seed=0)
    view.reset()
    for t in range(1, 7):
        obs, reward, done, info = view.step(np.array([2, 1]))  # right, stay
        assert obs.dtype == np.float32 and reward.dtype == np.float32
        assert bool(done[0]) == (t in (2, 4, 6)) and bool(done[1]) == (t == 6)  # env 0 reaches 0.2 every 2 steps
    assert info[0]["TimeLimit.truncated"] is False and info[1]["TimeLimit.truncated"] is True
    model = PPO("MlpPolicy", view, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    assert model.num_timesteps == 64


def test_tasks_round_robin_set_tasks_and_a_new_task_per_episode():
    view = TaskVecEnv(nav(horizon=2), [[0.1, 0.1], [0.2, 0.2]], num_envs=5)
    view.reset()
    assert np.array_equal(view.current_tasks[:, 0], [0.1, 0.2, 0.1, 0.2, 0.1])
    view.set_tasks([[0.3, 0.3]])
    view.env_method("set_task", [-0.3, 0.0], indices=[4])
    view.step(np.zeros((5, 2), np.float32))
    assert np.array_equal(view.current_tasks[:, 0], [0.1, 0.2, 0.1, 0.2, 0.1])  # from the next episode on
    _, _, done, info = view.step(np.zeros((5, 2), np.float32))
    assert done.all() and np.array_equal(info[0]["task"], [0.1, 0.1])  # the episode that ended
    assert np.array_equal(view.current_tasks[:, 0], [0.3, 0.3, 0.3, 0.3, -0.3])
    assert np.array_equal(view.get_attr("task", indices=[4])[0], [-0.3, 0.0]) and view.get_attr("horizon") == [2] * 5

    drawn = TaskVecEnv(nav(horizon=2), num_envs=3, seed=0)  # tasks=None: a new task every episode
    drawn.reset()
    first = drawn.current_tasks
    for _ in range(2):
        drawn.step(np.zeros((3, 2), np.float32))
    assert not np.allclose(drawn.current_tasks, first) and len(np.unique(first[:, 0])) == 3
    drawn.set_task([0.2, -0.1], indices=1)  # env 1 fixed, envs 0 and 2 keep drawing
    second = drawn.current_tasks
    for _ in range(2):
        drawn.step(np.zeros((3, 2), np.float32))
    third = drawn.current_tasks
    assert np.array_equal(third[1], [0.2, -0.1]) and not np.isclose(third[[0, 2]], second[[0, 2]]).any()
    with pytest.raises(envs.TaskDistributionError, match="expected \\(k, 2\\)"):
        drawn.set_tasks([[1.0, 2.0, 3.0]])


def test_seeding_reproduces_tasks_and_resets():
    def first_obs(seed_arg=None, vec_seed=None):
        view = TaskVecEnv("halfcheetah_vel", num_envs=3, seed=seed_arg)
        if vec_seed is not None:
            view.seed(vec_seed)
        return view.reset(), view.current_tasks

    a, b, c = first_obs(seed_arg=3), first_obs(seed_arg=3), first_obs(seed_arg=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0]) and not np.allclose(a[1], c[1])
    assert all(np.array_equal(x, y) for x, y in zip(first_obs(vec_seed=3), a))  # VecEnv.seed(3) == seed=3


def test_ppo_learns_a_navigation_task():
    goal = [[0.4, -0.3]]
    dist = nav(horizon=20)
    model = PPO(
        "MlpPolicy",
        TaskVecEnv(dist, goal, num_envs=8, seed=0),
        n_steps=64,
        batch_size=128,
        n_epochs=5,
        learning_rate=1e-3,
        policy_kwargs={"net_arch": [32, 32], "log_std_init": -2.3},  # std 0.1: the action range is +-0.1
        seed=0,
        device="cpu",
    )
    evaluation = VecMonitor(TaskVecEnv(dist, goal, num_envs=4))
    before, _ = evaluate_policy(model, evaluation, n_eval_episodes=4, deterministic=True)
    model.learn(4096)
    after, _ = evaluate_policy(model, evaluation, n_eval_episodes=4, deterministic=True)
    # deterministic policy, deterministic env: no noise in either number. The untrained policy's mean
    # action is ~0, so it stays at the origin: 20 steps x distance 0.5 = -10. Walking straight to the goal
    # scores about -1; over 6 seeds this run reached -1.0 to -2.7, so -5 (half the distance-steps of
    # standing still) leaves a wide margin while a policy that did not learn stays near -10.
    assert before == pytest.approx(-10.0, abs=0.1)
    assert after > -5.0, (before, after)


def test_benchmark_script_times_both_vec_envs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench", ROOT / "experiments" / "benchmark_sb3_view.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--n-envs", "2", "--steps", "8", "--n-steps", "4", "--batch-size", "4", "--n-epochs", "1", "--repeats", "1"]
    result = bench.main([*argv, "--horizon", "3", "--out", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads(json.dumps(result))
    (row,) = result["rows"]
    assert row["n_envs"] == 2 and row["steps"] == 8 and row["horizon"] == 3
    for key in ("ppo_steps_per_cpu_s", "ppo_steps_per_wall_s", "env_steps_per_cpu_s", "env_steps_per_wall_s"):
        assert set(row[key]) == {"TaskVecEnv", "DummyVecEnv"} and min(row[key].values()) > 0
    assert "| 2 envs (4 steps x 2 envs, minibatch 4, 1 epochs, 64x64 tanh) |" in capsys.readouterr().out


def test_docs_example_runs():
    """docs/stable-baselines3.md's TaskVecEnv block, with fewer envs and steps."""
    text = (ROOT / "docs" / "stable-baselines3.md").read_text()
    code = re.search(r"## SB3 algorithms on caml-rl's task distributions\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert code.count("num_envs=200") == 2 and "n_steps=100, batch_size=1000).learn(200_000)" in code
    code = code.replace("num_envs=200", "num_envs=50")  # small and quick; 50 envs still share 40 tasks round-robin
    code = code.replace("n_steps=100, batch_size=1000).learn(200_000)", "n_steps=4, batch_size=100).learn(200)")
    namespace: dict = {}
    exec(compile(code, "docs-sb3-view", "exec"), namespace)
    env, dist = namespace["env"], namespace["dist"]
    new = dist.sample_tasks(np.random.default_rng(2), 40)
    env.reset()
    assert np.array_equal(env.current_tasks, new[np.arange(50) % 40])
