"""An adapted policy plugs into Stable-Baselines3's evaluation tools unchanged."""

import gymnasium as gym
import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy

from caml_rl import Trainer, load_config, load_run


def test_evaluate_policy_matches_caml_rl_returns(tmp_path):
    cfg = load_config(
        None, ["iterations=3", "meta_batch_size=5", "episodes_per_task=5", "device=cpu", "policy.hidden_sizes=[32, 32]"]
    )
    Trainer(cfg, tmp_path / "run").train(evaluate_at_end=False, quiet=True)
    run = load_run(tmp_path / "run")
    task = [0.3, -0.2]
    adapted = run.adapt(task, steps=1, episodes=200)
    ours = adapted.returns_during_adaptation[-1]  # mean return of 200 episodes after one step

    env = gym.make("caml/Navigation2D-v0", task=task)
    mean, std = evaluate_policy(adapted, env, n_eval_episodes=200, deterministic=False)
    standard_error_of_difference = std * np.sqrt(2 / 200)
    # statistical: two independent 200-episode means; 4 standard errors fail by chance with p = 6e-5, on any
    # machine (rounding changes which episodes are drawn, not their distribution)
    assert abs(mean - ours) < 4 * standard_error_of_difference, (mean, ours, std)

    single, _ = adapted.predict(np.zeros(2, np.float32), deterministic=True)
    batch, _ = adapted.predict(np.zeros((3, 2), np.float32), deterministic=True)
    # float32 forward passes of 1 and 3 rows may take different matmul kernels: ~1e-7 on O(1) sums
    assert single.shape == (2,) and batch.shape == (3, 2) and np.allclose(batch[0], single, rtol=0, atol=1e-6)
