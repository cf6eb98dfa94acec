"""Runs the docs' "Add your own task distribution" example exactly as printed (docs/task-distributions.md),
and the other examples of docs/task-distributions.md, docs/getting-started.md and docs/visualisation.md."""

import dataclasses
import re
from pathlib import Path

import caml_rl.envs as envs
import numpy as np
import pytest
import torch
from toy_envs import LineGoals

from caml_rl import Trainer, load_config, load_run

DOCS = Path(__file__).parents[1] / "docs"
PLUGIN_PAGE = DOCS / "task-distributions.md"


def docs_example(page: Path, marker: str) -> str:
    """The python block after ``<!-- docs-test: tests/test_plugin_example.py (<marker>...) -->``."""
    pattern = r"<!-- docs-test: tests/test_plugin_example\.py \(" + re.escape(marker) + r".*?-->\n```python\n(.*?)```"
    match = re.search(pattern, page.read_text(), re.S)
    assert match, f"{page.name} lost its {marker} block"
    return match.group(1)


def readme_example() -> str:
    return docs_example(PLUGIN_PAGE, "the plug-in example")


def test_example_is_short_and_trains(tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) < 60
    namespace: dict = {}
    for _ in range(2):  # as a notebook cell run twice: register(..., overwrite=True)
        exec(compile(code, "docs-example", "exec"), namespace)
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

    with pytest.raises(envs.TaskDistributionError) as info:
        envs.validate(Ignored())
    assert str(info.value) == (
        "env 'ignores_task' broke the task-distribution contract at steps 0-9: two different tasks gave identical "
        "observations, rewards and terminations with the same actions (does the batched env's reset(tasks, rng) "
        "apply the tasks?)"
    )


def test_sample_tasks_is_checked_at_every_call_not_only_by_the_validator(tmp_path, monkeypatch):
    """A distribution that always returns two tasks passed the 2-task validator, then failed in the
    sampler with a traceback ("sampler built for 3 tasks, got 2")."""

    class FixedTwo(envs.Navigation2D):
        name = "fixed_two"

        def sample_tasks(self, rng, num_tasks):
            return super().sample_tasks(rng, 2)

    monkeypatch.setattr(envs.base, "_REGISTRY", dict(envs.base._REGISTRY))
    envs.register("fixed_two", FixedTwo)
    cfg = load_config(None, ["env.name=fixed_two", "meta_batch_size=3", "episodes_per_task=2", "device=cpu"])
    with pytest.raises(
        envs.TaskDistributionError, match=r"'fixed_two'.*sample_tasks: returned \(2, 2\); expected .*\(3, 2\)"
    ):
        Trainer(cfg, tmp_path / "run").train(quiet=True)


def test_a_factory_that_builds_something_else_is_one_line(monkeypatch):
    monkeypatch.setattr(envs.base, "_REGISTRY", dict(envs.base._REGISTRY))
    envs.register("not_a_distribution", lambda **kw: 3)
    with pytest.raises(envs.TaskDistributionError, match="built a int, not a caml_rl.envs.TaskDistribution"):
        envs.make("not_a_distribution")


@pytest.mark.parametrize(
    ("field", "fragment"),
    [
        (np.float64(1.0), "setting extra=np.float64(1.0) is a float64; settings must be plain"),
        ({0: 1.0}, "setting extra has the key 0; setting keys must be strings"),
    ],
)
def test_settings_that_cannot_be_recorded_are_refused_before_the_run_starts(tmp_path, monkeypatch, field, fragment):
    """A numpy default used to fail in yaml after the first iteration; a non-string key trained,
    then the run could be neither evaluated nor resumed."""

    @dataclasses.dataclass
    class Extra(envs.Navigation2D):
        name = "extra_setting"
        extra: object = dataclasses.field(default_factory=lambda: field)

    monkeypatch.setattr(envs.base, "_REGISTRY", dict(envs.base._REGISTRY))
    envs.register("extra_setting", Extra)
    cfg = load_config(None, ["env.name=extra_setting", "meta_batch_size=2", "episodes_per_task=2", "device=cpu"])
    with pytest.raises(ValueError, match=re.escape(fragment)):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_module_class_names_import_user_code():
    dist = envs.make("caml_rl.envs.navigation:Navigation2D", horizon=7)
    assert dist.horizon == 7
    with pytest.raises(envs.TaskDistributionError, match="could not be imported"):
        envs.make("no_such_module:Thing")
    assert torch.is_tensor(dist.make_vec_env(1, torch.device("cpu")).reset(np.zeros((1, 2)), None))


