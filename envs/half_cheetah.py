"""HalfCheetah task distributions (Finn et al. 2017; Zintgraf et al. 2019): velocity, direction, dynamics.

The physics, observation (``qpos[1:]``, ``qvel``: 17 numbers) and forward velocity
(``(x_after - x_before) / dt``) are gymnasium's HalfCheetah-v5, stepped in batches by the
``simulator`` backend; only the reward differs per task. Episodes never terminate. Rewards are
array maths that run on numpy (C backends) and torch (Warp) alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .base import TaskDistributionError
from .locomotion import Array, DirectionTasks, MujocoTaskDistribution, VelocityTasks, check_interval
from .simulator import Simulator


@dataclasses.dataclass
class _HalfCheetah(MujocoTaskDistribution):
    """Shared settings. Control cost is ``ctrl_cost_weight * ||a||^2`` on the action clipped to [-1, 1]."""

    xml_file = "half_cheetah.xml"
    root_qpos_skip = 1

    horizon: int = 200
    ctrl_cost_weight: float = 0.05
    frame_skip: int = 5
    reset_noise_scale: float = 0.1


@dataclasses.dataclass
class HalfCheetahVel(VelocityTasks, _HalfCheetah):
    """Goal velocity ~ U[velocity_low, velocity_high]; reward = -|v - goal| - ctrl cost."""

    name = "halfcheetah_vel"
    label = "HalfCheetahVel"

    velocity_high: float = 2.0


@dataclasses.dataclass
class HalfCheetahDir(DirectionTasks, _HalfCheetah):
    """Direction in {-1, +1} (fair coin); reward = direction * v - ctrl cost."""

    name = "halfcheetah_dir"
    label = "HalfCheetahDir"


@dataclasses.dataclass
class HalfCheetahDynamics(_HalfCheetah):
    """Same reward for every task (run forward: v - ctrl cost); the physics differ per task.

    ``mass_scale`` multiplies every body's mass and inertia (a uniform change of density, so the
    geometry stays consistent); ``damping_scale`` multiplies every joint's damping. Both are drawn
    log-uniform in their ranges, so a scale and its inverse are equally likely.
    """

    name = "halfcheetah_dynamics"
    label = "HalfCheetahDynamics"
    task_names = ("mass_scale", "damping_scale")

    mass_scale_low: float = 0.5
    mass_scale_high: float = 2.0
    damping_scale_low: float = 0.5
    damping_scale_high: float = 2.0

    def validate_settings(self) -> None:
        super().validate_settings()
        check_interval(self, "mass_scale_low", "mass_scale_high", 0.0, 100.0, low_open=True)
        check_interval(self, "damping_scale_low", "damping_scale_high", 0.0, 100.0, low_open=True)

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        lo = np.log([self.mass_scale_low, self.damping_scale_low])
        hi = np.log([self.mass_scale_high, self.damping_scale_high])
        return np.exp(rng.uniform(lo, hi, size=(num_tasks, 2)))

    def configure(self, sim: Simulator, tasks: np.ndarray) -> None:
        if not (np.isfinite(tasks).all() and (tasks > 0).all()):
            raise TaskDistributionError(f"{self.label}: mass_scale and damping_scale must be finite and > 0")
        if sim.applied_tasks is not None and np.array_equal(sim.applied_tasks, tasks):
            return  # mj_setConst over the batch is the costly part of a reset: skip when unchanged
        m = self.model
        mass, damp = tasks[:, 0], tasks[:, 1]
        sim.set_model_fields(
            {
                "body_mass": m.body_mass[None, :] * mass[:, None],
                "body_inertia": m.body_inertia[None, :, :] * mass[:, None, None],
                "dof_damping": m.dof_damping[None, :] * damp[:, None],
            }
        )
        sim.applied_tasks = tasks.copy()

    def task_reward(self, tasks: Array, velocity: Array, qpos: Array) -> Array:
        return velocity[:, 0]
