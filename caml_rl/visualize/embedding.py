"""The adapted contexts of many tasks in two dimensions (PCA), coloured by each task parameter."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..runs import LoadedRun
from .plotting import new_figure, notice, save
from .recording import as_run, rollout_adaptation, sample_eval_tasks

EMBEDDING_TASKS = 40  # the paper-style embedding plot: 40+ tasks


def principal_correlations(pcs: np.ndarray, tasks: np.ndarray) -> np.ndarray:
    """Pearson r of each task parameter (rows) with each principal component (columns); NaN where
    either is constant (a fixed parameter says nothing about the contexts)."""
    out = np.full((tasks.shape[1], pcs.shape[1]), np.nan)
    for i in range(tasks.shape[1]):
        for j in range(pcs.shape[1]):
            if np.ptp(tasks[:, i]) > 0 and np.ptp(pcs[:, j]) > 0:
                out[i, j] = np.corrcoef(tasks[:, i], pcs[:, j])[0, 1]
    return out


def plot_context_embedding(
    run: LoadedRun | str | Path,
    tasks: np.ndarray | None = None,
    out: str | Path = "context_embedding.png",
    *,
    num_tasks: int = EMBEDDING_TASKS,
    episodes: int | None = None,
    seed: int | None = None,
    highlight: Sequence[int] = (),
    notify: Callable[[str], None] = notice,
) -> Path | None:
    """Scatter of the contexts after one inner step on their first two principal components, one panel
    per task parameter coloured by it (HalfCheetah dynamics: mass and damping scale side by side).
    ``highlight``: indices of tasks to mark with a star. None if no context adapts."""
    run = as_run(run)
    if run.policy.context_size == 0 or "context" not in run.partition:
        notify(
            f"no context embedding: this run adapts no context (context_size={run.policy.context_size}, "
            f"partition={run.config.adaptation.partition!r})"
        )
        return None
    tasks = sample_eval_tasks(run, num_tasks, seed) if tasks is None else np.asarray(tasks, dtype=np.float64)
    tasks = tasks.reshape(-1, len(run.distribution.task_names))
    if len(tasks) < 2:
        notify("no context embedding: it needs at least 2 tasks")
        return None
    _, fast = rollout_adaptation(run, tasks, [], episodes=episodes, seed=seed, through=1)
    contexts = fast["context"].double().numpy()
    centred = contexts - contexts.mean(0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    share = singular**2 / max(float((singular**2).sum()), 1e-300)
    pcs = centred @ components[:2].T
    if pcs.shape[1] < 2:
        pcs, share = np.concatenate([pcs, np.zeros_like(pcs)], 1), np.append(share, 0.0)
    names = run.distribution.task_names
    corr = principal_correlations(pcs, tasks)
    fig = new_figure(6.5 * len(names), 6.0)
    fig.suptitle(
        f"Contexts after 1 inner step (PCA of {contexts.shape[1]}-d context) [{run.config.env.name}, "
        f"iteration {run.iteration}, {len(tasks)} tasks]"
    )
    for k, (ax, name) in enumerate(zip(fig.subplots(1, len(names), squeeze=False)[0], names)):
        points = ax.scatter(pcs[:, 0], pcs[:, 1], c=tasks[:, k], cmap="viridis", s=45, edgecolors="black", lw=0.5)
        fig.colorbar(points, ax=ax, label=name)
        if len(highlight):
            marked = list(highlight)
            ax.scatter(
                pcs[marked, 0], pcs[marked, 1], marker="*", s=300, c="none", edgecolors="tab:red", lw=1.5,
                label="requested task",
            )  # fmt: skip
            ax.legend(loc="best", fontsize="small")
        ax.set(
            xlabel=f"PC 1 ({100 * share[0]:.0f}% of variance, context units)",
            ylabel=f"PC 2 ({100 * share[1]:.0f}% of variance, context units)",
            title=f"coloured by {name}: r = {corr[k, 0]:.2f} with PC 1, {corr[k, 1]:.2f} with PC 2",
        )
        ax.grid(alpha=0.3)
    return save(fig, Path(out))