def test_python_api_example_runs(tmp_path, monkeypatch):
    """docs/getting-started.md's Python API block, with fewer iterations and smaller batches."""
    code = docs_example(DOCS / "getting-started.md", "test_python_api_example_runs")
    small = str(
        ["iterations=2", "meta_batch_size=3", "episodes_per_task=2", "evaluation.tasks=3", "evaluation.episodes=2"]
    )
    assert '["iterations=100"]' in code
    code = code.replace('["iterations=100"]', small)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments" / "configs").mkdir(parents=True)
    source = DOCS.parent / "experiments" / "configs" / "navigation_caml.yaml"
    (tmp_path / "experiments" / "configs" / "navigation_caml.yaml").write_text(source.read_text())
    namespace: dict = {}
    exec(compile(code, "docs-api", "exec"), namespace)
    assert namespace["action"].shape == (2,)
    assert tuple(namespace["adapted"].context.shape) == (1, 5)


@pytest.mark.filterwarnings("ignore:Evaluation environment is not wrapped")
def test_single_task_example_runs(tmp_path, monkeypatch):
    """docs/task-distributions.md's SingleTaskEnv block: evaluate_policy on a plug-in env, the horizon applied."""
    code = docs_example(PLUGIN_PAGE, "the single-task example")
    small = str(
        ["env.name=point_goals", "iterations=1", "meta_batch_size=2", "episodes_per_task=2"]
        + ["policy.hidden_sizes=[8]", "device=cpu", "evaluation.tasks=2", "evaluation.episodes=2"]
    )
    assert '["env.name=point_goals"]' in code and "n_eval_episodes=20" in code
    code = code.replace('["env.name=point_goals"]', small).replace(
        "adapt(task=[0.5], steps=1)", "adapt(task=[0.5], steps=1, episodes=2)"
    )
    code = code.replace(".train()", ".train(quiet=True)").replace("n_eval_episodes=20", "n_eval_episodes=3")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "docs-example", "exec"), namespace)
    namespace["envs"] = envs
    exec(compile(code, "docs-single-task", "exec"), namespace)
    assert np.isfinite(namespace["mean"])
    env = namespace["env"]
    env.reset(seed=0)
    truncated = [env.step(np.zeros(1, np.float32))[3] for _ in range(30)]
    assert truncated == [False] * 29 + [True]  # horizon=30: no TimeLimit needed


def test_visualize_task_example_parses():
    """`--task` is one KEY=VALUE per flag, as docs/visualisation.md shows."""
    from caml_rl.cli import build_parser, parse_task

    text = (DOCS / "visualisation.md").read_text()
    line = re.search(r"`(caml-rl visualize \S+ --task direction=-1[^`]*)`", text).group(1)
    args = build_parser().parse_args(line.split()[1:])
    assert parse_task(args.task, ("direction",), "halfcheetah_dir") == [-1.0]
    flags = re.search(r"`(--task goal_x=0\.3 --task goal_y=-0\.2)`", text).group(1)
    args = build_parser().parse_args(["visualize", "RUN", *flags.split()])
    assert parse_task(args.task, ("goal_x", "goal_y"), "navigation2d") == [0.3, -0.2]  # exact: parsed as the literals


def test_discrete_actions_train_evaluate_and_predict(tmp_path):
    envs.register("discrete_goals", LineGoals, overwrite=True)
    cfg = load_config(
        None,
        ["env.name=discrete_goals", "iterations=2", "meta_batch_size=3", "episodes_per_task=3"]
        + [
            "policy.hidden_sizes=[8]",
            "device=cpu",
            "evaluation.tasks=2",
            "evaluation.episodes=2",
            "evaluation.steps=1",
        ],
    )
    result = Trainer(cfg, tmp_path / "run").train(quiet=True)
    assert np.isfinite(result.returns).all()
    adapted = load_run(tmp_path / "run").adapt(task=[0.5], steps=1, episodes=2)
    actions = [adapted.predict(np.zeros(1, np.float32))[0] for _ in range(20)]
    assert {int(a) for a in actions} <= {0, 1, 2}
    batch, _ = adapted.predict(np.zeros((4, 1), np.float32), deterministic=True)
    assert batch.shape == (4,) and batch.dtype == np.int64
