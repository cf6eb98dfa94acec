"""RL² training speed: caml-rl's own recurrent PPO against sb3-contrib's ``RecurrentPPO`` on trials.

Both sides train the same RL² problem on HalfCheetah velocity at the headline task settings
(``experiments/configs/halfcheetah_vel_rl2.yaml``): 200 simulations in one batched env, trials of 2
episodes x 200 steps (80k env steps per iteration), a recurrent actor and a recurrent critic of 64
units, PPO with 5 epochs of 4 minibatches. caml-rl runs ``algorithm: rl2`` (40 tasks x 5 trials,
GRU); sb3-contrib runs ``RecurrentPPO`` (``MlpLstmPolicy``, LSTM) on ``envs.TrialVecEnv`` over
``envs.TaskVecEnv`` (200 envs, one task each per trial), so both step the same batched simulator.
Each side runs ``--iterations`` iterations after one warm-up iteration; the report gives env steps
per second of this process's CPU time (``time.process_time``) and of wall time, split into
sampling and update where the side reports it. Run it pinned to one core with one torch thread:

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/benchmark_rl2_recurrent_ppo.py --out rl2_vs_sb3.json

sb3-contrib is not a caml-rl dependency: ``pip install sb3-contrib`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from caml_rl import envs, load_config
from caml_rl.config import make_distribution
from caml_rl.reproduction import machine_record
from caml_rl.trainer import Trainer

CONFIG = Path(__file__).parent / "configs" / "halfcheetah_vel_rl2.yaml"


def clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def caml_rl_side(iterations: int, seed: int) -> dict:
    config = load_config(CONFIG, [f"seed={seed}"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir)
        trainer.algorithm.open()
        trainer.iterate()  # warm-up
        cpu0, wall0 = clocks()
        start, sampling = trainer.env_steps, 0.0
        for _ in range(iterations):
            sampling += trainer.iterate()["time/sampling_seconds"]
        cpu1, wall1 = clocks()
        steps = trainer.env_steps - start
        trainer.algorithm.close()
    wall = wall1 - wall0
    return {
        "env_steps": int(steps),
        "env_steps_per_cpu_second": steps / (cpu1 - cpu0),
        "env_steps_per_wall_second": steps / wall,
        "sampling_share_of_wall": sampling / wall,
    }


def sb3_contrib_side(iterations: int, seed: int) -> dict:
    from sb3_contrib import RecurrentPPO

    config = load_config(CONFIG)
    trials, horizon = config.meta_batch_size * config.episodes_per_task, 200
    view = envs.TrialVecEnv(envs.TaskVecEnv(make_distribution(config.env), num_envs=trials, seed=seed), 2, seed=seed)
    n_steps = 2 * horizon  # one trial per env per iteration: 80k env steps
    model = RecurrentPPO(
        "MlpLstmPolicy",
        view,
        n_steps=n_steps,
        batch_size=trials * n_steps // config.rl2.minibatches,
        n_epochs=config.rl2.epochs,
        learning_rate=config.rl2.lr,
        gamma=config.rl2.gamma,
        gae_lambda=config.rl2.gae_lambda,
        clip_range=config.rl2.clip_range,
        ent_coef=0.0,
        policy_kwargs={"lstm_hidden_size": config.rl2.hidden_size, "net_arch": []},
        seed=seed,
        device="cpu",
    )
    per_iteration = trials * n_steps
    model.learn(per_iteration)  # warm-up
    cpu0, wall0 = clocks()
    model.learn(iterations * per_iteration, reset_num_timesteps=False)
    cpu1, wall1 = clocks()
    steps = iterations * per_iteration
    return {
        "env_steps": steps,
        "env_steps_per_cpu_second": steps / (cpu1 - cpu0),
        "env_steps_per_wall_second": steps / (wall1 - wall0),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per side (after one warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    report = {
        "machine": machine_record(),
        "torch_threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "caml_rl_rl2": caml_rl_side(args.iterations, args.seed),
        "sb3_contrib_recurrent_ppo": sb3_contrib_side(args.iterations, args.seed),
    }
    ours, theirs = report["caml_rl_rl2"], report["sb3_contrib_recurrent_ppo"]
    report["speedup_cpu"] = ours["env_steps_per_cpu_second"] / theirs["env_steps_per_cpu_second"]
    json.dump(report, sys.stdout, indent=2)
    print()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
