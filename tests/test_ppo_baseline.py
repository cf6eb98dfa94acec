"""SB3 PPO baselines: the oracle observation, the actor copy, and run directories caml-rl can read."""

import numpy as np
import pytest
import torch
import yaml

from caml_rl import envs, load_config, load_run
from caml_rl.cli import main
from caml_rl.policies import make_policy
from caml_rl.ppo_baseline import PPOBaselineRun, PPOSettings, copy_actor
from caml_rl.report import report

SMALL = PPOSettings(total_timesteps=256, n_envs=2, n_steps=64, batch_size=64, n_epochs=1, save_every=1)


def small_config(*extra):
    return load_config(None, ["policy.hidden_sizes=[16, 16]", "evaluation.tasks=4", "evaluation.episodes=2", *extra])


def test_task_in_observation_appends_each_envs_task():
    dist = envs.make("task_in_observation", base="navigation2d")
    assert dist.observation_space.shape == (4,) and dist.horizon == 100 and dist.task_names == ("goal_x", "goal_y")
    tasks = dist.sample_tasks(np.random.default_rng(0), 3)
    vec = dist.make_vec_env(3, torch.device("cpu"))
    obs = vec.reset(tasks, np.random.default_rng(1))
    obs, _, _ = vec.step(torch.zeros(3, 2))
    assert torch.allclose(obs[:, 2:], torch.as_tensor(tasks, dtype=torch.float32))  # the task, rounded to float32
    envs.validate(dist)
    with pytest.raises(envs.TaskDistributionError, match="unknown env 'nope'"):
        envs.make("task_in_observation", base="nope")


def test_single_task_env_draws_a_new_task_each_episode_unless_fixed():
    env = envs.SingleTaskEnv(envs.make("navigation2d"))
    first = env.reset(seed=0)[1]["task"]
    assert not np.allclose(env.reset()[1]["task"], first)  # a new draw, O(0.1) away
    env.set_task([0.1, 0.2])
    assert np.allclose(env.reset()[1]["task"], [0.1, 0.2]) and np.allclose(env.reset()[1]["task"], [0.1, 0.2])


def test_copied_actor_gives_sb3s_action_distribution(tmp_path):
    run = PPOBaselineRun(small_config(), tmp_path / "ppo", SMALL)
    dist = run.distribution
    policy = copy_actor(run.model, make_policy(run.config.policy, dist.observation_space, dist.action_space))
    obs = torch.randn(5, 2)
    sb3 = run.model.policy.get_distribution(obs).distribution
    mean, log_std = policy(obs, torch.zeros(0))
    # the same float32 weights through two implementations (their matmuls may group sums differently): a few
    # ulp of O(1) activations, ~1e-7; a wrongly copied layer is O(0.1) off
    assert torch.allclose(mean, sb3.mean, atol=1e-6) and torch.allclose(log_std.exp().expand_as(mean), sb3.stddev)


def test_baseline_run_trains_resumes_and_reads_like_a_caml_run(tmp_path, capsys):
    out = tmp_path / "ppo_oracle"
    run = PPOBaselineRun(small_config(), out, SMALL, oracle=True)
    run.train(evaluate_at_end=False, verbose=False)
    assert run.model.num_timesteps == 256 and run.iteration == 2
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["env"]["name"] == "task_in_observation" and config["adaptation"]["partition"] == "all"

    longer = PPOSettings(**{**vars(SMALL), "total_timesteps": 512})
    resumed = PPOBaselineRun(load_config(out / "config.yaml"), out, longer, oracle=True)
    assert resumed.model.num_timesteps == 256 and resumed.iteration == 2
    result = resumed.train(verbose=False)
    assert resumed.model.num_timesteps == 512 and resumed.iteration == 4
    assert result.iteration == 4 and len(result.returns) == 4

    progress = (out / "progress.csv").read_text().splitlines()  # one row per rollout across the resume
    assert len(progress) == 1 + 4
    assert load_run(out).policy.context_size == 0

    main(["evaluate", str(out), "--tasks", "3", "--steps", "1", "--episodes", "2", "--out", str(tmp_path / "e.json")])
    assert "task_in_observation (adapt=all)" in capsys.readouterr().out
    report([out], tmp_path / "report", steps=1)
    assert "ppo_oracle" in (tmp_path / "report" / "results.md").read_text()


def test_cli_baseline_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["baseline", "--out", "x", "--timesteps", "0"])
    assert exc.value.code == 2
    assert "total_timesteps=0" in capsys.readouterr().err


def test_damaged_ppo_model_gives_one_line_error(tmp_path, capsys):
    (tmp_path / "ppo_model.zip").write_bytes(b"not a zip")
    with pytest.raises(SystemExit) as exc:
        main(["baseline", "--out", str(tmp_path), "--timesteps", "64"])
    assert exc.value.code == 2
    assert "ppo_model.zip' is damaged" in capsys.readouterr().err
