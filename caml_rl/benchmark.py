"""Throughput of the simulator, the sampler, whole meta-iterations and the meta-update,
measured in one process on the same batch, so their ratios say where the time goes."""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch

from caml_rl import envs

from .config import Config, load_config
from .timing import recording
from .trainer import Trainer

PRESETS = {
    # the paper's HalfCheetah scale (CAVIA): 200 x 200 hidden, 50 context numbers, horizon 200
    "paper": {"horizon": 200, "hidden": [200, 200], "context": 50},
    # pytorch-maml-rl's HalfCheetah batch (40 tasks x 20 episodes, horizon 100) with a 100 x 100 ReLU
    # network; its own policy is 64 x 64 tanh (experiments/configs/halfcheetah_dir_maml_peer.yaml)
    "maml-rl": {"horizon": 100, "hidden": [100, 100], "context": 50},
}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def physics_steps_per_s(
    dist: envs.TaskDistribution,
    num_envs: int,
    horizon: int,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """``(env steps per second, warm-up seconds)`` of the simulator alone, open loop: no policy,
    no observations.

    MuJoCo tasks step their model on the distribution's ``simulator`` backend (``mujoco.batch`` on
    all cores, or MuJoCo Warp on ``device`` with its controls drawn there); other task
    distributions step their batched env on ``device`` with random actions. Warp's first two steps
    (kernel compilation and graph capture) are the warm-up, not timed; the C backends have none.
    """
    device = torch.device(device)
    act_dim = int(np.prod(dist.action_space.shape))
    controls = rng.uniform(-1, 1, size=(horizon, num_envs, act_dim))
    warmup = 0.0
    if hasattr(dist, "model") and hasattr(dist, "frame_skip"):
        from caml_rl.envs.backend_factory import make_simulator

        model = dist.model
        sim = make_simulator(getattr(dist, "simulator", "batch"), model, num_envs, dist.frame_skip, device)
        sim.reset(np.tile(model.qpos0, (num_envs, 1)), np.zeros((num_envs, model.nv)))
        if sim.on_device:
            ctrls = torch.as_tensor(controls, dtype=torch.float32, device=sim.device)
            t0 = time.perf_counter()
            for ctrl in ctrls[:2]:
                sim.set_ctrl(ctrl)
                sim.step()
            _synchronize(sim.device)
            warmup = time.perf_counter() - t0
        else:
            ctrls = controls
        t0 = time.perf_counter()
        for ctrl in ctrls:
            sim.set_ctrl(ctrl)
            sim.step()
        _synchronize(sim.device)
        seconds = time.perf_counter() - t0
        sim.close()
    else:
        env = dist.make_vec_env(num_envs, device)
        env.reset(np.repeat(dist.sample_tasks(rng, 1), num_envs, axis=0), rng)
        acts = torch.as_tensor(controls, dtype=torch.float32, device=device) * float(dist.action_space.high.max())
        t0 = time.perf_counter()
        for a in acts:
            env.step(a)
        _synchronize(device)
        seconds = time.perf_counter() - t0
        env.close()
    return num_envs * horizon / seconds, warmup


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, for labelling measured numbers."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    simulator: str | None = None,
    worlds: list[int] | None = None,
    config_file: str | None = None,
) -> dict[str, Any]:
    """Measure (a) physics, (b) sampler, (c) meta-iterations, (d) one policy forward+backward, and
    (e) the parts of the update (:mod:`caml_rl.timing` sections) in units of (d).

    ``simulator`` picks the MuJoCo backend (``env.settings.simulator``); ``worlds`` adds (a) at
    those numbers of simulations (``physics_steps_per_s_by_worlds``), one horizon each.
    ``config_file`` benchmarks exactly that config (with ``overrides``); the batch arguments
    (``env``, ``tasks``, ``episodes``, ``horizon``, ``method``, ``preset``) are then unused.
    """
    if config_file is not None:
        config = load_config(config_file, [f"device={device}", *(overrides or [])])
        return _measure(config, iterations, worlds)
    extra: list[str] = [f"env.settings.simulator={simulator}"] if simulator else []
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
    return _measure(config, iterations, worlds)


