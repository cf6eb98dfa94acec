"""Does an RL² policy carry what it learned about a task across the episode boundary?

Episode 2 of a trial returning no more than episode 1 can mean two things: the policy forgets the
task at the boundary, or it identifies the task so early in episode 1 (the reward is one of its
inputs) that there is nothing left for episode 2 to gain. The start of each episode tells them
apart: at step 0 of episode 1 the policy knows nothing of the task, at step 0 of episode 2 it has
the hidden state of a whole episode. This script samples one trial per env on a run's evaluation
tasks (the tasks and streams of ``caml-rl evaluate`` with the same seed) and prints, per episode,
the mean reward over the first steps and over the whole episode, with 95% t-intervals over tasks,
and the paired difference episode 2 - episode 1.

    python experiments/rl2_memory.py experiments/results/halfcheetah_vel_scaled/rl2_seed0 --json out.json
"""

from __future__ import annotations

import argparse
import json

import torch
from caml_rl.envs.validation import sample_tasks

from caml_rl import load_run
from caml_rl.evaluation import mean_ci95
from caml_rl.rl2 import sample_trials
from caml_rl.sampler import Sampler
from caml_rl.seeding import EVAL_STREAM, make_streams


def memory(run_dir: str, tasks: int, episodes: int, seed: int | None, windows: list[int]) -> dict:
    """Per window ``w`` (and the whole episode): each episode's mean reward per step over its first
    ``w`` steps, mean ± 95% half-width over tasks, and the paired difference episode 2 - episode 1."""
    run = load_run(run_dir)
    seed = run.config.seed if seed is None else seed
    streams = make_streams(seed, EVAL_STREAM, run.device)
    task_rows = sample_tasks(run.distribution, streams.tasks, tasks)
    sampler = Sampler(run.distribution, len(task_rows), episodes, run.device)
    try:
        with torch.no_grad():
            trial = sample_trials(sampler, run.policy, task_rows, run.config.rl2.episodes_per_trial, streams)
    finally:
        sampler.close()
    horizon = trial[0].rewards.shape[0]
    rows = {}
    for w in [w for w in windows if w < horizon] + [horizon]:
        # mean reward per step over the first w steps, per task (averaged over its trials)
        per_episode = [(ep.rewards[:w] * ep.mask[:w]).sum(0).mean(-1).double().cpu().numpy() / w for ep in trial]
        rows[str(w)] = {
            "episodes": [mean_ci95(r) for r in per_episode],
            "episode2_minus_episode1": mean_ci95(per_episode[1] - per_episode[0]),
        }
    return {
        "run": str(run_dir),
        "seed": seed,
        "tasks": tasks,
        "trials_per_task": episodes,
        "mean_reward_per_step": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=20, help="trials per task")
    parser.add_argument("--seed", type=int, help="evaluation seed (default: the run's seed, as evaluate)")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 5, 20], help="first-step windows")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = memory(args.run, args.tasks, args.episodes, args.seed, args.windows)
    for w, row in result["mean_reward_per_step"].items():
        cells = "  ".join(f"episode {k + 1} {m:8.3f} ± {h:.3f}" for k, (m, h) in enumerate(row["episodes"]))
        m, h = row["episode2_minus_episode1"]
        print(f"first {int(w):4d} steps, mean reward per step: {cells}  |  2 - 1: {m:+.3f} ± {h:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
