"""A run in memory (config, policy, task distribution): evaluating it, adapting it to a task,
acting with it. ``load_run`` reads one from its run directory; the trainer evaluates through it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from caml_rl import envs
from caml_rl.envs.actions import clip_bounds

from .algorithm import algorithm_class
from .checkpoint import CheckpointError
from .config import Config, ConfigError, make_distribution
from .config_loading import apply_overrides, build_config
from .evaluation import EvalResult, adaptation_steps, evaluate
from .memory import check_memory
from .partition import FastWeights, policy_forward
from .policies import ContextMLPPolicy
from .run_directory import RunDirectory
from .sampler import Sampler
from .seeding import EVAL_STREAM, make_streams


def space_dims(distribution: envs.TaskDistribution) -> tuple[int, int]:
    """(observation size, action size or number of discrete actions) of a task distribution."""
    obs_dim = int(math.prod(distribution.observation_space.shape or (1,)))
    space = distribution.action_space
    act_dim = int(space.n) if hasattr(space, "n") else int(math.prod(space.shape or (1,)))
    return obs_dim, act_dim


@dataclass
class LoadedRun:
    """A policy with the config and task distribution it was trained on, read by ``load_run`` (on
    the CPU) or handed over by the trainer (on its device)."""

    config: Config
    policy: ContextMLPPolicy
    distribution: envs.TaskDistribution
    partition: tuple[str, ...]
    iteration: int
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    task_settings: dict[str, Any] = field(default_factory=dict)
    """Task settings changed from the trained ones for this evaluation (``load_run``'s ``task_settings``)."""

    @property
    def test_inner_lr(self) -> float:
        """The inner step size at test time: ``evaluation.inner_lr``, else the training one."""
        return self.config.evaluation.inner_lr or self.config.adaptation.inner_lr

    def check_adapts_by_gradient(self, what: str) -> None:
        """``what`` shows adaptation by inner gradient steps; a run whose algorithm adapts otherwise is refused."""
        if not self.partition:
            raise ConfigError(
                f"{what} shows adaptation by gradient steps; this run's algorithm {self.config.algorithm!r} adapts "
                "otherwise (RL² in its hidden state, PEARL by inferring a latent context): use `caml-rl evaluate` or "
                "`caml-rl report` for its curve"
            )

    def evaluate(
        self,
        tasks: int | None = None,
        steps: int | None = None,
        episodes: int | None = None,
        seed: int | None = None,
        inner_lr: float | None = None,
    ) -> EvalResult:
        """Return after 0..``steps`` inner steps on fresh tasks; ``None`` takes the run's config
        value, anything else is checked (a zero or non-finite value is an error, never a default)."""
        evaluation = self.config.evaluation
        tasks = evaluation.tasks if tasks is None else tasks
        steps = evaluation.steps if steps is None else steps
        episodes = evaluation.episodes if episodes is None else episodes
        seed = self.config.seed if seed is None else seed
        inner_lr = self.test_inner_lr if inner_lr is None else inner_lr
        for name, value, ok, allowed in (
            ("tasks", tasks, isinstance(tasks, int) and tasks >= 2, ">= 2"),
            ("steps", steps, isinstance(steps, int) and steps >= 0, ">= 0"),
            ("episodes", episodes, isinstance(episodes, int) and episodes >= 1, ">= 1"),
            ("seed", seed, isinstance(seed, int) and 0 <= seed < 2**63, "an integer >= 0"),
            ("inner_lr", inner_lr, math.isfinite(float(inner_lr)) and inner_lr > 0, "a finite number > 0"),
        ):
            if not ok or isinstance(value, bool):
                raise ConfigError(f"evaluate {name}={value!r} is out of range; allowed: {allowed}")
        obs_dim, act_dim = space_dims(self.distribution)
        horizon, batch = self.distribution.horizon, (tasks, episodes)
        lower = "--tasks or --episodes"
        check_memory(self.config.policy, obs_dim, act_dim, horizon, batch, self.device, "this evaluation", lower)
        return evaluate(self, num_tasks=tasks, steps=steps, episodes=episodes, inner_lr=inner_lr, seed=seed)

    def adapt(self, task: Any, steps: int = 1, episodes: int = 20, seed: int = 0) -> AdaptedPolicy:
        """Adapt to one task (its parameter row, e.g. ``[0.3, -0.2]``) with ``steps`` inner steps,
        each on fresh episodes; ``returns_during_adaptation`` holds the mean return after 0..steps."""
        self.check_adapts_by_gradient("adapt")
        task_row = np.asarray(task, dtype=np.float64).reshape(1, -1)
        names = self.distribution.task_names
        if task_row.shape[1] != len(names):
            raise ConfigError(f"task {task!r} needs {len(names)} numbers: {', '.join(names)}")
        adaptation = self.config.adaptation
        sampler = Sampler(self.distribution, 1, episodes, torch.device("cpu"))
        streams = make_streams(seed, EVAL_STREAM)
        returns = []
        try:
            for _, ep, fast in adaptation_steps(  # noqa: B007 (fast is the result)
                self.policy,
                sampler,
                self.partition,
                task_row,
                steps,
                self.test_inner_lr,
                adaptation.gamma,
                adaptation.gae_lambda,
                streams,
            ):
                returns.append(float(ep.task_returns()[0]))
        finally:
            sampler.close()
        return AdaptedPolicy(self.policy, fast, task_row[0], returns, self.distribution.action_space)


class AdaptedPolicy:
    """A policy adapted to one task; ``predict`` follows Stable-Baselines3's contract.

    Given the task distribution's ``action_space``, Box actions are clipped to its bounds, as
    SB3's ``predict`` does and as the sampler does in training and evaluation.
    """

    def __init__(
        self,
        policy: ContextMLPPolicy,
        fast: FastWeights,
        task: np.ndarray,
        returns: list[float],
        action_space: gym.spaces.Space | None = None,
    ):
        self.policy, self.fast, self.task = policy, fast, task
        self.returns_during_adaptation = returns
        self.action_space = action_space
        self._bounds = None if action_space is None else clip_bounds(action_space)

    @property
    def context(self) -> torch.Tensor | None:
        return self.fast.get("context", None)

    @torch.no_grad()
    def predict(
        self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, None]:
        obs = torch.as_tensor(np.asarray(observation), dtype=torch.float32)
        single = obs.dim() == 1
        obs = obs.reshape(1, 1, -1, obs.shape[-1])  # [T=1, tasks=1, n, obs_dim]
        params = policy_forward(self.policy, obs, self.fast)
        if deterministic:
            action = self.policy.mode(params, self.policy.discrete)
        else:
            action = self.policy.distribution(params).sample()
        action = action[0, 0].cpu().numpy()
        if self._bounds is not None:
            action = np.clip(action, *self._bounds)
        return (action[0] if single else action), None


TASK_SETTING = "env.settings."


def with_task_settings(config: Config, overrides: list[str]) -> tuple[Config, dict[str, Any]]:
    """``config`` with task settings changed by ``env.settings.KEY=VALUE`` strings (``--set`` syntax),
    and the changes as nested data. Only task settings: the policy and training settings are the
    checkpoint's, so any other key is a one-line error."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not key.startswith(TASK_SETTING) or key == TASK_SETTING:
            raise ConfigError(
                f"--set {item!r}: a trained policy is evaluated with changed task settings only ({TASK_SETTING}"
                "KEY=VALUE, e.g. --set env.settings.goal_norm=1); its other settings are the checkpoint's"
            )
    changed = apply_overrides({}, overrides)["env"]["settings"]
    changed_config = build_config(apply_overrides(config.to_dict(), overrides))
    changed_config.validate()
    return changed_config, changed


def _check_same_spaces(trained: envs.TaskDistribution, changed: envs.TaskDistribution, what: str) -> None:
    """The trained policy takes the changed tasks' observations and acts in their action space."""
    for name, (before, after) in zip(("observation", "action"), zip(space_dims(trained), space_dims(changed))):
        if before != after:
            raise ConfigError(
                f"{what} changes the {name} size from {before} to {after}; the trained policy needs {before}"
            )


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None, task_settings: list[str] | None = None
) -> LoadedRun:
    """Load a run directory's newest checkpoint (or the given one) on the CPU. ``task_settings``
    (``["env.settings.goal_norm=1"]``) evaluates the trained policy on changed tasks: another reward
    definition, a wider task range, a longer horizon; the observation and action sizes must stay."""
    saved = RunDirectory(run_dir).load(checkpoint)
    config = saved.config
    try:
        distribution = make_distribution(config.env)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {str(saved.path)!r} holds a config caml-rl rejects: {exc}") from None
    changed: dict[str, Any] = {}
    if task_settings:
        trained = distribution
        config, changed = with_task_settings(config, task_settings)
        distribution = make_distribution(config.env)
        _check_same_spaces(trained, distribution, "--set " + " ".join(task_settings))
    algorithm = algorithm_class(config.algorithm)
    policy = algorithm.make_policy(config, distribution.observation_space, distribution.action_space)
    saved.load_policy(policy)
    policy.eval()
    partition = algorithm.partition_of(config, policy)
    return LoadedRun(config, policy, distribution, partition, saved.iteration, Path(run_dir), task_settings=changed)
