"""Meta-World task distributions (optional extra: pip install 'caml-rl[metaworld]'; see .ci/metaworld)."""

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

from caml_rl.envs.metaworld import ML1_VARIANTS, OBJ_GOAL_NAMES, MetaWorldML1, register_metaworld  # noqa: E402
from conftest import tiny_policy  # noqa: E402

from caml_rl import envs  # noqa: E402
from caml_rl.config import load_config  # noqa: E402
from caml_rl.sampler import Sampler  # noqa: E402
from caml_rl.trainer import Trainer  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_metaworld()  # idempotent; envs/__init__.py may already have called it


def steer_to_goals(tasks):
    """Actions that move the hand towards each row's goal (reach-v3: goal = columns 3:6)."""
    goals = torch.as_tensor(tasks[:, 3:6], dtype=torch.float32)

    def act(obs):
        a = torch.zeros(len(obs), 4)
        a[:, :3] = ((goals - obs[:, :3]) * 100).clamp(-1, 1)
        return a

    return act


def test_names_registered_and_shapes():
    for name in ("metaworld_ml1_reach", "metaworld_ml1_push", "metaworld_ml1_pick_place", "metaworld_ml10"):
        assert name in envs.registered()
    dist = envs.make("metaworld_ml1_reach", horizon=5)
    assert dist.horizon == 5 and envs.make("metaworld_ml1_reach").horizon == 500
    assert dist.task_names == OBJ_GOAL_NAMES
    assert dist.observation_space.shape == (39,) and dist.action_space.shape == (4,)
    tasks = dist.sample_tasks(np.random.default_rng(0), 3)
    assert tasks.shape == (3, 6) and tasks.dtype == np.float64
    env = dist.make_vec_env(6, CPU)
    try:
        obs = env.reset(np.repeat(tasks, 2, axis=0), np.random.default_rng(0))
        assert obs.shape == (6, 39) and obs.dtype == torch.float32
        for _ in range(5):
            obs, reward, done = env.step(torch.zeros(6, 4))
            assert obs.shape == (6, 39) and reward.shape == (6,) and done.dtype == torch.bool
            assert env.success is not None and env.success.shape == (6,) and env.success.dtype == torch.bool
        assert done.all()  # truncated at the horizon
    finally:
        env.close()
    envs.validate(dist)


def test_ml1_variants_are_ml1_with_another_default_env():
    for name, env_name in ML1_VARIANTS.items():
        dist = envs.make(name, horizon=5)
        assert type(dist) is MetaWorldML1 and dist.env_name == env_name and dist.settings()["env_name"] == env_name
    assert envs.make("metaworld_ml1_push", env_name="reach-v3").task_names == OBJ_GOAL_NAMES  # still a setting
    with pytest.raises(envs.TaskDistributionError, match="unknown setting env.settings.split"):
        envs.make("metaworld_ml1_push", split="test")


def test_tasks_come_from_our_generator_and_set_the_goal():
    dist = envs.make("metaworld_ml1_reach", horizon=3)
    a = dist.sample_tasks(np.random.default_rng(7), 4)
    assert np.array_equal(a, dist.sample_tasks(np.random.default_rng(7), 4))
    assert not np.allclose(a, dist.sample_tasks(np.random.default_rng(8), 4))
    assert len(np.unique(a, axis=0)) == 4
    assert all(np.linalg.norm(r[:2] - r[3:5]) >= 0.15 for r in a)  # Meta-World's own rejection rule holds
    env = dist.make_vec_env(2, CPU)
    try:
        env.reset(a[:2], np.random.default_rng(0))
        for slot, row in zip(env.envs, a[:2]):
            np.testing.assert_array_equal(slot._env._target_pos, row[3:6])
    finally:
        env.close()


def test_two_tasks_differ_and_success_reaches_the_batched_env():
    dist = envs.make("metaworld_ml1_reach", horizon=80)
    tasks = dist.sample_tasks(np.random.default_rng(1), 2)
    rows = np.concatenate([tasks, tasks])  # slots 0, 1 steer to their goal; 2, 3 stay still
    env = dist.make_vec_env(4, CPU)
    try:
        obs = env.reset(rows, np.random.default_rng(0))
        act = steer_to_goals(rows)
        succeeded = torch.zeros(4, dtype=torch.bool)
        rewards = torch.zeros(4)
        for _ in range(80):
            a = act(obs)
            a[2:] = 0
            obs, reward, _ = env.step(a)
            succeeded |= env.success
            rewards += reward
        assert succeeded.tolist() == [True, True, False, False]
        assert rewards[2] != rewards[3]  # same (zero) actions, different tasks
    finally:
        env.close()


