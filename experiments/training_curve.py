"""Training-curve numbers quoted in experiments/README.md: values at chosen iterations, the mean of the
last iterations, and where the seed-mean curves of two methods change leader.

    python experiments/training_curve.py RUN [RUN ...] [--at 10 20 40 ...] [--window 1] [--last 50]

Reads each run's progress.csv (`--column`, by default the after-adaptation training return). A run
named `<method>_seed<N>` is one seed of `<method>`; with two methods, the seed-mean curves are
compared over `--compare-window`-iteration windows (over the iterations every seed has reached).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from caml_rl.checkpoint import read_progress
from caml_rl.report import SEED_SUFFIX
from caml_rl.visualize.curves import OLD_NAMES, progress_column

MARKS = (10, 20, 40, 60, 100, 150, 200, 250, 300)


def curve(run: Path, column: str) -> np.ndarray:
    """The column by 1-based iteration: element i is iteration i + 1 (NaN where a row is missing)."""
    rows = read_progress(run / "progress.csv")
    if rows and column not in rows[0] and OLD_NAMES.get(column) not in rows[0]:
        raise ValueError(f"{run}: no column {column!r} in progress.csv; it has {', '.join(sorted(rows[0]))}")
    iterations = progress_column(rows, "iteration").astype(int)
    values = progress_column(rows, column)
    out = np.full(int(iterations.max(initial=0)), np.nan)
    out[iterations - 1] = values  # a resumed run's repeated rows: the later one wins
    return out


def window_mean(values: np.ndarray, end: int, window: int) -> float:
    """Mean of the `window` iterations ending at iteration `end` (NaN if the run has not reached it)."""
    if end > len(values) or end < window:
        return float("nan")
    return float(np.nanmean(values[end - window : end]))


def method_of(run: Path) -> str:
    """`caml_seed2` -> `caml`: the runs that are seeds of one method."""
    return SEED_SUFFIX.sub("", run.name)


def seed_mean_curves(curves: dict[Path, np.ndarray]) -> dict[str, np.ndarray]:
    """Each method's mean curve over its seeds, cut to the iterations all of its seeds reached; a method is
    named by its runs' folder name, or with the parent folder where those clash (as in `caml-rl report`)."""
    groups: dict[tuple[str, str], list[np.ndarray]] = {}
    for run, values in curves.items():
        groups.setdefault((run.resolve().parent.name, method_of(run)), []).append(values)
    clash = len({method for _, method in groups}) < len(groups)
    return {
        f"{parent}/{method}" if clash else method: np.mean([v[: min(map(len, vs))] for v in vs], axis=0)
        for (parent, method), vs in groups.items()
    }


def leaders(a: np.ndarray, b: np.ndarray, window: int) -> list[tuple[int, float, float]]:
    """(last iteration, mean of a, mean of b) of each whole `window`-iteration window both curves reached."""
    n = min(len(a), len(b)) // window * window
    return [(end, window_mean(a, end, window), window_mean(b, end, window)) for end in range(window, n + 1, window)]


def segments(
    a: np.ndarray, b: np.ndarray, window: int, names: tuple[str, str]
) -> list[tuple[str, int, tuple[int, float, float]]]:
    """Runs of windows with one leader: (leader, first iteration, the run's last window as in `leaders`)."""
    out: list[tuple[str, int, tuple[int, float, float]]] = []
    for row in leaders(a, b, window):
        leader = names[0] if row[1] > row[2] else names[1]
        if out and out[-1][0] == leader:
            out[-1] = (leader, out[-1][1], row)
        else:
            out.append((leader, row[0] - window + 1, row))
    return out


def fmt(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:+.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--column", default="return/after_adaptation", help="progress.csv column")
    parser.add_argument("--at", type=int, nargs="+", default=list(MARKS), help="iterations to print")
    parser.add_argument("--window", type=int, default=1, help="each mark: mean of this many iterations to it")
    parser.add_argument("--last", type=int, default=50, help="the last column: mean of this many final iterations")
    parser.add_argument("--compare-window", type=int, default=10, help="window of the two-method leader comparison")
    args = parser.parse_args(argv)
    for name in ("window", "last", "compare_window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if min(args.at) < 1:
        parser.error(f"--at {min(args.at)}: iterations start at 1")
    for run in args.runs:
        if not (run / "progress.csv").is_file():
            parser.error(f"{run}: no progress.csv there; give run directories")

    try:
        curves = {run: curve(run, args.column) for run in args.runs}
    except ValueError as exc:  # a damaged progress.csv or an unknown column
        parser.error(str(exc))
    marks = " | ".join(str(m) if args.window == 1 else f"{m - args.window + 1}–{m}" for m in args.at)
    print(f"| run | {marks} | mean of the last {args.last} |")
    print("|---|" + "---|" * (len(args.at) + 1))
    for run, values in curves.items():
        cells = " | ".join(fmt(window_mean(values, m, args.window)) for m in args.at)
        last = float(np.nanmean(values[-args.last :]))
        span = f"its {len(values) - args.last + 1}–{len(values)}"
        print(f"| {run.parent.name}/{run.name} ({len(values)} it) | {cells} | {fmt(last)} ({span}) |")

    means = seed_mean_curves(curves)
    if len(means) == 2:
        (name_a, a), (name_b, b) = means.items()
        print(f"\nseed-mean curves, {args.compare_window}-iteration windows ({name_a} vs {name_b}):")
        for leader, start, (end, mean_a, mean_b) in segments(a, b, args.compare_window, (name_a, name_b)):
            window = f"{end - args.compare_window + 1}–{end}"
            values = f"{fmt(mean_a)} vs {fmt(mean_b)}"
            print(f"  {leader} ahead over iterations {start}–{end} (its last window, {window}: {values})")


if __name__ == "__main__":
    sys.exit(main())
