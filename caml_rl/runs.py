"""Loading a finished (or running) run, adapting its policy to a task, and acting with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caml_rl import envs

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from .config import Config, from_dict
from .evaluation import EvalResult, adaptation_steps, evaluate
from .partition import FastWeights, policy_forward, resolve_partition
from .policies import ContextMLPPolicy, make_policy
from .sampler import Sampler
from .seeding import EVAL_STREAM, make_streams


@dataclass
class LoadedRun:
    config: Config
    policy: ContextMLPPolicy
    distribution: envs.TaskDistribution
    partition: tuple[str, ...]
    iteration: int
    run_dir: Path

    def evaluate(
        self,
        tasks: int | None = None,
        steps: int | None = None,
        episodes: int | None = None,
        seed: int | None = None,
        inner_lr: float | None = None,
    ) -> EvalResult:
        e, a = self.config.evaluation, self.config.adaptation
        return evaluate(
            self.policy,
            self.distribution,
            self.partition,
            num_tasks=tasks or e.tasks,
            steps=e.steps if steps is None else steps,
            episodes=episodes or e.episodes,
            inner_lr=inner_lr or e.inner_lr or a.inner_lr,
            gamma=a.gamma,
            gae_lambda=a.gae_lambda,
            seed=self.config.seed if seed is None else seed,
            env_name=self.config.env.name,
            adapt_name=a.partition,
            iteration=self.iteration,
        )

    def adapt(self, task: Any, steps: int = 1, episodes: int = 20, seed: int = 0) -> AdaptedPolicy:
        """Adapt to one task (its parameter row, e.g. ``[0.3, -0.2]``) with ``steps`` inner steps,
        each on fresh episodes; ``returns_during_adaptation`` holds the mean return after 0..steps."""
        task_row = np.asarray(task, dtype=np.float64).reshape(1, -1)
        names = self.distribution.task_names
        if task_row.shape[1] != len(names):
            raise ValueError(f"task {task!r} needs {len(names)} numbers: {', '.join(names)}")
        a = self.config.adaptation
        lr = self.config.evaluation.inner_lr or a.inner_lr
        sampler = Sampler(self.distribution, 1, episodes, torch.device("cpu"))
        streams = make_streams(seed, EVAL_STREAM)
        returns = []
        try:
            for _, ep, fast in adaptation_steps(  # noqa: B007 (fast is the result)
                self.policy, sampler, self.partition, task_row, steps, lr, a.gamma, a.gae_lambda, streams
            ):
                returns.append(float(ep.task_returns()[0]))
        finally:
            sampler.close()
        return AdaptedPolicy(self.policy, fast, task_row[0], returns)


class AdaptedPolicy:
    """A policy adapted to one task; ``predict`` follows Stable-Baselines3's contract."""

    def __init__(self, policy: ContextMLPPolicy, fast: FastWeights, task: np.ndarray, returns: list[float]):
        self.policy, self.fast, self.task = policy, fast, task
        self.returns_during_adaptation = returns

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
        return (action[0] if single else action), None


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> LoadedRun:
    """Load a run directory's newest checkpoint (or the given one) on the CPU."""
    path = Path(checkpoint) if checkpoint else latest_checkpoint(Path(run_dir))
    payload = load_checkpoint(path)
    config = from_dict(Config, payload["config"])
    dist = envs.make(config.env.name, **config.env.settings)
    policy = make_policy(config.policy, dist.observation_space, dist.action_space)
    try:
        policy.load_state_dict(payload["policy"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match its config: {str(exc).splitlines()[0]}"
        ) from None
    policy.eval()
    return LoadedRun(
        config,
        policy,
        dist,
        resolve_partition(policy, config.adaptation.partition),
        int(payload["iteration"]),
        Path(run_dir),
    )
