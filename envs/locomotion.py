"""What every locomotion task distribution shares: settings, spaces, and the hooks a task fills in.

A task file says how to measure progress (``position``) and what a step earns and whether it
ends the episode (``reward_and_termination``); ``LocomotionVecEnv`` (``locomotion_env``) does the
rest on whichever simulator the ``simulator`` setting names. The hooks are array maths written
once for both kinds of state: numpy float64 on the host (the C backends) and torch float32 on the
device (the Warp backend); ``xp(x)`` gives the matching module for the few functions (``sqrt``)
that are not operators.
"""

from __future__ import annotations

import dataclasses
import math
from types import ModuleType
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
import torch

from .base import BatchedEnv, TaskDistribution, TaskDistributionError
from .locomotion_env import make_locomotion_env
from .mujoco_render import MujocoSingleTaskEnv
from .simulator import SIMULATORS, Simulator, load_model

Array = Any  # np.ndarray on the host simulators, torch.Tensor on the device one


def xp(x: Array) -> ModuleType:
    """``torch`` for a tensor, ``numpy`` otherwise: both have ``abs``, ``sqrt``, ``square``."""
    return torch if isinstance(x, torch.Tensor) else np


def check_setting(
    dist: Any,
    key: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    integer: bool = False,
    low_open: bool = False,
) -> None:
    """Raise a one-line ``TaskDistributionError`` unless setting ``key`` lies in its allowed range."""
    value = getattr(dist, key)
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        lo = "(" if low_open else "["
        rng = f"{lo}{low}, {high}]" if math.isfinite(high) else f"{lo}{low}, inf)"
        raise TaskDistributionError(f"env setting {key}={value!r} must be {kind} in {rng}")


def check_interval(
    dist: Any,
    low_key: str,
    high_key: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
) -> None:
    """Both ends in range and ``low_key <= high_key``."""
    check_setting(dist, low_key, low, high, low_open=low_open)
    check_setting(dist, high_key, low, high, low_open=low_open)
    a, b = getattr(dist, low_key), getattr(dist, high_key)
    if not a <= b:
        raise TaskDistributionError(f"env settings {low_key}={a} and {high_key}={b}: need {low_key} <= {high_key}")