def test_sampler_episodes_carry_success():
    dist = envs.make("metaworld_ml1_reach", horizon=10)
    policy = tiny_policy(context_size=2, obs_dim=39, act_dim=4).float()
    sampler = Sampler(dist, 2, 2, CPU)
    try:
        tasks = dist.sample_tasks(np.random.default_rng(0), 2)
        fast = {"context": torch.zeros(2, 2)}
        ep = sampler.sample(policy, tasks, fast, np.random.default_rng(0), torch.Generator().manual_seed(0))
    finally:
        sampler.close()
    assert ep.success is not None and ep.success.shape == (2, 2) and ep.success.dtype == torch.bool
    assert ep.rewards.shape == (10, 2, 2)


def test_one_training_iteration_logs_success_rates(tmp_path):
    config = load_config(
        None,
        [
            "env.name=metaworld_ml1_reach",
            "env.settings.horizon=10",
            "meta_batch_size=2",
            "episodes_per_task=2",
            "policy.hidden_sizes=[16]",
            "policy.context_size=2",
            "iterations=1",
            "device=cpu",
            "evaluation.tasks=2",
            "evaluation.episodes=1",
            "evaluation.steps=1",
        ],
    )
    trainer = Trainer(config, tmp_path / "run")
    trainer.algorithm.open()
    try:
        metrics = trainer.iterate()
    finally:
        trainer.algorithm.close()
    for key in ("success/before_adaptation", "success/after_adaptation"):  # a fraction of 2 tasks x 2 episodes
        assert 0.0 <= metrics[key] <= 1.0 and metrics[key] * 4 == round(metrics[key] * 4), metrics


def test_generic_ml1_and_bad_names():
    dist = envs.make("metaworld_ml1", env_name="door-open-v3", horizon=3)
    assert dist.task_names == ("rand_vec_0", "rand_vec_1", "rand_vec_2")
    assert dist.sample_tasks(np.random.default_rng(0), 2).shape == (2, 3)
    with pytest.raises(envs.TaskDistributionError, match="env_name='reach-v9' is not a Meta-World v3 env"):
        envs.make("metaworld_ml1", env_name="reach-v9")
    with pytest.raises(envs.TaskDistributionError, match="split='val'"):
        envs.make("metaworld_ml10", split="val")


def test_ml10_rows_pick_env_and_goal():
    dist = envs.make("metaworld_ml10", horizon=3)
    assert len(dist.env_names) == 10 and dist.env_names[0] == "reach-v3"
    tasks = dist.sample_tasks(np.random.default_rng(0), 12)
    assert tasks.shape == (12, 7)
    index = tasks[:, 0]
    assert np.array_equal(index, np.round(index)) and index.min() >= 0 and index.max() <= 9
    for row in tasks:
        size = dist.classes[int(row[0])].rand_vec_size
        assert np.all(row[1 + size :] == 0)
    env = dist.make_vec_env(2, CPU)
    try:
        rows = np.array([[0, *tasks[0, 1:]], [3, *tasks[0, 1:]]])  # reach-v3 and door-open-v3
        rows[1, 1:] = dist.classes[3].draw_rand_vec(np.random.default_rng(0)).tolist() + [0, 0, 0]
        obs = env.reset(rows, np.random.default_rng(0))
        assert obs.shape == (2, 39)
        names = [type(slot._env).__name__ for slot in env.envs]
        assert names == ["SawyerReachEnvV3", "SawyerDoorEnvV3"]
        env.reset(rows[::-1].copy(), np.random.default_rng(0))  # slots swap env classes through the pool
        assert [type(slot._env).__name__ for slot in env.envs] == names[::-1]
        env.step(torch.zeros(2, 4))
    finally:
        env.close()
    assert envs.make("metaworld_ml10", split="test").env_names[0] == "drawer-open-v3"
