"""What limits a PEARL run on 2D navigation: the encoder, the exploration, or the policy's use of z?

On new navigation tasks PEARL's return stops rising after about three episodes seen. This script
separates three causes on a run's checkpoint, on fresh tasks (goal ~ the run's distribution):

- *exploration*: the first episode, z from the prior and mean actions (oyster's evaluation). How
  far does it move (mean |action| in [-1, 1] units), and how much of the goal does the posterior
  mean given that episode carry (held-out R² of a linear map from the posterior mean to the goal)?
- *encoder*: the same R² for hand-made contexts of as many transitions: positions uniform over the
  goal square widened by 0.1 ("spread"), or within 0.1 of the goal ("near goal"), random actions,
  the task's reward. A high R² here and a low one above means the exploration, not the encoder.
- *policy*: the return of one mean-action episode under each context's posterior mean, beside
  the exploration episode's. The policy is as good as its z when the near-goal return approaches
  what SAC reaches with the goal observed (experiments/README.md, "PEARL on 2D navigation").

    python experiments/pearl_encoder.py experiments/results/navigation/pearl_seed0 --json out.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from caml_rl import load_run
from caml_rl.pearl import NextObservations
from caml_rl.pearl_nets import LatentActor
from caml_rl.sampler import Sampler


def held_out_r2(mu: np.ndarray, goals: np.ndarray) -> list[float]:
    """R² per goal coordinate of a least-squares map ``[mu, 1] -> goal`` fitted on the first three
    quarters of the tasks and scored on the last quarter."""
    x, cut = np.c_[mu, np.ones(len(mu))], 3 * len(mu) // 4
    coef, *_ = np.linalg.lstsq(x[:cut], goals[:cut], rcond=None)
    error = ((x[cut:] @ coef - goals[cut:]) ** 2).sum(0)
    return (1 - error / ((goals[cut:] - goals[cut:].mean(0)) ** 2).sum(0)).round(3).tolist()


def diagnose(run_dir: str, tasks: int, seed: int) -> dict:
    run = load_run(run_dir)
    agent, dist = run.policy, run.distribution
    if dist.name != "navigation2d" or run.config.algorithm != "pearl":
        raise SystemExit(f"{run_dir}: need a PEARL run on navigation2d, got {run.config.algorithm} on {dist.name}")
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    goals = dist.sample_tasks(rng, tasks)
    goal = torch.as_tensor(goals, dtype=torch.float32)
    hook = NextObservations()
    sampler = Sampler(dist, tasks, 1, run.device, hook=hook)

    def episode(z: torch.Tensor):
        return sampler.sample(agent, goals, {}, rng, g, True, actor=LatentActor(agent, z[:, None]))

    out: dict = {"run": run_dir, "tasks": tasks, "seed": seed}
    try:
        with torch.no_grad():
            first = episode(torch.randn(tasks, agent.latent_size, generator=g))
            move = lambda x: x.movedim(0, 2)[:, 0]  # noqa: E731  [T, tasks, 1, ...] -> [tasks, T, ...]
            actions = agent.from_env(move(first.actions))
            mask = move(first.mask)
            context = agent.context(move(first.obs), actions, move(first.rewards), move(hook.of(first)))
            mu, var = agent.posterior(context, mask)
            valid = mask.bool()
            out["exploration"] = {
                "return": float(first.task_returns().mean()),
                "mean_abs_action": float(actions[valid].abs().mean()),
                "r2": held_out_r2(mu.numpy(), goals),
                "posterior_variance": float(var.mean()),
                "return_under_posterior_mean": float(episode(mu).task_returns().mean()),
            }
            n, half = dist.horizon, (dist.goal_high - dist.goal_low) / 2 + 0.1
            centre = (dist.goal_high + dist.goal_low) / 2
            for name, pos in (
                ("spread", centre + (torch.rand(tasks, n, 2, generator=g) * 2 - 1) * half),
                ("near_goal", goal[:, None] + (torch.rand(tasks, n, 2, generator=g) * 2 - 1) * 0.1),
            ):
                a = torch.rand(tasks, n, 2, generator=g) * 2 - 1
                next_pos = pos + agent.to_env(a)
                reward = -torch.linalg.vector_norm(next_pos - goal[:, None], dim=-1)
                mu, var = agent.posterior(agent.context(pos, a, reward, next_pos))
                out[name] = {
                    "r2": held_out_r2(mu.numpy(), goals),
                    "posterior_variance": float(var.mean()),
                    "return_under_posterior_mean": float(episode(mu).task_returns().mean()),
                }
    finally:
        sampler.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    result = diagnose(args.run_dir, args.tasks, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
