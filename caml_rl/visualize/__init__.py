"""Figures and videos of a trained run: what the policy does after 0, 1, 2, ... inner steps.

Every run gets its learning curves and, when a context adapts, a PCA of the adapted contexts.
Per-task figures follow what the task distribution offers: 2D navigation draws trajectories, an
env that measures forward velocity (``BatchedEnv.info["velocity"]``) gets a velocity plot, and
one that can draw itself (``TaskDistribution.render_env``) gets a video per task. One module per
figure; ``recording`` adapts and records, ``curves`` is shared with ``caml-rl report``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from caml_rl.envs.navigation import Navigation2D

from ..config import ConfigError
from ..memory import check_memory
from ..runs import LoadedRun, space_dims
from .curves import plot_learning_curves
from .embedding import EMBEDDING_TASKS, plot_context_embedding
from .navigation import plot_navigation
from .plotting import notice
from .recording import StepRecord, as_run, rollout_adaptation, sample_eval_tasks
from .velocity import plot_velocity
from .video import RenderError, can_render, render_video, video_frames, write_video

__all__ = [
    "RenderError",
    "StepRecord",
    "plot_context_embedding",
    "plot_learning_curves",
    "plot_navigation",
    "plot_velocity",
    "render_video",
    "rollout_adaptation",
    "sample_eval_tasks",
    "visualize",
]


def visualize(
    run_dir: LoadedRun | str | Path,
    *,
    tasks: int = 4,
    task: Sequence[float] | None = None,
    steps: Sequence[int] = (0, 1, 2, 3),
    out: str | Path | None = None,
    fmt: str = "mp4",
    seed: int | None = None,
    episodes: int | None = None,
    notify: Callable[[str], None] = notice,
) -> list[Path]:
    """Every figure that fits the run's env; returns the paths written (default ``RUN_DIR/visualize``)."""
    run = as_run(run_dir)
    out = Path(out) if out else run.run_dir / "visualize"
    steps = sorted(set(int(s) for s in steps))
    if episodes is not None and (isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1):
        raise ConfigError(f"visualize episodes={episodes!r} is out of range; allowed: >= 1")
    batch = (max(tasks, EMBEDDING_TASKS) + (task is not None), episodes or run.config.evaluation.episodes)
    obs_dim, act_dim = space_dims(run.distribution)  # before anything is drawn or written
    check_memory(
        run.config.policy,
        obs_dim,
        act_dim,
        run.distribution.horizon,
        batch,
        "cpu",
        "this visualization",
        "--tasks or --episodes",
    )
    written: list[Path] = []
    if (run.run_dir / "progress.csv").is_file():
        written.append(plot_learning_curves(run.run_dir, out / "learning_curves.png", run.config.trpo.max_kl))
    else:
        notify(f"no learning curves: {str(run.run_dir / 'progress.csv')!r} does not exist")
    pool = sample_eval_tasks(run, max(tasks, EMBEDDING_TASKS), seed)
    chosen = pool[:tasks] if task is None else np.asarray(task, dtype=np.float64).reshape(1, -1)
    written += _per_task_figures(run, chosen, steps, out, fmt, seed, episodes, notify)
    embedded = pool if task is None else np.concatenate([pool, chosen])
    highlight = [] if task is None else [len(pool)]
    path = plot_context_embedding(
        run, embedded, out / "context_embedding.png", episodes=episodes, seed=seed, highlight=highlight, notify=notify
    )
    return written if path is None else [*written, path]


def _per_task_figures(
    run: LoadedRun,
    tasks: np.ndarray,
    steps: list[int],
    out: Path,
    fmt: str,
    seed: int | None,
    episodes: int | None,
    notify: Callable[[str], None],
) -> list[Path]:
    if not steps:
        return []
    records, _ = rollout_adaptation(run, tasks, steps, episodes=episodes, seed=seed)
    written: list[Path] = []
    if isinstance(run.distribution, Navigation2D):
        written += plot_navigation(run, tasks, steps, out, records=records)
    if records and records[0].velocity is not None:
        written += [plot_velocity(run, records, i, tasks, out / f"task{i:02d}_velocity.png") for i in range(len(tasks))]
    if can_render(run.distribution, tasks[0]):
        film_seed = run.config.seed if seed is None else seed
        for i in range(len(tasks)):
            try:
                frames, fps = video_frames(run, records, i, tasks, film_seed)
            except RenderError as exc:
                notify(f"no video: {exc}")
                break
            written.append(write_video(frames, out / f"task{i:02d}_video", fmt, fps, notify))
    if not written:
        notify(f"no per-task figures for env {run.config.env.name!r}: it neither measures velocity nor renders")
    return written
