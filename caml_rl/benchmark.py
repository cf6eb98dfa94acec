"""Throughput of the simulator, the sampler, whole meta-iterations and the meta-update,
measured in one process on the same batch, so their ratios say where the time goes."""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch

from caml_rl import envs

from .config import load_config
from .partition import as_leaves, initial_fast_weights, policy_forward
from .trainer import Trainer

PRESETS = {
    # the paper's HalfCheetah scale (CAVIA): 200 x 200 hidden, 50 context numbers, horizon 200
    "paper": {"horizon": 200, "hidden": [200, 200], "context": 50},
    # pytorch-maml-rl's HalfCheetah batch (40 tasks x 20 episodes, horizon 100) with a 100 x 100 ReLU
    # network; its own policy is 64 x 64 tanh (experiments/configs/halfcheetah_dir_maml_peer.yaml)
    "maml-rl": {"horizon": 100, "hidden": [100, 100], "context": 50},
}


def physics_steps_per_s(dist: envs.TaskDistribution, num_envs: int, horizon: int, rng: np.random.Generator) -> float:
    """Env steps per second of the simulator alone, open loop, no policy and no observations.

    MuJoCo tasks step their model in one ``MujocoBatch`` on all cores; other task
    distributions step their batched env with random actions.
    """
    act_dim = int(np.prod(dist.action_space.shape))
    controls = rng.uniform(-1, 1, size=(horizon, num_envs, act_dim))
    if hasattr(dist, "model") and hasattr(dist, "frame_skip"):
        from caml_rl.envs.mujoco_batch import MujocoBatch

        model = dist.model
        sim = MujocoBatch(model, num_envs, dist.frame_skip)
        sim.reset(np.tile(model.qpos0, (num_envs, 1)), np.zeros((num_envs, model.nv)))
        t0 = time.perf_counter()
        for ctrl in controls:
            sim.set_ctrl(ctrl)
            sim.step()
        seconds = time.perf_counter() - t0
        sim.close()
    else:
        env = dist.make_vec_env(num_envs, torch.device("cpu"))
        env.reset(np.repeat(dist.sample_tasks(rng, 1), num_envs, axis=0), rng)
        acts = torch.as_tensor(controls, dtype=torch.float32) * float(dist.action_space.high.max())
        t0 = time.perf_counter()
        for a in acts:
            env.step(a)
        seconds = time.perf_counter() - t0
        env.close()
    return num_envs * horizon / seconds


def fwdbwd_seconds(trainer: Trainer, repeats: int = 3) -> float:
    """One forward + backward pass of the policy over an iteration's samples (pre + post)."""
    n = trainer.local_tasks
    fast = as_leaves(initial_fast_weights(trainer.policy, trainer.partition, n))
    tasks = trainer.distribution.sample_tasks(trainer.streams.tasks, n)
    ep = trainer.sampler.sample(trainer.policy, tasks, fast, trainer.streams.env, trainer.streams.actions)
    obs = torch.cat([ep.obs, ep.obs], dim=2)  # twice the batch: pre and post samples
    actions = torch.cat([ep.actions, ep.actions], dim=2)
    times = []
    for _ in range(repeats):
        trainer.policy.zero_grad()
        t0 = time.perf_counter()
        logp = trainer.policy.distribution(policy_forward(trainer.policy, obs, fast)).log_prob(actions)
        logp.sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_benchmark(
    env: str = "halfcheetah_vel",
    tasks: int = 40,
    episodes: int = 20,
    horizon: int | None = 200,
    iterations: int = 3,
    device: str = "cpu",
    method: str = "caml",
    preset: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Measure (a) physics, (b) sampler, (c) meta-iterations, (d) one policy forward+backward."""
    extra: list[str] = []
    if preset:
        p = PRESETS[preset]
        horizon = p["horizon"]
        extra += [
            f"policy.hidden_sizes={p['hidden']}",
            f"policy.context_size={p['context'] if method == 'caml' else 0}",
        ]
    if method == "maml":
        extra += ["adaptation.partition=all", "policy.context_size=0", "adaptation.inner_lr=0.1"]
    elif method != "caml":
        raise ValueError(f"--method {method!r}; allowed: caml, maml")
    if horizon:
        extra.append(f"env.settings.horizon={horizon}")
    config = load_config(
        None,
        [
            f"env.name={env}",
            f"meta_batch_size={tasks}",
            f"episodes_per_task={episodes}",
            f"device={device}",
            *extra,
            *(overrides or []),
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, tmp)
        trainer.sampler = trainer.make_sampler()
        local = trainer.local_tasks  # all tasks, or this worker's share under torchrun
        h = trainer.distribution.horizon
        physics = physics_steps_per_s(trainer.distribution, local * episodes, h, np.random.default_rng(0))

        fast = initial_fast_weights(trainer.policy, trainer.partition, local)
        task_rows = trainer.distribution.sample_tasks(trainer.streams.tasks, local)
        t0 = time.perf_counter()
        ep = trainer.sampler.sample(trainer.policy, task_rows, fast, trainer.streams.env, trainer.streams.actions)
        sampler = ep.num_steps / (time.perf_counter() - t0)

        per_iter = [trainer.iterate() for _ in range(iterations)]
        fwdbwd = fwdbwd_seconds(trainer)
        trainer.sampler.close()
        trainer.workers.close()
    it_s = statistics.mean(m["time/iteration_seconds"] for m in per_iter)
    upd_s = statistics.mean(m["time/update_seconds"] for m in per_iter)
    steps = statistics.mean(m["time/env_steps"] for m in per_iter[:1]) if per_iter else 0
    return {
        "env": env,
        "method": method,
        "device": str(trainer.device),
        "tasks": tasks,
        "episodes": episodes,
        "horizon": h,
        "hidden_sizes": config.policy.hidden_sizes,
        "context_size": config.policy.context_size,
        "torch_threads": torch.get_num_threads(),
        "workers": trainer.workers.world_size,
        "env_steps_per_iteration": steps,
        "physics_steps_per_s": physics,
        "sampler_steps_per_s": sampler,
        "iteration_seconds": it_s,
        "iteration_steps_per_s": steps / it_s,
        "sampling_seconds": statistics.mean(m["time/sampling_seconds"] for m in per_iter),
        "update_seconds": upd_s,
        "fwdbwd_seconds": fwdbwd,
        "sampler_vs_physics": sampler / physics,
        "iteration_vs_physics": (steps / it_s) / physics,
        "update_vs_fwdbwd": upd_s / fwdbwd,
        "returns_after_adaptation": [m["return/after_adaptation"] for m in per_iter],
        "trpo_accepted": [m["trpo/accepted"] for m in per_iter],
    }
