"""Adaptation curve on held-out tasks: return after 0, 1, ..., k inner steps, with 95% CIs.

Each step samples fresh episodes with the current fast values and adapts on them, exactly as a
deployed policy would. Test tasks come from a seed stream the trainer never uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from caml_rl.envs.base import TaskDistribution

from .adaptation import adapt, advantages
from .partition import initial_fast_weights
from .policies import ContextMLPPolicy
from .sampler import Sampler
from .seeding import EVAL_STREAM, make_streams

Z95 = 1.959963984540054


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% interval over the first axis."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), math.nan
    return float(values.mean()), float(Z95 * values.std(ddof=1) / math.sqrt(len(values)))


@dataclass
class EvalResult:
    returns: list[float]  # mean return after 0..k steps
    ci95: list[float]  # half-width of the 95% interval over tasks, per step
    num_tasks: int
    episodes_per_task: int
    env: str
    adapt: str
    iteration: int
    inner_lr: float
    seed: int
    task_returns: list[list[float]] = field(default_factory=list)  # [steps+1][tasks]
    tasks: list[list[float]] = field(default_factory=list)  # the test tasks' parameters
    task_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [f"{'inner steps':>11} | {'mean return':>11} | {'95% CI':>8}"]
        for k, (r, c) in enumerate(zip(self.returns, self.ci95)):
            rows.append(f"{k:>11} | {r:11.2f} | ±{c:7.2f}")
        return "\n".join(rows)


def evaluate(
    policy: ContextMLPPolicy,
    distribution: TaskDistribution,
    partition: tuple[str, ...],
    *,
    num_tasks: int = 40,
    steps: int = 3,
    episodes: int = 20,
    inner_lr: float = 1.0,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    env_name: str = "",
    adapt_name: str = "",
    iteration: int = 0,
) -> EvalResult:
    """Mean return over ``num_tasks`` fresh tasks after 0..``steps`` inner steps."""
    streams = make_streams(seed, EVAL_STREAM, device)
    tasks = distribution.sample_tasks(streams.tasks, num_tasks)
    sampler = Sampler(distribution, num_tasks, episodes, torch.device(device))
    fast = {k: v.detach().requires_grad_(True) for k, v in initial_fast_weights(policy, partition, num_tasks).items()}
    per_step: list[np.ndarray] = []
    try:
        for k in range(steps + 1):
            ep = sampler.sample(policy, tasks, fast, streams.env, streams.actions)
            per_step.append(ep.task_returns().cpu().double().numpy())
            if k < steps:
                adv = advantages(ep, gamma, gae_lambda)
                fast = adapt(policy, fast, ep, adv, inner_lr, 1, create_graph=False)
                fast = {n: v.detach().requires_grad_(True) for n, v in fast.items()}
    finally:
        sampler.close()
    stats = [mean_ci95(r) for r in per_step]
    return EvalResult(
        returns=[m for m, _ in stats],
        ci95=[c for _, c in stats],
        num_tasks=num_tasks,
        episodes_per_task=episodes,
        env=env_name,
        adapt=adapt_name,
        iteration=iteration,
        inner_lr=inner_lr,
        seed=seed,
        task_returns=[r.tolist() for r in per_step],
        tasks=tasks.tolist(),
        task_names=list(distribution.task_names),
    )
