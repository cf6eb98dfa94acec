"""SB3 PPO's env steps per second on HalfCheetah velocity: ``envs.TaskVecEnv`` against ``DummyVecEnv``.

Both sides run the same PPO (same settings, same number of env steps, one process) on
``halfcheetah_vel`` with the same env settings: through the batched view (one simulator call per
step for all envs) and through SB3's ``DummyVecEnv`` of ``caml/HalfCheetahVel-v0`` Gymnasium envs
(one Python ``step`` per env). Each row is timed ``--repeats`` times, the two sides interleaved so
that load from other processes hits both alike, and the median is reported. Rates are env steps per
second of this process's CPU time (``time.process_time``: on a core shared with other processes,
wall time also counts their turns) and, beside them, of wall time. Run it pinned to one core with
one torch thread: then the simulator runs one thread too and CPU time is the one core's time. The
env-only columns step the vec env with random actions, without PPO. ``--baseline`` adds the settings of
``caml-rl baseline`` (8 envs x 512 steps, minibatch 256, 10 epochs, 100x100 ReLU, horizon 200).

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/benchmark_sb3_view.py --n-envs 20 200 --baseline \
        --out sb3_view.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from caml_rl import envs

ENV, GYM_ID = "halfcheetah_vel", "caml/HalfCheetahVel-v0"
ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


def make_env(kind: str, n_envs: int, horizon: int, seed: int):
    if kind == "TaskVecEnv":
        return envs.TaskVecEnv(envs.make(ENV, horizon=horizon), num_envs=n_envs, seed=seed)  # a new task per episode
    return make_vec_env(GYM_ID, n_envs=n_envs, seed=seed, env_kwargs={"horizon": horizon})


def ppo_steps_per_s(kind: str, setting: dict, steps: int, seed: int) -> tuple[float, float]:
    """Env steps per CPU second and per wall second of ``PPO.learn(steps)`` (rollouts and updates;
    building the model is not timed)."""
    env = make_env(kind, setting["n_envs"], setting["horizon"], seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=setting["n_steps"],
        batch_size=setting["batch_size"],
        n_epochs=setting["n_epochs"],
        policy_kwargs={
            "net_arch": {"pi": setting["hidden"], "vf": setting["hidden"]},
            "activation_fn": ACTIVATIONS[setting["activation"]],
        },
        seed=seed,
        device="cpu",
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    model.learn(steps)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    env.close()
    return model.num_timesteps / cpu, model.num_timesteps / wall


def env_steps_per_s(kind: str, n_envs: int, horizon: int, steps: int, seed: int) -> tuple[float, float]:
    """Env steps per CPU second and per wall second of the vec env alone, random actions in [-1, 1]."""
    env = make_env(kind, n_envs, horizon, seed)
    env.reset()
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(64, n_envs, 6)).astype(np.float32)
    calls = max(1, steps // n_envs)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for k in range(calls):
        env.step(actions[k % 64])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    env.close()
    return calls * n_envs / cpu, calls * n_envs / wall


def settings(args: argparse.Namespace) -> list[dict]:
    rows = [
        {
            "name": f"{n} envs",
            "n_envs": n,
            "n_steps": args.n_steps,
            "batch_size": args.batch_size,
            "n_epochs": args.n_epochs,
            "horizon": args.horizon,
            "hidden": [64, 64],  # SB3's MlpPolicy default
            "activation": "tanh",
        }
        for n in args.n_envs
    ]
    if args.baseline:  # caml-rl baseline's PPOSettings and experiments/configs/halfcheetah_vel_ppo.yaml
        rows.append(
            {
                "name": "caml-rl baseline",
                "n_envs": 8,
                "n_steps": 512,
                "batch_size": 256,
                "n_epochs": 10,
                "horizon": 200,
                "hidden": [100, 100],
                "activation": "relu",
            }
        )
    return rows


KINDS = ("TaskVecEnv", "DummyVecEnv")


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    results = []
    for setting in settings(args):
        steps = max(args.steps, setting["n_envs"] * setting["n_steps"])  # at least one rollout
        ppo: dict[str, list] = {kind: [] for kind in KINDS}
        alone: dict[str, list] = {kind: [] for kind in KINDS}
        for r in range(args.repeats):
            for kind in KINDS:  # interleaved: a burst of load from other processes hits both sides
                alone[kind].append(env_steps_per_s(kind, setting["n_envs"], setting["horizon"], steps, args.seed + r))
                ppo[kind].append(ppo_steps_per_s(kind, setting, steps, args.seed + r))
        row = dict(setting, steps=steps)
        for name, runs in (("ppo", ppo), ("env", alone)):
            for i, clock in enumerate(("cpu", "wall")):
                row[f"{name}_steps_per_{clock}_s"] = {k: statistics.median(x[i] for x in v) for k, v in runs.items()}
                row[f"{name}_runs_per_{clock}_s"] = {k: [round(x[i], 1) for x in v] for k, v in runs.items()}
                rates = row[f"{name}_steps_per_{clock}_s"]
                row[f"{name}_speedup_{clock}"] = rates["TaskVecEnv"] / rates["DummyVecEnv"]
        results.append(row)
        print(f"  {setting['name']}: PPO per CPU s {row['ppo_steps_per_cpu_s']}", file=sys.stderr)
    return {
        "env": ENV,
        "gym_id": GYM_ID,
        "repeats": args.repeats,
        "torch_threads": args.threads,
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "rows": results,
    }


def table(result: dict) -> str:
    lines = [
        "| setting | PPO env steps/s, TaskVecEnv | DummyVecEnv | speed-up | wall-clock speed-up | env alone speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        ppo = row["ppo_steps_per_cpu_s"]
        lines.append(
            f"| {row['name']} ({row['n_steps']} steps x {row['n_envs']} envs, minibatch {row['batch_size']}, "
            f"{row['n_epochs']} epochs, {'x'.join(map(str, row['hidden']))} {row['activation']}) | "
            f"{ppo['TaskVecEnv']:,.0f} | {ppo['DummyVecEnv']:,.0f} | x{row['ppo_speedup_cpu']:.2f} | "
            f"x{row['ppo_speedup_wall']:.2f} | x{row['env_speedup_cpu']:.2f} |"
        )
    return "\n".join(lines) + "\n(env steps per second of CPU time; medians of the repeats)"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-envs", type=int, nargs="+", default=[20, 200], help="envs per vec env (default: 20 200)")
    p.add_argument("--steps", type=int, default=40_000, help="PPO env steps per measurement (default: 40,000)")
    p.add_argument("--n-steps", type=int, default=100, help="PPO steps per env per rollout (default: 100)")
    p.add_argument("--batch-size", type=int, default=1000, help="PPO minibatch (default: 1000)")
    p.add_argument("--n-epochs", type=int, default=10, help="PPO epochs per rollout (default: 10)")
    p.add_argument("--horizon", type=int, default=200, help="episode length (default: 200, the headline runs')")
    p.add_argument("--repeats", type=int, default=3, help="timings per row; the median is reported (default: 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", action="store_true", help="also time caml-rl baseline's PPO settings")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    if min(args.n_envs + [args.steps, args.n_steps, args.batch_size, args.n_epochs, args.repeats, args.threads]) < 1:
        p.error("every count must be at least 1")
    result = run(args)
    print(table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
