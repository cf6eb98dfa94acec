"""Refuse a batch that cannot fit in the device's memory before anything is allocated or written."""

from __future__ import annotations

import os
from typing import Any

from .config import Config, ConfigError, PolicyConfig


def memory_estimate(policy: PolicyConfig, obs_dim: int, act_dim: int, horizon: int, tasks: int, episodes: int) -> int:
    """Rough bytes for one batch of ``tasks x episodes`` episodes of ``horizon`` steps: the episode
    buffers, the hidden activations kept for the (second-order) meta-gradient, twice (before and
    after adaptation), plus the weights and the copies TRPO and per-task fast weights make."""
    sizes = [obs_dim + policy.context_size, *policy.hidden_sizes, act_dim]
    params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    per_step = obs_dim + act_dim + 8 + 3 * sum(policy.hidden_sizes)
    return 4 * (2 * horizon * tasks * episodes * per_step + (20 + 4 * tasks) * params)


def machine_memory(device: Any = "cpu") -> int:
    """Total memory of ``device`` in bytes (the machine's RAM for the CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(n: float) -> str:
    return f"{n / 1e12:.1f} TB" if n >= 1e12 else f"{n / 1e9:.1f} GB"


def check_memory(
    policy: PolicyConfig,
    obs_dim: int,
    act_dim: int,
    horizon: int,
    batch: tuple[int, int],
    device: Any,
    what: str,
    lower: str,
) -> None:
    """Refuse a batch that cannot fit in the device's memory before anything is allocated or
    written; ``what`` names the batch, ``lower`` the keys or flags that shrink it."""
    tasks, episodes = batch
    need = memory_estimate(policy, obs_dim, act_dim, horizon, tasks, episodes)
    have = machine_memory(device)
    if need > have:
        raise ConfigError(
            f"{what} needs about {_gb(need)} (horizon {horizon} x {tasks} tasks x {episodes} episodes, "
            f"hidden sizes {policy.hidden_sizes}) but {device} has {_gb(have)}; lower {lower}"
        )


def check_training_memory(
    config: Config, obs_dim: int, act_dim: int, horizon: int, local_tasks: int, device: Any
) -> None:
    """Refuse a meta-training run whose iteration (this worker's ``local_tasks``) or final
    evaluation cannot fit, before anything is allocated or written."""
    lower = "env.settings.horizon, meta_batch_size, episodes_per_task or policy.hidden_sizes"
    batch = (local_tasks, config.episodes_per_task)
    check_memory(config.policy, obs_dim, act_dim, horizon, batch, device, "one meta-iteration", lower)
    lower = "evaluation.tasks, evaluation.episodes or env.settings.horizon"
    batch = (config.evaluation.tasks, config.evaluation.episodes)
    check_memory(config.policy, obs_dim, act_dim, horizon, batch, device, "the evaluation", lower)
