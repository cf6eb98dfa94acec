"""Figure plumbing shared by the visualize modules: one size and resolution, one save, one notice."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 120


def notice(message: str) -> None:
    print(f"caml-rl: notice: {message}", file=sys.stderr)


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` outside pyplot's global state (no backend, nothing to close)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(max(width, 8.0), height), dpi=DPI, layout="constrained")


def save(fig: Any, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def step_colors(count: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(count)]


def task_label(names: Sequence[str], task: np.ndarray) -> str:
    """``goal_x=0.30, goal_y=-0.20``."""
    return ", ".join(f"{n}={v:.2f}" for n, v in zip(names, task, strict=True))
