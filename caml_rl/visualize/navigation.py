"""2D navigation: each task's trajectories after each inner step, per task and as a grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from caml_rl.envs.navigation import Navigation2D

from ..config import ConfigError
from ..runs import LoadedRun
from .plotting import new_figure, save
from .recording import StepRecord, as_run, rollout_adaptation

MAX_TRAJECTORIES = 10  # episodes drawn per panel
MAX_GRID_TASKS = 6


def _trajectories(record: StepRecord, task: int) -> list[np.ndarray]:
    """Positions of each of the task's episodes: the start, then one per step actually taken."""
    lengths = record.episodes.mask[:, task].sum(0).long().tolist()
    return [record.obs[: n + 1, task, e] for e, n in enumerate(lengths)]


def _limits(dist: Navigation2D, records: list[StepRecord], num_tasks: int) -> tuple[float, float]:
    low, high = min(dist.goal_low, 0.0), max(dist.goal_high, 0.0)
    for record in records:
        points = record.obs[:, :num_tasks, :MAX_TRAJECTORIES]
        drawn = np.ones(points.shape[:-1], bool)
        drawn[1:] = record.episodes.mask[:, :num_tasks, :MAX_TRAJECTORIES].numpy() > 0
        if drawn.any():
            low, high = min(low, float(points[drawn].min())), max(high, float(points[drawn].max()))
    pad = 0.08 * (high - low)
    return low - pad, high + pad


def _panel(ax: Any, dist: Navigation2D, record: StepRecord, task: int, goal: np.ndarray, lim: tuple) -> None:
    for e, trajectory in enumerate(_trajectories(record, task)[:MAX_TRAJECTORIES]):
        shown = min(MAX_TRAJECTORIES, record.obs.shape[2])
        label = f"episodes ({shown} shown)" if e == 0 else None
        ax.plot(trajectory[:, 0], trajectory[:, 1], lw=0.8, alpha=0.7, color="tab:blue", label=label)
    ax.plot(*record.obs[0, task, 0], "o", color="black", ms=6, label="start")
    ax.plot(*goal, "*", color="tab:red", ms=14, mec="black", label="goal")
    if dist.goal_radius:
        from matplotlib.patches import Circle

        ax.add_patch(Circle(tuple(goal), dist.goal_radius, fill=False, color="tab:red", lw=0.8))
    mean_return = float(record.episodes.task_returns()[task])
    ax.set(xlim=lim, ylim=lim, aspect="equal", title=f"step {record.step}: mean return {mean_return:.1f}")
    ax.grid(alpha=0.3)


def plot_navigation(
    run: LoadedRun | str | Path,
    tasks: np.ndarray,
    steps: Sequence[int] = (0, 1, 2, 3),
    out: str | Path = ".",
    *,
    episodes: int | None = None,
    seed: int | None = None,
    records: list[StepRecord] | None = None,
) -> list[Path]:
    """One PNG per task (a panel per step) and one grid PNG over up to 6 tasks, written into ``out``."""
    run = as_run(run)
    dist = run.distribution
    if not isinstance(dist, Navigation2D):
        raise ConfigError(f"env {run.config.env.name!r} is not 2D navigation; plot_navigation needs navigation2d")
    tasks = np.asarray(tasks, dtype=np.float64).reshape(-1, 2)
    if records is None:
        records, _ = rollout_adaptation(run, tasks, sorted(set(steps)), episodes=episodes, seed=seed)
    out, lim, written = Path(out), _limits(dist, records, len(tasks)), []
    where = f"{run.config.env.name}, {run.config.adaptation.partition}, iteration {run.iteration}"
    for i, goal in enumerate(tasks):
        fig = new_figure(3.6 * len(records), 4.2)
        axes = np.atleast_1d(fig.subplots(1, len(records), sharex=True, sharey=True))
        for ax, record in zip(axes, records, strict=True):
            _panel(ax, dist, record, i, goal, lim)
            ax.set_xlabel("x position (env units)")
        axes[0].set_ylabel("y position (env units)")
        axes[0].legend(loc="best", fontsize="small")
        fig.suptitle(f"Trajectories after each inner step, goal ({goal[0]:.2f}, {goal[1]:.2f}) [{where}]")
        written.append(save(fig, out / f"task{i:02d}_navigation.png"))
    rows = min(len(tasks), MAX_GRID_TASKS)
    fig = new_figure(3.0 * len(records), 3.0 * rows + 0.6)
    grid = np.array(fig.subplots(rows, len(records), sharex=True, sharey=True, squeeze=False))
    for i in range(rows):
        for j, record in enumerate(records):
            _panel(grid[i, j], dist, record, i, tasks[i], lim)
            grid[i, j].set_title(
                f"goal ({tasks[i, 0]:.2f}, {tasks[i, 1]:.2f}), step {record.step}: "
                f"{float(record.episodes.task_returns()[i]):.1f}",
                fontsize="small",
            )
        grid[i, 0].set_ylabel("y position (env units)")
    for ax in grid[-1]:
        ax.set_xlabel("x position (env units)")
    handles, labels = grid[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3)
    fig.suptitle(f"Trajectories over {rows} tasks (rows) and inner steps (columns)\npanel title: mean return [{where}]")
    written.append(save(fig, out / "navigation_grid.png"))
    return written
