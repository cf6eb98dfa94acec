"""Short learning smoke test: a few meta-iterations must already make adaptation pay off."""

import numpy as np
import pytest

from caml_rl import Trainer
from caml_rl.config import load_config


def test_adaptation_improves_return_after_short_training(tmp_path):
    """Learning thresholds hold on any machine. A machine's rounding changes a training run as much as a new
    seed does (seed 0's gain at 12 iterations with a 20 x 10 evaluation: 16.9 at 1 torch thread, 12.5 at 2,
    14.3 with AVX2 kernels instead of AVX-512), so the thresholds come from the spread over seeds, thread
    counts and kernels, measured over 28 runs of this config (seeds 0-19, seeds 0-2 and 14 at 2 threads and
    with AVX2 kernels). Iterations 12 -> 20 and evaluation 20 x 10 -> 40 x 20 made the gain's spread small
    against the threshold: at 12 iterations and 20 x 10 it was 13.6 +- 5.0 (min 4.9 over 25 runs), so the
    threshold 2.0 was only 2.3 standard deviations below: about 1 machine in 100 would have failed it."""
    cfg = load_config(
        None,
        [
            "meta_batch_size=10",
            "episodes_per_task=10",
            "iterations=20",
            "device=cpu",
            "policy.hidden_sizes=[64, 64]",
            "evaluation.tasks=40",
            "evaluation.episodes=20",
            "evaluation.steps=1",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    result = trainer.train(quiet=True)
    # learning threshold: one inner step gains 17.0 +- 3.0 (min 11.1) over the 28 runs; 2.0 is 4.9 standard
    # deviations below, and a policy that does not adapt (inner_lr 1e-9; 3 seeds, 12 iterations) gains -0.7 to 0.3
    assert result.returns[1] > result.returns[0] + 2.0, result.returns
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "progress.csv")))
    post = np.array([float(r["return/after_adaptation"]) for r in rows])
    # learning threshold: the last 3 iterations beat the first 3 by 51.5 +- 9.5 (min 34.5, 18 runs): 5 sd above 0
    assert post[-3:].mean() > post[:3].mean()


@pytest.mark.slow
def test_navigation_reaches_published_levels(tmp_path):
    cfg = load_config("experiments/configs/navigation_caml.yaml", ["iterations=200", "device=cpu"])
    result = Trainer(cfg, tmp_path / "run").train(quiet=True)
    # published-level thresholds (slow: not in the default suite). Seed 0 reached -15.2 after one step, a gain of
    # 21.9 (95% intervals 1.5 and 4.2), in one run on one machine: ~10 above each; the spread over seeds and
    # machines is not measured (6 minutes a run)
    assert result.returns[1] > -25 and result.returns[1] - result.returns[0] > 10