@dataclasses.dataclass
class MujocoTaskDistribution(TaskDistribution):
    """Base of the locomotion distributions: a gymnasium XML, reset noise and a control cost.

    Subclasses set ``xml_file``, ``label``, ``root_qpos_skip`` (leading qpos entries left out of
    the observation), a robot that can fall implements ``survival`` (and ``configure`` for dynamics
    tasks); a task kind fills in ``task_reward``. ``reward_and_termination`` puts them together.
    """

    xml_file: ClassVar[str]
    label: ClassVar[str]
    root_qpos_skip: ClassVar[int]

    frame_skip: int = 5
    reset_noise_scale: float = 0.1
    ctrl_cost_weight: float = 0.05
    action_scale: float = 1.0
    """Policy actions are divided by this, then clipped to the actuator range (pytorch-maml-rl's
    ``normalization_scale``, 10 in its MuJoCo configs); the action space is ``[-scale, scale]``."""
    observe_torso_com: bool = False
    """Append the torso's position (``xpos`` of body 1, absolute x included: pytorch-maml-rl's
    ``get_body_com("torso")``) to the observation."""
    simulator: str = "batch"
    """batch: mujoco.batch on every CPU core (bit-exact with gymnasium; mujoco.rollout on mujoco < 4);
    rollout: mujoco.rollout; warp: MuJoCo Warp on the policy's device (``pip install 'caml-rl[warp]'``)."""

    @property
    def model(self) -> mujoco.MjModel:
        return load_model(self.xml_file)

    @property
    def dt(self) -> float:
        return self.model.opt.timestep * self.frame_skip

    @property
    def observation_space(self) -> gym.spaces.Box:
        m = self.model
        dim = m.nq - self.root_qpos_skip + m.nv + (3 if self.observe_torso_com else 0)
        return gym.spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)

    @property
    def action_space(self) -> gym.spaces.Box:
        s = float(self.action_scale)
        return gym.spaces.Box(-s, s, shape=(self.model.nu,), dtype=np.float32)

    def validate_settings(self) -> None:
        super().validate_settings()
        check_setting(self, "frame_skip", 1, 1000, integer=True)
        check_setting(self, "reset_noise_scale", 0.0, 10.0)
        check_setting(self, "ctrl_cost_weight", 0.0)
        check_setting(self, "action_scale", 0.0, 1e6, low_open=True)
        if not isinstance(self.observe_torso_com, bool):
            raise TaskDistributionError(
                f"env setting observe_torso_com={self.observe_torso_com!r} must be true or false"
            )
        if self.simulator not in SIMULATORS:
            raise TaskDistributionError(
                f"env setting simulator={self.simulator!r} is not known; allowed: {', '.join(SIMULATORS)}"
            )
        if self.simulator == "warp":
            from .warp_sim import require_warp

            require_warp()  # one line saying how to install it, before a run starts

    def make_vec_env(self, num_envs: int, device: torch.device, *, backend: str | None = None) -> BatchedEnv:
        """``backend`` overrides the ``simulator`` setting (tests compare backends with it)."""
        return make_locomotion_env(self, num_envs, device, backend or self.simulator)

    def render_env(self, task: np.ndarray) -> gym.Env:
        """One task as a Gymnasium env rendering ``rgb_array`` frames (MuJoCo's OpenGL renderer)."""
        return MujocoSingleTaskEnv(self, task, render_mode="rgb_array")

    # hooks: array maths on the simulator's own arrays (numpy on the host, torch on the device) ------
    def position(self, sim: Simulator) -> Array:
        """The ``[N, k]`` position whose change over a step is the velocity ``reward_and_termination`` receives."""
        return sim.state_qpos[:, :1]

    def configure(self, sim: Simulator, tasks: np.ndarray) -> None:
        """Set per-simulation model fields for ``tasks`` (dynamics tasks); reward tasks do nothing."""

    def reward_and_termination(
        self,
        tasks: Array,
        velocity: Array,
        ctrl_cost: Array,
        sim: Simulator,
        ids: np.ndarray | None,
    ) -> tuple[Array, Array | None]:
        """``(reward [n], terminated bool [n] or None for never)`` of the stepped sims ``ids`` (None: all):
        the task's term, plus the robot's survive bonus, minus the control cost.

        ``tasks``, ``velocity`` and ``ctrl_cost`` hold those sims' rows already.
        """
        qpos = sim.state_qpos if ids is None else sim.state_qpos[ids]
        reward = self.task_reward(tasks, velocity, qpos)
        bonus, terminated = self.survival(qpos)
        if bonus is not None:
            reward = reward + bonus
        return reward - ctrl_cost, terminated

    def survival(self, qpos: Array) -> tuple[Array | None, Array | None]:
        """``(survive bonus [n] or None, terminated bool [n] or None)`` from ``qpos`` ``[n, nq]`` after
        the step; a robot that never falls (the default) has neither."""
        return None, None

    def task_reward(self, tasks: Array, velocity: Array, qpos: Array) -> Array:
        """The task's term of the reward ``[n]``, to which ``reward_and_termination`` adds the robot's
        own terms (control cost, survive bonus): ``velocity`` ``[n, k]`` (forward x first) and ``qpos``
        ``[n, nq]`` after the step, of the same sims as ``tasks``."""
        raise NotImplementedError


# Task kinds every robot shares: listed before the robot's base class (``class AntVel(VelocityTasks, _Ant)``),
# they add the task's settings, its sampling and its reward term; the robot adds the rest of the reward.
@dataclasses.dataclass
class VelocityTasks:
    """Goal forward (x) velocity ~ U[velocity_low, velocity_high]; task reward = -|v_x - goal|."""

    task_names = ("goal_velocity",)

    velocity_low: float = 0.0
    velocity_high: float = 2.0

    def validate_settings(self) -> None:
        super().validate_settings()  # type: ignore[misc]  # the robot's checks first
        check_interval(self, "velocity_low", "velocity_high", -20.0, 20.0)

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        return rng.uniform(self.velocity_low, self.velocity_high, size=(num_tasks, 1))

    def task_reward(self, tasks: Array, velocity: Array, qpos: Array) -> Array:
        return -abs(velocity[:, 0] - tasks[:, 0])


@dataclasses.dataclass
class DirectionTasks:
    """Direction in {-1, +1} along x (fair coin); task reward = direction * v_x."""

    task_names = ("direction",)

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        return rng.choice(np.array([-1.0, 1.0]), size=(num_tasks, 1))

    def task_reward(self, tasks: Array, velocity: Array, qpos: Array) -> Array:
        return tasks[:, 0] * velocity[:, 0]
