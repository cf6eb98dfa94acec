"""The ``batch`` simulator: ``mujoco.batch`` (mujoco >= 4.0), every env step one C call on all cores.

``mujoco.batch`` keeps each simulation's solver warm-start, which is why observations computed
from its ``qpos``/``qvel`` match gymnasium's HalfCheetah-v5 / Ant-v5 bit for bit. It is the
default backend; on older mujoco ``make_simulator`` falls back to ``mujoco.rollout``.
"""

from __future__ import annotations

import importlib
from typing import Any

import mujoco
import numpy as np

from .simulator import SETCONST_INPUTS, HostSimulator, state_faults

# MuJoCo warnings that mean the numbers went bad (MuJoCo then silently resets the sim).
_BAD_WARNINGS = ("mjWARN_BADQPOS", "mjWARN_BADQVEL", "mjWARN_BADQACC", "mjWARN_BADCTRL")


def _has_batch() -> bool:
    try:
        importlib.import_module("mujoco.batch")
    except ImportError:
        return False
    return True


class BatchSimulator(HostSimulator):
    """``mujoco.batch.Batch``: ``qpos``/``qvel`` are its live ``[nsim, nq]``/``[nsim, nv]`` float64 arrays."""

    backend = "batch"

    def __init__(self, model: mujoco.MjModel, nsim: int, frame_skip: int, nthread: int | None = None):
        super().__init__(model, nsim, frame_skip, nthread)
        self._bad_warnings = np.array([int(getattr(mujoco.mjtWarning, w)) for w in _BAD_WARNINGS])
        self._batch = importlib.import_module("mujoco.batch").Batch(model, nsim=self.nsim, nthread=self.nthread)
        self.qpos = self._batch.bind("qpos")
        self.qvel = self._batch.bind("qvel")
        self._ctrl = self._batch.bind("ctrl")
        # bound now: an output field bound later reads zero until the next call
        self._xpos = self._batch.bind("xpos")

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self._batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
        self.qpos[:] = qpos
        self.qvel[:] = qvel
        self._batch.forward()

    def set_ctrl(self, ctrl: np.ndarray, ids: np.ndarray | None = None) -> None:
        if ids is None:
            self._ctrl[:] = ctrl
        else:
            self._ctrl[ids] = ctrl[ids]

    def step(self, ids: np.ndarray | None = None) -> None:
        self._batch.step(ids=ids, nstep=self.frame_skip)

    def body_xpos(self, body: int) -> np.ndarray:
        return self._xpos[:, body]

    def unstable(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """Non-finite/huge state, or a MuJoCo warning that it reset the sim (bad qpos, qvel, qacc, ctrl)."""
        sel = np.arange(self.nsim) if ids is None else ids
        bad_pos, bad_vel = state_faults(self.qpos[sel], self.qvel[sel])
        warned = (self._batch.warning[sel][:, self._bad_warnings, 1] > 0).any(axis=1)
        bad = bad_pos | bad_vel | warned
        if not bad.any():
            return np.empty(0, dtype=np.int64), []
        reasons = []
        for k in np.flatnonzero(bad):
            parts = []
            if bad_pos[k]:
                parts.append("qpos not finite")
            if bad_vel[k]:
                parts.append("qvel not finite")
            if warned[k]:
                counts = self._batch.warning[sel[k], self._bad_warnings, 1]
                names = [w[7:] for w, c in zip(_BAD_WARNINGS, counts, strict=True) if c > 0]
                parts.append(f"MuJoCo warned {'/'.join(names)} (nan, inf or huge value; it auto-resets the sim)")
            reasons.append("; ".join(parts))
        return sel[bad], reasons

    def set_model_fields(self, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            self._batch.expand(name)[:] = value
        if any(name in SETCONST_INPUTS for name in values):
            self._batch.set_const()

    def close(self) -> None:
        self.__dict__.pop("_batch", None)


# names that lived here before the split into simulator / locomotion / rendering modules
_MOVED = {
    "load_model": "simulator",
    "ASSETS_DIR": "simulator",
    "check_setting": "locomotion",
    "check_interval": "locomotion",
    "MujocoTaskDistribution": "locomotion",
    "LocomotionVecEnv": "locomotion_env",
    "MujocoSingleTaskEnv": "mujoco_render",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
