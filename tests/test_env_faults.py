"""Every broken plug-in env ends in one line naming the env, the step, the simulation and its task.

Issue 14's table, row by row, for Gymnasium envs (through ``GymTaskDistribution``) and batched
envs, at the validator and past it (in the sampler), plus ``set_task`` on wrappers, the identical-
task check, unsupported spaces and ``SingleTaskEnv``.
"""

from __future__ import annotations

import dataclasses

import caml_rl.envs as envs
import gymnasium as gym
import numpy as np
import pytest
import torch

from caml_rl import Trainer, load_config
from caml_rl.cli import main
from caml_rl.config import PolicyConfig
from caml_rl.partition import initial_fast_weights, resolve_partition
from caml_rl.policies import make_policy
from caml_rl.sampler import Sampler

TINY = [
    "meta_batch_size=4",
    "episodes_per_task=2",
    "policy.hidden_sizes=[8]",
    "device=cpu",
    "iterations=1",
    "evaluation.tasks=2",
    "evaluation.episodes=2",
    "evaluation.steps=1",
]


class Faulty(gym.Env):
    """A point on a line; at step ``at`` every sim whose goal is > 0 returns the fault."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, fault: str = "none", at: int = 0):
        self.fault, self.at = fault, at
        self.goal, self.x, self.t = 0.0, 0.0, 0
        self.received: list[float] = []

    def set_task(self, task):
        self.goal = float(task[0])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0.0, 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        t, self.t = self.t, self.t + 1
        self.received.append(float(action[0]))
        self.x += float(action[0])
        obs, reward, terminated = np.array([self.x], np.float32), -abs(self.x - self.goal), False
        if t == self.at and self.goal > 0:
            if self.fault == "raises":
                raise ValueError("boom")
            obs, reward, terminated = {
                "reward_shape2": (obs, np.array([reward, reward]), terminated),
                "reward_shape1": (obs, np.array([reward]), terminated),
                "reward_str": (obs, "minus one", terminated),
                "obs_shape": (np.zeros(3, np.float32), reward, terminated),
                "obs_nan": (np.array([np.nan], np.float32), reward, terminated),
                "terminated_array": (obs, reward, np.array([False, True])),
            }.get(self.fault, (obs, reward, terminated))
        return obs, reward, terminated, False, {}


@dataclasses.dataclass
class FaultyTasks(envs.GymTaskDistribution):
    name = "faulty"
    task_names = ("goal",)
    horizon: int = 20
    fault: str = "none"
    at: int = 0

    def make_env(self):
        return Faulty(self.fault, self.at)

    def sample_tasks(self, rng, num_tasks):  # fixed rows, so messages are exact: [-1, ..., 1]
        return np.linspace(-1.0, 1.0, num_tasks)[:, None]


class _FaultyVec(envs.BatchedEnv):
    """Navigation's batched env with a fault injected at step ``at``."""

    def __init__(self, inner: envs.BatchedEnv, fault: str, at: int):
        self.inner, self.fault, self.at = inner, fault, at
        self.num_envs, self.device, self.t = inner.num_envs, inner.device, 0

    def reset(self, tasks, rng):
        self.t = 0
        return self.inner.reset(tasks, rng)

    def step(self, actions):
        if self.fault == "nan_obs_then_strict" and not torch.isfinite(actions).all():
            raise ValueError("got a non-finite action")
        t, self.t = self.t, self.t + 1
        obs, reward, terminated = self.inner.step(actions)
        if t == self.at:
            if self.fault == "raises":
                raise RuntimeError("boom")
            if self.fault == "float64_obs":
                obs = obs.double()
            if self.fault == "nan_reward":
                reward[5] = float("nan")
            if self.fault == "nan_obs_then_strict":
                obs[5, 1] = float("inf")
        return obs, reward, terminated


@dataclasses.dataclass
class BatchedFaulty(envs.Navigation2D):
    name = "batched_faulty"
    horizon: int = 20
    fault: str = "none"
    at: int = 0

    def sample_tasks(self, rng, num_tasks):
        return np.stack([np.linspace(-0.5, 0.5, num_tasks), np.zeros(num_tasks)], 1)

    def make_vec_env(self, num_envs, device):
        return _FaultyVec(super().make_vec_env(num_envs, device), self.fault, self.at)


envs.register("faulty", FaultyTasks, overwrite=True)
envs.register("batched_faulty", BatchedFaulty, overwrite=True)


