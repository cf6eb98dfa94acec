"""Paired comparison of two runs evaluated on the same new tasks, plus their training-curve summaries.

    python experiments/paired_difference.py RUN_A RUN_B [--last 50]

Prints B − A per inner-step count with a 95% t-interval over the tasks (eval.json's task_returns;
both evaluations must hold the same tasks), then each run's after-adaptation training return, update
and sampling seconds averaged over its last iterations (progress.csv). The numbers behind the
TRPO-vs-ProMP HalfCheetah table in experiments/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from caml_rl.checkpoint import read_progress
from caml_rl.evaluation import mean_ci95
from caml_rl.report import read_eval
from caml_rl.visualize.curves import progress_column

COLUMNS = ("return/after_adaptation", "time/update_seconds", "time/sampling_seconds")


def paired_difference(run_a: Path, run_b: Path) -> list[tuple[float, float]]:
    """Mean and 95% half-width of B − A over the tasks, per step count."""
    a, b = read_eval(run_a / "eval.json"), read_eval(run_b / "eval.json")
    if a.get("tasks") != b.get("tasks"):
        raise SystemExit(f"{run_a} and {run_b} were evaluated on different tasks; re-evaluate both with one --seed")
    diff = np.asarray(b["task_returns"], dtype=float) - np.asarray(a["task_returns"], dtype=float)  # [steps, tasks]
    return [mean_ci95(d) for d in diff]


def training_summary(run: Path, last: int) -> dict[str, float]:
    """Mean of each of COLUMNS over the run's last `last` iterations."""
    rows = read_progress(run / "progress.csv")[-last:]
    return {c: float(np.nanmean(progress_column(rows, c))) for c in COLUMNS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--last", type=int, default=50, help="iterations averaged in the training summary")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error(f"--last {args.last}: must be at least 1")
    try:  # a missing or damaged eval.json or progress.csv: one line naming the file
        rows = paired_difference(args.run_a, args.run_b)
        summaries = [training_summary(run, args.last) for run in (args.run_a, args.run_b)]
    except ValueError as exc:
        parser.error(str(exc))
    print(f"{args.run_b} − {args.run_a}, paired over tasks (mean ± 95% interval):")
    for step, (mean, ci) in enumerate(rows):
        print(f"  after {step} steps: {mean:+.1f} ± {ci:.1f}")
    for run, summary in zip((args.run_a, args.run_b), summaries):
        print(f"{run}, last {args.last} iterations: " + ", ".join(f"{c} {v:.2f}" for c, v in summary.items()))


if __name__ == "__main__":
    sys.exit(main())
