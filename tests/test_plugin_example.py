"""Runs the README's "Add your own task distribution" example exactly as printed."""

import re
from pathlib import Path

import caml_rl.envs as envs
import numpy as np
import pytest
import torch

from caml_rl import Trainer, load_config

README = Path(__file__).parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- plug-in example.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its plug-in example"
    return match.group(1)


def test_example_is_short_and_trains(tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) < 60
    namespace: dict = {}
    envs.base._REGISTRY.pop("point_goals", None)
    exec(compile(code, "README-example", "exec"), namespace)
    cfg = load_config(
        None,
        [
            "env.name=point_goals",
            "iterations=3",
            "meta_batch_size=4",
            "episodes_per_task=4",
            "policy.hidden_sizes=[16]",
            "device=cpu",
            "evaluation.tasks=4",
            "evaluation.episodes=2",
            "evaluation.steps=1",
        ],
    )
    result = Trainer(cfg, tmp_path / "run").train(quiet=True)
    assert np.isfinite(result.returns).all() and result.env == "point_goals"


class _BadRewardShape(envs.TaskDistribution):
    name = "bad_reward"
    task_names = ("goal",)

    @property
    def observation_space(self):
        return envs.make("navigation2d").observation_space

    @property
    def action_space(self):
        return envs.make("navigation2d").action_space

    def sample_tasks(self, rng, num_tasks):
        return rng.uniform(size=(num_tasks, 1))

    def make_vec_env(self, num_envs, device):
        inner = envs.make("navigation2d").make_vec_env(num_envs, device)

        class Broken(envs.BatchedEnv):
            def reset(self, tasks, rng):
                return inner.reset(np.repeat(tasks, 2, axis=1), rng)

            def step(self, actions):
                obs, reward, done = inner.step(actions)
                return obs, reward[:, None], done

        return Broken()


def test_validator_names_env_step_and_problem():
    with pytest.raises(envs.TaskDistributionError, match=r"'bad_reward'.*step 0: reward has shape \(4, 1\)"):
        envs.validate(_BadRewardShape())


def test_validator_catches_tasks_that_change_nothing():
    class Ignored(envs.Navigation2D):
        name = "ignores_task"

        def make_vec_env(self, num_envs, device):
            env = super().make_vec_env(num_envs, device)
            reset = env.reset
            env.reset = lambda tasks, rng: reset(np.zeros_like(tasks), rng)
            return env

    with pytest.raises(envs.TaskDistributionError, match="identical observations and rewards"):
        envs.validate(Ignored())


def test_module_class_names_import_user_code():
    dist = envs.make("caml_rl.envs.navigation:Navigation2D", horizon=7)
    assert dist.horizon == 7
    with pytest.raises(envs.TaskDistributionError, match="could not be imported"):
        envs.make("no_such_module:Thing")
    assert torch.is_tensor(dist.make_vec_env(1, torch.device("cpu")).reset(np.zeros((1, 2)), None))


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    small = str(
        ["iterations=2", "meta_batch_size=3", "episodes_per_task=2", "evaluation.tasks=3", "evaluation.episodes=2"]
    )
    assert '["iterations=100"]' in code
    code = code.replace('["iterations=100"]', small)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments" / "configs").mkdir(parents=True)
    source = README.parent / "experiments" / "configs" / "navigation_caml.yaml"
    (tmp_path / "experiments" / "configs" / "navigation_caml.yaml").write_text(source.read_text())
    namespace: dict = {}
    exec(compile(code, "README-api", "exec"), namespace)
    assert namespace["action"].shape == (2,)
    assert tuple(namespace["adapted"].context.shape) == (1, 5)
