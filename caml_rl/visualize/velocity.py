"""Forward velocity over an episode after each inner step, for envs that measure it
(``BatchedEnv.info["velocity"]``: the locomotion tasks), against the task's goal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caml_rl.envs.locomotion import MujocoTaskDistribution

from ..runs import LoadedRun
from .plotting import new_figure, save, step_colors, task_label
from .recording import StepRecord


def plot_velocity(run: LoadedRun, records: list[StepRecord], task: int, tasks: np.ndarray, out: str | Path) -> Path:
    """Mean forward velocity over the task's episodes (±1 std) after each step, and the goal."""
    dist = run.distribution
    dt = dist.dt if isinstance(dist, MujocoTaskDistribution) else None
    fig = new_figure(9, 4.8)
    ax = fig.subplots()
    for record, color in zip(records, step_colors(len(records)), strict=True):
        velocity = record.velocity[:, task]
        alive = record.episodes.mask[: len(record.velocity), task].numpy()
        count = alive.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):  # no episode left alive: NaN, not drawn
            mean = (velocity * alive).sum(1) / count
            std = np.sqrt((((velocity - mean[:, None]) * alive) ** 2).sum(1) / count)
        t = np.arange(1, len(mean) + 1) * (dt or 1.0)
        mean_return = float(record.episodes.task_returns()[task])
        ax.plot(t, mean, color=color, label=f"step {record.step} (mean return {mean_return:.1f})")
        ax.fill_between(t, mean - std, mean + std, color=color, alpha=0.15)
    names, row = dist.task_names, tasks[task]
    if names[0] == "goal_velocity":
        ax.axhline(row[0], color="tab:red", ls="--", label=f"goal velocity {row[0]:.2f} m/s")
    elif names[0] == "direction":
        ax.axhline(0.0, color="0.3", ls=":", lw=1)
        ax.plot([], [], " ", label=f"desired direction: {'forward (+x)' if row[0] > 0 else 'backward (-x)'}")
    ax.set(
        xlabel="time (s)" if dt else "env step",
        ylabel="forward velocity (m/s)",
        title=f"Forward velocity after each inner step, {task_label(names, row)} "
        f"[{run.config.env.name}, iteration {run.iteration}; mean ± std over episodes]",
    )
    ax.title.set_fontsize("medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return save(fig, Path(out))
