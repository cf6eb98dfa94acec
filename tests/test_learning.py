"""Short learning smoke test: a few meta-iterations must already make adaptation pay off."""

import numpy as np
import pytest

from caml_rl import Trainer
from caml_rl.config import load_config


def test_adaptation_improves_return_after_short_training(tmp_path):
    cfg = load_config(
        None,
        [
            "meta_batch_size=10",
            "episodes_per_task=10",
            "iterations=12",
            "device=cpu",
            "policy.hidden_sizes=[64, 64]",
            "evaluation.tasks=20",
            "evaluation.episodes=10",
            "evaluation.steps=1",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    result = trainer.train(quiet=True)
    assert result.returns[1] > result.returns[0] + 2.0, result.returns
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "progress.csv")))
    post = np.array([float(r["return/after_adaptation"]) for r in rows])
    assert post[-3:].mean() > post[:3].mean()


@pytest.mark.slow
def test_navigation_reaches_published_levels(tmp_path):
    cfg = load_config("experiments/configs/navigation_caml.yaml", ["iterations=200", "device=cpu"])
    result = Trainer(cfg, tmp_path / "run").train(quiet=True)
    assert result.returns[1] > -25 and result.returns[1] - result.returns[0] > 10
