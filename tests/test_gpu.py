"""Whole meta-iterations with ``device=cuda`` (skipped without CUDA): 2D navigation entirely on the
GPU, and MuJoCo on CPU threads feeding a GPU policy. The Warp backend's GPU tests are in
tests/test_warp_backend.py (``pytest -m warp``)."""

import numpy as np
import pytest
import torch

from caml_rl import Trainer
from caml_rl.config import load_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("env", ["navigation2d", "halfcheetah_vel"])
def test_meta_iterations_on_cuda(env, tmp_path):
    cfg = load_config(
        None,
        [
            f"env.name={env}",
            "env.settings.horizon=20",
            "meta_batch_size=4",
            "episodes_per_task=4",
            "policy.hidden_sizes=[32]",
            "device=cuda",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.algorithm.open()
    metrics = [trainer.iterate() for _ in range(2)]
    trainer.algorithm.close()
    assert all(np.isfinite(m["return/after_adaptation"]) for m in metrics)
    assert all(p.is_cuda for p in trainer.policy.parameters())