def sample(dist, num_tasks=4, episodes=2, init_std=1.0):
    """One rollout of a fresh policy through the sampler, as training and evaluation run it."""
    torch.manual_seed(0)
    policy = make_policy(PolicyConfig(hidden_sizes=[8], init_std=init_std), dist.observation_space, dist.action_space)
    sampler = Sampler(dist, num_tasks, episodes, torch.device("cpu"))
    fast = initial_fast_weights(policy, resolve_partition(policy, "context"), num_tasks)
    tasks = dist.sample_tasks(np.random.default_rng(0), num_tasks)
    try:
        return sampler, sampler.sample(policy, tasks, fast, np.random.default_rng(0), torch.Generator().manual_seed(0))
    finally:
        sampler.close()


def flags(*overrides: str) -> list[str]:
    return [x for kv in [*TINY, *overrides] for x in ("--set", kv)]


def error_of(fn, *args, **kwargs) -> envs.TaskDistributionError:
    with pytest.raises(envs.TaskDistributionError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


# --------------------------------------------------------------- gym envs, at the validator
VALIDATOR = "env 'faulty' broke the task-distribution contract at step 0, sim 2 (task row 1: goal=1): "


@pytest.mark.parametrize(
    "fault, problem",
    [
        ("reward_shape2", "reward has shape (2,); expected a number"),
        ("reward_shape1", "reward has shape (1,); expected a number"),
        ("reward_str", "reward is a str ('minus one'); expected a number"),
        ("obs_shape", "observation has shape (3,); expected (1,) (the observation space's)"),
        ("obs_nan", "observation is not finite (observation[0]=nan)"),
        ("terminated_array", "terminated has shape (2,); expected a bool"),
    ],
)
def test_gym_env_breaches_name_env_step_sim_and_task(fault, problem):
    assert str(error_of(envs.validate, FaultyTasks(fault=fault))) == VALIDATOR + problem


def test_gym_env_exception_is_one_line_with_the_original_as_cause():
    exc = error_of(envs.validate, FaultyTasks(fault="raises"))
    assert (
        str(exc) == "env 'faulty' failed at step 0, sim 2 (task row 1: goal=1): Faulty.step() raised ValueError: boom"
    )
    assert isinstance(exc.__cause__, ValueError) and str(exc.__cause__) == "boom"


def test_validator_fault_from_the_cli_is_one_line_and_writes_no_run(tmp_path, capsys):
    out = tmp_path / "run"
    sets = flags("env.name=faulty", "env.settings.fault=reward_str")
    with pytest.raises(SystemExit) as info:
        main(["train", *sets, "--out", str(out)])
    assert info.value.code == 2
    assert (
        capsys.readouterr().err == "caml-rl: error: " + VALIDATOR + "reward is a str ('minus one'); expected a number\n"
    )
    assert not out.exists()


# --------------------------------------------------------------- gym envs, past the validator
PAST = "env 'faulty' {verb} at step 12, sim 4 (task row 2: goal=0.3333): {problem}"


def test_nan_observation_after_the_validator_stops_training_in_one_line(tmp_path, capsys):
    sets = flags("env.name=faulty", "env.settings.fault=obs_nan", "env.settings.at=12")
    with pytest.raises(SystemExit) as info:
        main(["train", *sets, "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    problem = "observation is not finite (observation[0]=nan)"
    message = PAST.format(verb="broke the task-distribution contract", problem=problem)
    assert capsys.readouterr().err == f"caml-rl: error: {message}\n"


def test_exception_mid_episode_names_step_sim_and_task_and_debug_shows_the_traceback(tmp_path, capsys):
    config = load_config(None, [*TINY, "env.name=faulty", "env.settings.fault=raises", "env.settings.at=12"])
    exc = error_of(Trainer(config, tmp_path / "api").train, quiet=True)
    assert str(exc) == PAST.format(verb="failed", problem="Faulty.step() raised ValueError: boom")
    assert isinstance(exc.__cause__, ValueError)
    sets = flags("env.name=faulty", "env.settings.fault=raises", "env.settings.at=12")
    with pytest.raises(SystemExit):
        main(["train", *sets, "--out", str(tmp_path / "cli"), "--debug"])
    err = capsys.readouterr().err
    assert "Traceback" in err and 'raise ValueError("boom")' in err
    assert err.splitlines()[-1] == "caml-rl: error: " + str(exc)


# --------------------------------------------------------------- batched envs
def test_batched_env_float64_observation_from_step_only():
    message = (
        "env 'batched_faulty' broke the task-distribution contract at step {t}: "
        "observation dtype is torch.float64; expected torch.float32"
    )
    assert str(error_of(envs.validate, BatchedFaulty(fault="float64_obs", at=0))) == message.format(t=0)
    assert str(error_of(sample, BatchedFaulty(fault="float64_obs", at=12))) == message.format(t=12)


def test_batched_env_non_finite_reward_past_the_validator_names_the_sim():
    exc = error_of(sample, BatchedFaulty(fault="nan_reward", at=12))
    assert str(exc) == (
        "env 'batched_faulty' broke the task-distribution contract at step 12, sim 5 "
        "(task row 2: goal_x=0.1667, goal_y=0): reward is not finite (reward=nan)"
    )


def test_the_first_non_finite_value_is_blamed_not_the_env_that_chokes_on_it():
    exc = error_of(sample, BatchedFaulty(fault="nan_obs_then_strict", at=3))
    assert str(exc) == (
        "env 'batched_faulty' broke the task-distribution contract at step 3, sim 5 "
        "(task row 2: goal_x=0.1667, goal_y=0): observation is not finite (observation[1]=inf)"
    )
    assert "non-finite action" in str(exc.__context__)


def test_batched_env_exception_names_env_step_and_batch():
    exc = error_of(sample, BatchedFaulty(fault="raises", at=3))
    assert str(exc) == (
        "env 'batched_faulty' failed at step 3 (a batch of 4 tasks x 2 episodes): "
        "_FaultyVec.step() raised RuntimeError: boom"
    )
    assert isinstance(exc.__cause__, RuntimeError)


def test_single_task_env_checks_every_step_too():
    env = envs.SingleTaskEnv(BatchedFaulty(fault="float64_obs", at=2), task=[0.2, 0.0])
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    env.step(np.zeros(2, np.float32))
    exc = error_of(env.step, np.zeros(2, np.float32))
    assert str(exc).endswith("at step 2: observation dtype is torch.float64; expected torch.float32")


# --------------------------------------------------------------- the identical-task check
class _EndsAt(Faulty):
    """The task only sets when the episode ends."""

    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        return obs, -1.0, self.t >= 2 + 3 * (self.goal > 0), truncated, info


@dataclasses.dataclass
class _EndsAtTasks(FaultyTasks):
    name = "ends_at"
    ignore_task: bool = False

    def make_env(self):
        env = _EndsAt() if not self.ignore_task else Faulty()
        if self.ignore_task:
            env.set_task = lambda task: None
        return env


def test_tasks_that_differ_only_in_termination_are_accepted():
    envs.validate(_EndsAtTasks())


def test_tasks_that_change_nothing_get_the_set_task_hint_for_a_gym_env():
    exc = error_of(envs.validate, _EndsAtTasks(ignore_task=True))
    assert str(exc) == (
        "env 'ends_at' broke the task-distribution contract at steps 0-9: two different tasks gave identical "
        "observations, rewards and terminations with the same actions (does set_task(task) change the env? "
        "caml-rl calls it before each reset)"
    )


# --------------------------------------------------------------- set_task on wrappers, spaces
class _TaskWrapper(gym.Wrapper):
    def set_task(self, task):
        self.env.unwrapped.goal = float(task[0])


class _NoTask(Faulty):
    set_task = None


@dataclasses.dataclass
class _Wrapped(FaultyTasks):
    name = "wrapped"
    inner_has_set_task: bool = True

    def make_env(self):
        if self.inner_has_set_task:
            return _TaskWrapper(gym.wrappers.TimeLimit(_NoTask(), 50))
        return gym.wrappers.TimeLimit(_NoTask(), 50)


def test_set_task_is_found_on_a_wrapper():
    envs.validate(_Wrapped())
    _, episodes = sample(_Wrapped())
    assert episodes.rewards.shape == (20, 4, 2)


def test_missing_set_task_names_the_whole_wrapper_chain():
    exc = error_of(envs.validate, _Wrapped(inner_has_set_task=False))
    assert str(exc) == (
        "env 'wrapped': TimeLimit > _NoTask has no set_task(task) method "
        "(define it on the env or on a wrapper around it)"
    )


@dataclasses.dataclass
class _MultiDiscrete(FaultyTasks):
    name = "multi_discrete"

    @property
    def action_space(self):
        return gym.spaces.MultiDiscrete([2, 2])


def test_unsupported_action_space_is_one_line():
    assert str(error_of(envs.validate, _MultiDiscrete())) == (
        "env 'multi_discrete' broke the task-distribution contract at action_space: MultiDiscrete([2 2]) is not "
        "supported; expected a gymnasium.spaces.Box or Discrete"
    )


def test_non_finite_actions_from_a_diverged_inner_step_blame_the_policy_not_the_env(tmp_path, capsys):
    """It said navigation2d 'broke the task-distribution contract'."""
    sets = ["iterations=1", "meta_batch_size=2", "episodes_per_task=2", "env.settings.horizon=5", "device=cpu"]
    argv = ["train", *[a for s in sets for a in ("--set", s)], "--set", "adaptation.inner_lr=1e308"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "the policy produced non-finite actions at step 0" in err, err
    assert "lower adaptation.inner_lr" in err and "contract" not in err
    assert not (tmp_path / "run").exists()
