"""Two methods compared over their seeds: the difference of the seed means with Welch's 95% interval, and
an exact permutation test of the seed means.

    python experiments/seed_difference.py RUN [RUN ...]

The runs are `<method>_seed<N>` directories of exactly two methods, each with an eval.json, grouped and
checked like `caml-rl report`'s rows (a method's seeds must differ only in their seed). Per inner-step
count it prints each method's seed means (the mean over that seed's test tasks), A − B (A: the first run's
method) with Welch's
interval (degrees of freedom rounded down, so the interval is a little conservative) and the one-sided
permutation p of A − B: the share of the ways to split the pooled seed means into groups of the same sizes
whose difference is at least as large. The interval over seeds counts how much training varies
between seeds, which the interval over pooled test tasks in `caml-rl report` does not.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np

from caml_rl.evaluation import t975
from caml_rl.report import SEED_SUFFIX, collect


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean of a − mean of b, the 95% half-width (Welch, df rounded down) and the Welch degrees of freedom."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(a.mean() - b.mean()), t975(max(1, math.floor(df))) * math.sqrt(va + vb), df


def permutation_p(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided exact p of mean(a) − mean(b) over every split of the pooled values into the two sizes."""
    pooled, observed = np.concatenate([a, b]), a.mean() - b.mean()
    splits = list(itertools.combinations(range(len(pooled)), len(a)))
    hits = 0
    for chosen in splits:
        mask = np.zeros(len(pooled), dtype=bool)
        mask[list(chosen)] = True
        hits += pooled[mask].mean() - pooled[~mask].mean() >= observed - 1e-9
    return hits / len(splits)


def seed_means(runs: list[Path]) -> dict[str, np.ndarray]:
    """Per method (named by its runs' folder name, or with the parent folder where those clash), the
    [seeds, steps] matrix of each seed's mean return over its test tasks."""
    groups = collect(runs)
    names = [SEED_SUFFIX.sub("", g.runs[0].name) for g in groups]
    if len(set(names)) < len(names):
        names = [g.label for g in groups]
    return {n: np.asarray([e["returns"] for e in g.evals], dtype=float) for n, g in zip(names, groups)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="<method>_seed<N> run directories of two methods")
    args = parser.parse_args(argv)
    try:
        means = seed_means(args.runs)
    except ValueError as exc:  # a missing or damaged eval.json, or seeds that differ in more than their seed
        parser.error(str(exc))
    if len(means) != 2 or min(len(m) for m in means.values()) < 2:
        found = ", ".join(f"{k} ({len(v)} seeds)" for k, v in means.items())
        parser.error(f"need two methods with at least 2 seeds each, got: {found}")
    (name_a, a), (name_b, b) = means.items()
    print(f"{name_a} − {name_b} over seed means ({len(a)} and {len(b)} seeds):")
    for step in range(min(a.shape[1], b.shape[1])):
        diff, half, df = welch(a[:, step], b[:, step])
        seeds = "; ".join(f"{n} " + ", ".join(f"{v:+.1f}" for v in m[:, step]) for n, m in means.items())
        p = permutation_p(a[:, step], b[:, step])
        print(f"  after {step} steps: {diff:+.1f} ± {half:.1f} (Welch df {df:.1f}), permutation p {p:.3f}  [{seeds}]")


if __name__ == "__main__":
    sys.exit(main())
