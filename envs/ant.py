"""Ant task distributions (Finn et al. 2017; Rothfuss et al. 2019): velocity, direction, goal position.

Physics, observation and healthy check are gymnasium's Ant-v5 without contact forces:
observation = ``qpos[2:]``, ``qvel`` (27 numbers), and no contact cost. Contact forces
(``cfrc_ext``) need ``mj_rnePostConstraint``, which batched stepping does not run, and the
meta-RL Ant setups leave them out. Every reward adds a survive bonus (``healthy_reward`` while
the torso height lies in ``[healthy_z_low, healthy_z_high]``) and subtracts
``ctrl_cost_weight * ||a||^2``. Velocities are measured on the torso's ``xpos`` exactly as
Ant-v5 does, so ``velocity`` matches its ``info["x_velocity"]``. Rewards are array maths that
run on numpy (C backends) and torch (Warp) alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .base import TaskDistributionError
from .locomotion import Array, DirectionTasks, MujocoTaskDistribution, VelocityTasks, check_interval, check_setting, xp
from .simulator import Simulator

_TORSO = 1  # body id of the torso in gymnasium's ant.xml (Ant-v5's main_body)


@dataclasses.dataclass
class _Ant(MujocoTaskDistribution):
    """Shared settings (Ant-v5's defaults); ``terminated`` when unhealthy if ``terminate_when_unhealthy``."""

    xml_file = "ant.xml"
    root_qpos_skip = 2

    horizon: int = 200
    ctrl_cost_weight: float = 0.5
    healthy_reward: float = 1.0
    terminate_when_unhealthy: bool = True
    healthy_z_low: float = 0.2
    healthy_z_high: float = 1.0
    frame_skip: int = 5
    reset_noise_scale: float = 0.1

    def validate_settings(self) -> None:
        super().validate_settings()
        check_setting(self, "healthy_reward", -100.0, 100.0)
        check_interval(self, "healthy_z_low", "healthy_z_high", 0.0, 10.0)
        if not isinstance(self.terminate_when_unhealthy, bool):
            raise TaskDistributionError(
                f"env setting terminate_when_unhealthy={self.terminate_when_unhealthy!r} must be true or false"
            )

    def position(self, sim: Simulator) -> Array:
        return sim.body_xpos(_TORSO)[:, :2]

    def survival(self, qpos: Array) -> tuple[Array, Array | None]:
        z = qpos[:, 2]
        healthy = (self.healthy_z_low <= z) & (z <= self.healthy_z_high)  # state is finite: checked before
        return self.healthy_reward * healthy, (~healthy if self.terminate_when_unhealthy else None)


@dataclasses.dataclass
class AntVel(VelocityTasks, _Ant):
    """Goal forward (x) velocity ~ U[velocity_low, velocity_high]; reward = -|v_x - goal| + survive - ctrl."""

    name = "ant_vel"
    label = "AntVel"

    velocity_high: float = 3.0


@dataclasses.dataclass
class AntDir(DirectionTasks, _Ant):
    """Direction in {-1, +1} along x (fair coin); reward = direction * v_x + survive - ctrl."""

    name = "ant_dir"
    label = "AntDir"


@dataclasses.dataclass
class AntGoal(_Ant):
    """Goal position ~ U[goal_low, goal_high]^2; reward = -||xy - goal|| + survive - ctrl.

    The distance is Euclidean (``goal_norm=2``, the default) between the torso's current x, y
    (``qpos[:2]`` after the step) and the goal. ``goal_norm=1`` gives the L1 distance that
    ProMP's and pytorch-maml-rl's ant-goal code used, for comparing with their numbers.
    """

    name = "ant_goal"
    label = "AntGoal"
    task_names = ("goal_x", "goal_y")

    goal_low: float = -3.0
    goal_high: float = 3.0
    goal_norm: int = 2

    def validate_settings(self) -> None:
        super().validate_settings()
        check_interval(self, "goal_low", "goal_high", -100.0, 100.0)
        if self.goal_norm not in (1, 2) or isinstance(self.goal_norm, bool):
            raise TaskDistributionError(f"env setting goal_norm={self.goal_norm!r} must be 1 or 2")

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        return rng.uniform(self.goal_low, self.goal_high, size=(num_tasks, 2))

    def task_reward(self, tasks: Array, velocity: Array, qpos: Array) -> Array:
        diff = qpos[:, :2] - tasks
        if self.goal_norm == 1:
            return -abs(diff).sum(1)
        return -xp(diff).sqrt((diff * diff).sum(1))
