"""Actions on their way into an env: Box actions clipped to the action space's bounds.

The env layer's rule, shared by the sampler, :class:`~caml_rl.envs.SingleTaskEnv`,
:class:`~caml_rl.envs.TaskVecEnv` and ``AdaptedPolicy.predict``, so it lives with the envs
(the policy package imports it from here; nothing here imports the policy).
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch


def clip_bounds(action_space: gym.spaces.Space) -> tuple[np.ndarray, np.ndarray] | None:
    """The Box bounds actions are clipped to before they reach an env; None if nothing to clip.

    As in Stable-Baselines3, the env gets the clipped action while the log-probability (and so
    every gradient) stays that of the unclipped Gaussian sample.
    """
    if not isinstance(action_space, gym.spaces.Box):
        return None
    low = np.asarray(action_space.low, dtype=np.float32).reshape(-1)
    high = np.asarray(action_space.high, dtype=np.float32).reshape(-1)
    if not (np.isfinite(low).any() or np.isfinite(high).any()):
        return None
    return low, high


def action_clipper(action_space: gym.spaces.Space, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``clip(actions)`` to the Box bounds of ``action_space`` (identity for Discrete or unbounded)."""
    bounds = clip_bounds(action_space)
    if bounds is None:
        return lambda actions: actions
    low, high = bounds
    if (low == low[0]).all() and (high == high[0]).all():  # scalar bounds: the cheaper clamp
        lo, hi = float(low[0]), float(high[0])
        return lambda actions: actions.clamp(lo, hi)
    low_t, high_t = torch.as_tensor(low, device=device), torch.as_tensor(high, device=device)
    return lambda actions: torch.clamp(actions, low_t.to(actions.dtype), high_t.to(actions.dtype))
