"""Adapting a loaded run step by step on fresh episodes, recording what the figures need.

Adaptation follows ``caml-rl evaluate``: tasks come from the evaluation seed stream, and step k's
episodes are sampled with the fast values adapted on step k-1's (fresh) episodes. A
:class:`~caml_rl.sampler.RolloutHook` keeps every observation and, for envs that measure it, the
forward velocity; the rollout itself is the one evaluation would sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from caml_rl.envs.base import BatchedEnv

from ..episodes import Episodes
from ..evaluation import adaptation_steps
from ..partition import FastWeights
from ..runs import LoadedRun, load_run
from ..sampler import Sampler
from ..seeding import EVAL_STREAM, make_streams


@dataclass
class StepRecord:
    """One adaptation step's rollout. ``obs`` has the reset observation first: ``[T+1, tasks, eps, d]``."""

    step: int
    episodes: Episodes
    fast: FastWeights
    obs: np.ndarray
    velocity: np.ndarray | None  # [T, tasks, eps] forward velocity, for envs that report it


class Recorder:
    """A rollout hook keeping every observation, and ``env.info["velocity"][:, 0]`` when reported."""

    def __init__(self) -> None:
        self.obs: list[np.ndarray] = []
        self.velocity: list[np.ndarray] = []

    def on_reset(self, env: BatchedEnv, obs: torch.Tensor) -> None:
        self.obs, self.velocity = [obs.cpu().numpy().copy()], []

    def on_step(self, env: BatchedEnv, obs: torch.Tensor) -> None:
        self.obs.append(obs.cpu().numpy().copy())
        velocity = env.info.get("velocity")
        if velocity is not None:
            velocity = velocity.cpu().numpy() if isinstance(velocity, torch.Tensor) else np.asarray(velocity)
            self.velocity.append(np.array(velocity[:, 0], dtype=np.float64))

    def record(self, step: int, episodes: Episodes, fast: FastWeights, num_tasks: int) -> StepRecord:
        shape = (-1, num_tasks, episodes.mask.shape[2])
        obs = np.stack(self.obs).reshape(*shape, self.obs[0].shape[-1])
        velocity = np.stack(self.velocity).reshape(shape) if self.velocity else None
        return StepRecord(step, episodes, fast, obs, velocity)


def rollout_adaptation(
    run: LoadedRun,
    tasks: np.ndarray,
    steps: Sequence[int],
    *,
    episodes: int | None = None,
    seed: int | None = None,
    through: int | None = None,
) -> tuple[list[StepRecord], FastWeights]:
    """Adapt to every task step by step on fresh episodes, recording the ``steps`` asked for.

    Adapts ``through`` steps in all (default ``max(steps)``); returns the records and the final
    fast values (after ``through`` inner steps).
    """
    tasks = np.asarray(tasks, dtype=np.float64).reshape(-1, len(run.distribution.task_names))
    adaptation = run.config.adaptation
    episodes = episodes or run.config.evaluation.episodes
    last = max(steps, default=0) if through is None else through
    streams = make_streams(run.config.seed if seed is None else seed, EVAL_STREAM)
    recorder = Recorder()
    sampler = Sampler(run.distribution, len(tasks), episodes, torch.device("cpu"), hook=recorder)
    records: list[StepRecord] = []
    try:
        for k, ep, fast in adaptation_steps(
            run.policy,
            sampler,
            run.partition,
            tasks,
            last,
            run.test_inner_lr,
            adaptation.gamma,
            adaptation.gae_lambda,
            streams,
        ):
            if k in steps:
                records.append(recorder.record(k, ep, fast, len(tasks)))
    finally:
        sampler.close()
    return records, fast


def sample_eval_tasks(run: LoadedRun, num_tasks: int, seed: int | None = None) -> np.ndarray:
    """``num_tasks`` test tasks from the evaluation seed stream (the built-in distributions give the
    first ``num_tasks`` of the tasks ``evaluate`` uses with the same seed)."""
    streams = make_streams(run.config.seed if seed is None else seed, EVAL_STREAM)
    return run.distribution.sample_tasks(streams.tasks, num_tasks)


def as_run(run: LoadedRun | str | Path) -> LoadedRun:
    """The loaded run, refused in one line when it does not adapt by gradient steps (what the figures show)."""
    run = run if isinstance(run, LoadedRun) else load_run(run)
    run.check_adapts_by_gradient("visualize")
    return run
