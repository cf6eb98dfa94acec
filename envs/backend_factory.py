"""The choice of simulator backend by name: the one module that knows all three.

It sits above the interface (``simulator``) and the backends (``mujoco_batch``,
``mujoco_rollout``, ``warp_sim``), each of which imports only the interface. The rollout and Warp
backends are imported on first use: Warp is an optional extra.
"""

from __future__ import annotations

import warnings

import mujoco
import torch

from .base import TaskDistributionError
from .simulator import SIMULATORS, Simulator


def make_simulator(
    backend: str,
    model: mujoco.MjModel,
    nsim: int,
    frame_skip: int,
    device: torch.device | str = "cpu",
) -> Simulator:
    """The ``backend`` simulator; ``batch`` falls back to ``rollout`` (with a warning) on mujoco < 4.0."""
    from . import mujoco_batch  # looked up at call time, so tests can pretend mujoco.batch is missing

    if backend not in SIMULATORS:
        raise TaskDistributionError(f"env setting simulator={backend!r} is not known; allowed: {', '.join(SIMULATORS)}")
    if backend == "batch" and not mujoco_batch._has_batch():
        warnings.warn(
            f"mujoco {mujoco.__version__} has no mujoco.batch: stepping with mujoco.rollout "
            "instead (slower, and not bit-exact with gymnasium); mujoco >= 4.0 is better",
            RuntimeWarning,
            stacklevel=4,
        )
        backend = "rollout"
    if backend == "batch":
        return mujoco_batch.BatchSimulator(model, nsim, frame_skip)
    if backend == "rollout":
        from .mujoco_rollout import RolloutSimulator

        return RolloutSimulator(model, nsim, frame_skip)
    from .warp_sim import WarpSimulator

    return WarpSimulator(model, nsim, frame_skip, torch.device(device))
