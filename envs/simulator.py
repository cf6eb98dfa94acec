"""The simulator interface the locomotion envs step.

A ``Simulator`` holds ``nsim`` simulations of one MuJoCo model and advances all of them together.
Three backends implement it, one class each:

* ``batch``: ``mujoco.batch`` (mujoco >= 4.0), C on every CPU core; bit-exact with gymnasium.
* ``rollout``: ``mujoco.rollout``, the fallback for mujoco 3.2.7-3.3 (close, not bit-exact).
* ``warp``: MuJoCo Warp, on the policy's device (an NVIDIA GPU, or Warp's CPU device), float32.

The C backends keep their state in host float64 numpy arrays; the Warp backend in float32 torch
tensors on its device (``on_device``), so an env built on it never copies state to the host.
The choice of backend by name is ``backend_factory.make_simulator``, above this interface and its
implementations (each backend imports this module; this module imports none of them).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
import torch

ASSETS_DIR = Path(gym.__file__).resolve().parent / "envs" / "mujoco" / "assets"
SIMULATORS = ("batch", "rollout", "warp")
MAX_ABS_STATE = 1e10  # MuJoCo's own mjMAXVAL for "huge value" checks
# model fields whose derived constants mj_setConst recomputes (mujoco < 4 does not list them)
SETCONST_INPUTS: set[str] = getattr(
    mujoco.MjModel,
    "_setconst_inputs",
    {"body_mass", "body_inertia", "body_pos", "body_quat", "body_ipos", "body_iquat", "dof_armature", "qpos0"},
)


@functools.cache
def load_model(xml_file: str) -> mujoco.MjModel:
    """The model gymnasium ships under ``xml_file``, loaded once per process (never mutate it).

    MuJoCo 4 warns that gymnasium's ``settotalmass`` compiler attribute is deprecated; that
    warning is dropped here (it is about the XML, not the user's run). Others are re-emitted.
    """
    previous = mujoco.get_mju_user_warning()
    notes: list[str] = []
    mujoco.set_mju_user_warning(notes.append)
    try:
        model = mujoco.MjModel.from_xml_path(str(ASSETS_DIR / xml_file))
    finally:
        mujoco.set_mju_user_warning(previous)
    for note in notes:
        if "settotalmass" not in note:
            warnings.warn(f"MuJoCo ({xml_file}): {note}", RuntimeWarning, stacklevel=2)
    return model


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def state_faults(qpos: np.ndarray, qvel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-simulation ``(qpos bad, qvel bad)``: non-finite or beyond MuJoCo's huge-value limit."""
    bad_pos = ~(np.abs(qpos) <= MAX_ABS_STATE).all(axis=1)  # NaN compares False
    bad_vel = ~(np.abs(qvel) <= MAX_ABS_STATE).all(axis=1)
    return bad_pos, bad_vel


class Simulator(ABC):
    """``nsim`` simulations of one model, stepped together ``frame_skip`` physics steps at a time.

    ``qpos``/``qvel`` are ``[nsim, nq]``/``[nsim, nv]`` numpy arrays for inspection and rendering
    (live for the C backends: writes go into the state). ``state_qpos``/``state_qvel`` and
    ``body_xpos`` are the backend's own live arrays, which the env's maths reads: numpy float64 on
    the host, or torch tensors on ``device`` when ``on_device``.
    """

    backend: ClassVar[str]
    on_device: ClassVar[bool] = False
    model: mujoco.MjModel
    nsim: int
    frame_skip: int
    device: torch.device = torch.device("cpu")
    applied_tasks: np.ndarray | None = None
    """What ``configure`` last set per simulation, so a dynamics task can skip repeating it."""
    qpos: Any
    qvel: Any

    @property
    def state_qpos(self) -> Any:
        return self.qpos

    @property
    def state_qvel(self) -> Any:
        return self.qvel

    @abstractmethod
    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Reset every simulation (as ``mj_resetData``), set ``qpos``/``qvel``, run ``mj_forward``."""

    @abstractmethod
    def set_ctrl(self, ctrl: Any, ids: np.ndarray | None = None) -> None:
        """Set the controls ``[nsim, nu]`` of the simulations ``ids`` (all by default)."""

    @abstractmethod
    def step(self, ids: np.ndarray | None = None) -> None:
        """Advance the simulations ``ids`` (all by default) by ``frame_skip`` physics steps."""

    @abstractmethod
    def body_xpos(self, body: int) -> Any:
        """``xpos`` of ``body``, ``[nsim, 3]``, as MjData holds it after ``mj_step``: one substep behind.

        That lag is gymnasium's (Ant-v5 reads ``data.body(1).xpos`` after stepping; under RK4 it is
        the last Runge-Kutta stage's).
        """

    @abstractmethod
    def unstable(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """Simulations (among ``ids``) whose state went bad, and why (host side; reads the state)."""

    @abstractmethod
    def set_model_fields(self, values: dict[str, np.ndarray]) -> None:
        """Give model fields per-simulation values, e.g. ``{"body_mass": [nsim, nbody]}``.

        Constants derived from them (``mj_setConst``) follow, so the physics sees the change.
        """

    def get_data(self, sim: int, data: mujoco.MjData) -> mujoco.MjData:
        """Copy simulation ``sim``'s ``qpos``/``qvel`` into ``data`` (for rendering)."""
        data.qpos[:] = self.qpos[sim]
        data.qvel[:] = self.qvel[sim]
        return data

    def scope(self) -> contextlib.AbstractContextManager:
        """Where work on the state runs (the Warp backend's device and stream); nothing on the host."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Release the simulator's threads and memory."""


class HostSimulator(Simulator):
    """A C backend stepping on the host's CPU cores: ``nthread`` threads (default: every core this
    process may use), at most one per simulation."""

    def __init__(self, model: mujoco.MjModel, nsim: int, frame_skip: int, nthread: int | None = None):
        self.model, self.nsim, self.frame_skip = model, int(nsim), int(frame_skip)
        self.nthread = max(1, min(nthread or cpu_count(), self.nsim))
        self.applied_tasks = None
