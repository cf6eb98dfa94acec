"""Learning curves from ``progress.csv``: one drawing of the returns, shared by ``visualize`` and ``report``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import CheckpointError, read_progress, read_yaml_mapping
from ..logging import RENAMED_COLUMNS
from .plotting import new_figure, save

OLD_NAMES = {new: old for old, new in RENAMED_COLUMNS.items()}


def progress_column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    """A numeric progress column (read under its old name in runs logged before a rename); a
    missing or non-numeric cell is NaN."""
    old = OLD_NAMES.get(key)
    values = []
    for row in rows:
        cell = row.get(key) or (row.get(old) if old else None)
        try:
            values.append(float(cell) if cell not in (None, "") else math.nan)
        except ValueError:
            values.append(math.nan)
    return np.array(values)


def draw_returns(
    ax: Any,
    iterations: np.ndarray,
    before: Sequence[np.ndarray],
    after: Sequence[np.ndarray],
    label: str = "",
) -> None:
    """Mean return before (dotted) and after adaptation (solid) per meta-iteration, averaged over
    ``after``'s runs (seeds) with their range shaded; one colour per call."""
    n = len(iterations)
    after_runs, before_runs = np.stack([a[:n] for a in after]), np.stack([b[:n] for b in before])
    style = {"marker": "o", "ms": 3} if n < 30 else {}
    prefix = f"{label}: " if label else ""
    seeds = f" (mean of {len(after_runs)} runs, range shaded)" if len(after_runs) > 1 else ""
    (line,) = ax.plot(iterations, after_runs.mean(0), label=f"{prefix}after adaptation{seeds}", **style)
    if len(after_runs) > 1:
        ax.fill_between(iterations, after_runs.min(0), after_runs.max(0), color=line.get_color(), alpha=0.2)
    ax.plot(
        iterations, before_runs.mean(0), ls=":", color=line.get_color(), label=f"{prefix}before adaptation", **style
    )


def plot_learning_curves(run_dir: str | Path, out: str | Path | None = None, max_kl: float | None = None) -> Path:
    """Return before/after adaptation, TRPO KL (with ``max_kl``) and the rolling acceptance rate;
    for a PPO run the adapted and pre-update KLs and the clipped fraction instead."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    path = run_dir / "progress.csv"
    if not path.is_file():
        raise CheckpointError(f"run directory {str(run_dir)!r} has no progress.csv to plot")
    rows = read_progress(path)  # a damaged file is one line naming it
    if not rows:
        raise CheckpointError(f"{str(path)!r} has no rows yet")
    iterations = progress_column(rows, "iteration")
    iterations = np.where(np.isfinite(iterations), iterations, np.arange(1, len(rows) + 1))
    ppo = "ppo/kl" in rows[0]
    if max_kl is None and not ppo:
        try:
            max_kl = float(read_yaml_mapping(run_dir / "config.yaml", "run config")["trpo"]["max_kl"])
        except Exception:  # no or odd config: draw no line
            max_kl = None
    fig = new_figure(9, 9.5)
    ax_return, ax_kl, ax_accepted = fig.subplots(3, 1, sharex=True)
    before, after = progress_column(rows, "return/before_adaptation"), progress_column(rows, "return/after_adaptation")
    draw_returns(ax_return, iterations, [before], [after])
    ax_return.set(ylabel="mean episode return", title=f"Learning curves: {run_dir.name}")
    if ppo:  # the PPO/ProMP outer loop: how far each iteration moved, and how much it clipped
        ax_kl.plot(
            iterations, progress_column(rows, "ppo/kl"), ".", color="tab:purple", label="KL of the adapted policy"
        )
        kl_pre = progress_column(rows, "ppo/kl_pre")
        ax_kl.plot(iterations, kl_pre, ".", color="tab:orange", label="KL of the pre-update policy")
        ax_kl.set(ylabel="mean KL (nats)")
        clipped = progress_column(rows, "ppo/clip_fraction")
        ax_accepted.plot(iterations, clipped, color="tab:green", label="ratio outside the clip range")
        ax_accepted.set(ylabel="clipped fraction of steps", xlabel="meta-iteration")
    else:
        kl = progress_column(rows, "trpo/kl")
        ax_kl.plot(iterations, kl, ".", color="tab:purple", label="KL of the step taken (rejected steps omitted)")
        if max_kl:
            ax_kl.axhline(max_kl, color="tab:red", ls="--", label=f"trust region max_kl = {max_kl:g}")
        ax_kl.set(ylabel="mean KL (nats)")
        accepted = progress_column(rows, "trpo/accepted")
        window = max(1, min(10, len(rows)))
        rolling = np.convolve(np.nan_to_num(accepted), np.ones(window) / window, mode="valid")
        ax_accepted.plot(iterations, accepted, "|", color="0.6", ms=8, label="accepted (1) / rejected (0)")
        rolling_label = f"rolling acceptance rate ({window} iterations)"
        ax_accepted.plot(iterations[window - 1 :], rolling, color="tab:green", label=rolling_label)
        ax_accepted.set(ylabel="acceptance rate", xlabel="meta-iteration", ylim=(-0.05, 1.05))
    for ax in (ax_return, ax_kl, ax_accepted):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    return save(fig, Path(out) if out else run_dir / "visualize" / "learning_curves.png")
