"""Adaptation curve on held-out tasks: return after 0, 1, ..., k inner steps, with 95% CIs.

Each step samples fresh episodes with the current fast values and adapts on them, exactly as a
deployed policy would. Test tasks come from a seed stream the trainer never uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from caml_rl.envs.validation import sample_tasks

from .adaptation import adapt, advantages
from .algorithm import algorithm_class
from .episodes import Episodes
from .partition import FastWeights, as_leaves, initial_fast_weights
from .policies import ContextMLPPolicy
from .reproduction import machine_record, policy_digest
from .sampler import Sampler

if TYPE_CHECKING:
    from .runs import LoadedRun
from .seeding import EVAL_STREAM, Streams, make_streams

Z95 = 1.959963984540054
# Student's t 0.975 quantiles for 1..30 degrees of freedom; above 30 the Cornish-Fisher series (error < 1e-5)
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)  # fmt: skip


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (scipy-free)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over the first axis (NaN for fewer than 2 values)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), math.nan
    return float(values.mean()), float(t975(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


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
    success_rates: list[float] = field(default_factory=list)  # per step, for envs that report success
    # per point of the curve, the episodes of each new task the method had seen (absent in old files:
    # k x episodes_per_task for gradient steps)
    episodes_seen: list[int] = field(default_factory=list)
    # the CPU/GPU and library versions that reproduce these numbers bit for bit (caml_rl.reproduction)
    machine: dict = field(default_factory=dict)
    policy_sha256: str = ""  # the evaluated weights, so a swapped checkpoint shows on any machine
    # task settings changed from the trained ones (``caml-rl evaluate --set env.settings.KEY=VALUE``)
    task_settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """One row per point of the adaptation curve: its return, 95% interval, success, episodes seen."""
        seen = len(self.episodes_seen) == len(self.returns)
        rows = [
            f"{'step':>4} | {'mean return':>11} | {'95% CI':>8}"
            + (" | success" if self.success_rates else "")
            + (" | episodes seen" if seen else "")
        ]
        for k, (r, c) in enumerate(zip(self.returns, self.ci95)):
            extra = f" | {self.success_rates[k]:7.1%}" if self.success_rates else ""
            extra += f" | {self.episodes_seen[k]:>13}" if seen else ""
            rows.append(f"{k:>4} | {r:11.2f} | ±{c:7.2f}" + extra)
        return "\n".join(rows)


def adaptation_steps(
    policy: ContextMLPPolicy,
    sampler: Sampler,
    partition: tuple[str, ...],
    tasks: np.ndarray,
    steps: int,
    inner_lr: float,
    gamma: float,
    gae_lambda: float,
    streams: Streams,
) -> Iterator[tuple[int, Episodes, FastWeights]]:
    """Test-time adaptation as a deployed policy does it: for ``k = 0..steps`` yield the episodes
    sampled with the fast values after ``k`` inner steps (and those values), then adapt on them."""
    fast = as_leaves(initial_fast_weights(policy, partition, len(tasks)))
    for k in range(steps + 1):
        ep = sampler.sample(policy, tasks, fast, streams.env, streams.actions)
        yield k, ep, {n: v.detach() for n, v in fast.items()}
        if k < steps:
            fast = as_leaves(adapt(policy, fast, ep, advantages(ep, gamma, gae_lambda), inner_lr, 1, False))


def evaluate(
    run: LoadedRun,
    *,
    num_tasks: int = 40,
    steps: int = 3,
    episodes: int = 20,
    inner_lr: float = 1.0,
    seed: int = 0,
) -> EvalResult:
    """Mean return over ``num_tasks`` fresh tasks at each point of the run's adaptation curve
    (its algorithm's :meth:`~caml_rl.algorithm.Algorithm.adaptation_curve`)."""
    if not (math.isfinite(inner_lr) and inner_lr > 0):  # a NaN step would give a NaN table, not an error
        raise ValueError(f"evaluation inner_lr={inner_lr!r} is out of range; allowed: a finite number > 0")
    streams = make_streams(seed, EVAL_STREAM, run.device)
    tasks = sample_tasks(run.distribution, streams.tasks, num_tasks)
    algorithm = algorithm_class(run.config.algorithm)
    curve = algorithm.adaptation_curve(run, tasks, steps, episodes, inner_lr, streams)
    stats = [mean_ci95(r) for r in curve.task_returns]
    return EvalResult(
        returns=[m for m, _ in stats],
        ci95=[c for _, c in stats],
        num_tasks=num_tasks,
        episodes_per_task=episodes,
        env=run.config.env.name,
        adapt=algorithm.label(run.config),
        iteration=run.iteration,
        inner_lr=inner_lr,
        seed=seed,
        task_returns=[r.tolist() for r in curve.task_returns],
        tasks=tasks.tolist(),
        task_names=list(run.distribution.task_names),
        success_rates=[float(x.mean()) for x in curve.task_success],
        episodes_seen=curve.episodes_seen,
        machine=machine_record(run.device),
        policy_sha256=policy_digest(run.policy),
        task_settings=run.task_settings,
    )