def _measure(config: Config, iterations: int, worlds: list[int] | None) -> dict[str, Any]:
    episodes = config.episodes_per_task
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, tmp)
        trainer.algorithm.open()
        local = trainer.local_tasks  # all tasks, or this worker's share under torchrun
        h = trainer.distribution.horizon
        dist = trainer.distribution
        physics, warmup = physics_steps_per_s(dist, local * episodes, h, np.random.default_rng(0), trainer.device)
        by_worlds = {
            str(n): physics_steps_per_s(dist, n, h, np.random.default_rng(0), trainer.device)[0] for n in worlds or []
        }

        algorithm = trainer.algorithm
        task_rows = trainer.distribution.sample_tasks(trainer.streams.tasks, local)
        if getattr(getattr(algorithm.sampler.env, "sim", None), "on_device", False):
            # Warp: the sampler's first two steps load kernels and capture the step graph
            algorithm.sample_once(task_rows)
        t0 = time.perf_counter()
        sampler = algorithm.sample_once(task_rows) / (time.perf_counter() - t0)

        with recording() as parts:
            per_iter = [trainer.iterate() for _ in range(iterations)]
        fwdbwd = algorithm.fwdbwd_seconds(task_rows)
        trainer.algorithm.close()
        trainer.workers.close()
    it_s = statistics.mean(m["time/iteration_seconds"] for m in per_iter)
    upd_s = statistics.mean(m["time/update_seconds"] for m in per_iter)
    steps = statistics.mean(m["time/env_steps"] for m in per_iter[:1]) if per_iter else 0
    return {
        "env": config.env.name,
        "simulator": getattr(trainer.distribution, "simulator", None),
        "device": str(trainer.device),
        "device_name": device_name(trainer.device),
        "tasks": config.meta_batch_size,
        "episodes": episodes,
        "horizon": h,
        "hidden_sizes": config.policy.hidden_sizes,
        "context_size": config.policy.context_size,
        "torch_threads": torch.get_num_threads(),
        "workers": trainer.workers.world_size,
        "env_steps_per_iteration": steps,
        "physics_steps_per_s": physics,
        "physics_warmup_seconds": warmup,
        "physics_steps_per_s_by_worlds": by_worlds,
        "sampler_steps_per_s": sampler,
        "iteration_seconds": it_s,
        "iteration_steps_per_s": steps / it_s,
        "sampling_seconds": statistics.mean(m["time/sampling_seconds"] for m in per_iter),
        "update_seconds": upd_s,
        "fwdbwd_seconds": fwdbwd,
        "sampler_vs_physics": sampler / physics,
        "iteration_vs_physics": (steps / it_s) / physics,
        "update_vs_fwdbwd": upd_s / fwdbwd,
        # off-policy methods (PEARL) take many gradient steps per iteration: their rate
        "gradient_steps_per_s": statistics.mean(m["time/gradient_steps_per_s"] for m in per_iter)
        if "time/gradient_steps_per_s" in per_iter[0]
        else None,
        # per iteration: each section's seconds, how often it ran, and its seconds in fwd+bwd units
        "update_parts": {
            name: {
                "seconds": sum(t) / len(per_iter),
                "calls": len(t) / len(per_iter),
                "fwdbwd": sum(t) / len(per_iter) / fwdbwd,
            }
            for name, t in parts.items()
        },
        "returns_after_adaptation": [m["return/after_adaptation"] for m in per_iter],
        "adapts": type(algorithm).label(config),  # context (CAML), all (MAML), rl2, pearl, ...
        "details": algorithm.details(),
        "trpo_accepted": [m["trpo/accepted"] for m in per_iter] if "trpo/accepted" in per_iter[0] else None,
        "algorithm": config.algorithm,
    }
