"""caml-rl MAML against pytorch-maml-rl's own MAML-TRPO on HalfCheetah direction (the anchor).

Reads the training curves (``progress.csv``) of the runs given and writes, into ``--out``,
``results.md`` (after-adaptation training return at the anchor's iterations, next to the anchor's
row) and ``learning_curves.png`` (every run's curve with the anchor's points overlaid).

    python experiments/peer_comparison.py experiments/results/halfcheetah_dir_peer/* \
        --out experiments/results/halfcheetah_dir_peer_report
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# pytorch-maml-rl, upstream configs/maml/halfcheetah-dir.yaml, gymnasium's HalfCheetah-v5 XML,
# seed 1, 2 cores (../shared/REFERENCE.md and issue 12): mean undiscounted return (horizon 100)
# over 40 tasks x 20 episodes, per iteration, counted from 0.
ANCHOR_ITERATIONS = [0, 3, 6, 9, 12, 15, 18, 21, 24, 30, 35, 40, 44]
ANCHOR_BEFORE = [-0.9, -0.2, -0.4, 0.1, -0.2, -1.2, -1.2, 3.5, -2.0, -9.9, -9.1, -4.3, -16.0]
ANCHOR_AFTER = [-0.5, 1.1, 3.8, 14.5, 30.2, 41.1, 52.2, 83.0, 79.1, 84.3, 106.1, 122.4, 122.7]


def curve(run: Path, key: str = "return/after_adaptation") -> dict[int, float]:
    """Iteration (counted from 0, as the anchor counts) -> value of ``key`` in that iteration."""
    with (run / "progress.csv").open() as f:
        return {int(float(r["iteration"])) - 1: float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def table(runs: list[Path]) -> str:
    head = ["run"] + [str(i) for i in ANCHOR_ITERATIONS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| pytorch-maml-rl (anchor), after one step | " + " | ".join(f"{v:+.1f}" for v in ANCHOR_AFTER) + " |")
    for run in runs:
        c = curve(run)
        cells = [f"{c[i]:+.1f}" if i in c else "–" for i in ANCHOR_ITERATIONS]
        lines.append(f"| {run.name}, after one step | " + " | ".join(cells) + " |")
    lines.append("| pytorch-maml-rl (anchor), before | " + " | ".join(f"{v:+.1f}" for v in ANCHOR_BEFORE) + " |")
    for run in runs:
        c = curve(run, "return/before_adaptation")
        cells = [f"{c[i]:+.1f}" if i in c else "–" for i in ANCHOR_ITERATIONS]
        lines.append(f"| {run.name}, before | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(runs: list[Path], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(ANCHOR_ITERATIONS, ANCHOR_AFTER, "ko", ms=7, label="pytorch-maml-rl (anchor), after one step", zorder=5)
    for run in runs:
        c = curve(run)
        ax.plot(list(c), list(c.values()), lw=1.5, label=run.name)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean return after one inner step (horizon 100)")
    ax.set_title("HalfCheetah direction, MAML-TRPO: caml-rl vs pytorch-maml-rl")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [r for r in args.runs if (r / "progress.csv").is_file()]
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    (args.out / "results.md").write_text(text)
    figure(runs, args.out / "learning_curves.png")
    print(text)


if __name__ == "__main__":
    main()
