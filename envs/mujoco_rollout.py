"""The ``rollout`` simulator: ``mujoco.rollout``, the fallback for mujoco 3.2.7 to 3.3.x.

``mujoco.rollout`` is stateless between calls (the solver warm-start restarts every env step),
so it stays close to gymnasium without being bit-exact. Per-simulation model fields become one
model per distinct parameter row, shared by the simulations that use it.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect

import mujoco
import numpy as np

from .simulator import SETCONST_INPUTS, HostSimulator, state_faults


class RolloutSimulator(HostSimulator):
    """``qpos``/``qvel`` are live views into the full-physics state rows that ``mujoco.rollout`` steps."""

    backend = "rollout"

    def __init__(self, model: mujoco.MjModel, nsim: int, frame_skip: int, nthread: int | None = None):
        super().__init__(model, nsim, frame_skip, nthread)
        rollout = importlib.import_module("mujoco.rollout")
        base = copy.copy(self.model)
        # without auto-reset a blow-up stays visible in the state, where unstable() sees it
        autoreset = getattr(mujoco.mjtDisableBit, "mjDSBL_AUTORESET", None)
        if autoreset is not None:
            base.opt.disableflags |= int(autoreset)
        self._base = base
        self._models: list[mujoco.MjModel] | mujoco.MjModel = base
        self._datas = [mujoco.MjData(base) for _ in range(self.nthread)]
        spec = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
        nstate = mujoco.mj_stateSize(base, spec)
        data = mujoco.MjData(base)
        self._state0 = np.empty(nstate)
        mujoco.mj_getState(base, data, self._state0, spec)
        self.state = np.tile(self._state0, (self.nsim, 1))
        t, q = int(mujoco.mjtState.mjSTATE_TIME), int(mujoco.mjtState.mjSTATE_QPOS)
        qpos_at, qvel_at = mujoco.mj_stateSize(base, t), mujoco.mj_stateSize(base, t | q)
        self._qpos_at = qpos_at
        self.qpos = self.state[:, qpos_at : qpos_at + base.nq]
        self.qvel = self.state[:, qvel_at : qvel_at + base.nv]
        self._prev_qpos = self.qpos.copy()
        self._ctrl = np.zeros((self.nsim, base.nu))
        if hasattr(rollout, "Rollout"):
            self._rollout = rollout.Rollout(nthread=self.nthread)
            self._rollout_fn = self._rollout.rollout
        else:  # older: the module function (threads = len(data)), pooled where it can be
            self._rollout = rollout
            self._rollout_fn = rollout.rollout
            if "persistent_pool" in inspect.signature(rollout.rollout).parameters:
                self._rollout_fn = functools.partial(rollout.rollout, persistent_pool=True)

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self.state[:] = self._state0
        self.qpos[:] = qpos
        self.qvel[:] = qvel
        self._prev_qpos = self.qpos.copy()

    def set_ctrl(self, ctrl: np.ndarray, ids: np.ndarray | None = None) -> None:
        self._ctrl[:] = ctrl

    def step(self, ids: np.ndarray | None = None) -> None:
        sel = slice(None) if ids is None else ids
        models = self._models
        if ids is not None and isinstance(models, list):
            models = [models[i] for i in ids]
        control = np.repeat(self._ctrl[sel][:, None, :], self.frame_skip, axis=1)
        out, _ = self._rollout_fn(
            models,
            self._datas,
            np.ascontiguousarray(self.state[sel]),
            control,
            control_spec=int(mujoco.mjtState.mjSTATE_CTRL),
            nstep=self.frame_skip,
        )
        prev = out[:, -2] if self.frame_skip > 1 else self.state[sel]
        if self.model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4:
            prev = out[:, -1]  # RK4's last kinematics are at its final stage, near the end state
        self._prev_qpos[sel] = prev[:, self._qpos_at : self._qpos_at + self.model.nq]
        self.state[sel] = out[:, -1]

    def body_xpos(self, body: int) -> np.ndarray:
        """Only for a root body on a free joint, whose ``xpos`` is its joint's ``qpos``; the one-substep
        lag is approximated from the previous substep's state (close, not equal)."""
        m = self.model
        if m.body_jntnum[body] < 1 or m.jnt_type[m.body_jntadr[body]] != mujoco.mjtJoint.mjJNT_FREE:
            raise NotImplementedError("the rollout fallback gives xpos only for a body on a free joint")
        adr = int(m.jnt_qposadr[m.body_jntadr[body]])
        return self._prev_qpos[:, adr : adr + 3]

    def unstable(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """Non-finite or huge state (auto-reset is off, so a blow-up stays visible)."""
        sel = np.arange(self.nsim) if ids is None else ids
        bad_pos, bad_vel = state_faults(self.qpos[sel], self.qvel[sel])
        bad = bad_pos | bad_vel
        reasons = [
            "; ".join(p for p, b in (("qpos not finite", bad_pos[k]), ("qvel not finite", bad_vel[k])) if b)
            for k in np.flatnonzero(bad)
        ]
        return sel[bad], reasons

    def set_model_fields(self, values: dict[str, np.ndarray]) -> None:
        needs_const = any(name in SETCONST_INPUTS for name in values)
        names = sorted(values)
        flat = np.concatenate([np.asarray(values[n]).reshape(self.nsim, -1) for n in names], axis=1)
        rows, inverse = np.unique(flat, axis=0, return_inverse=True)
        built = []
        for r in range(len(rows)):
            m = copy.copy(self._base)
            first = int(np.flatnonzero(inverse.reshape(-1) == r)[0])
            for name in names:
                getattr(m, name)[...] = values[name][first]
            if needs_const:
                mujoco.mj_setConst(m, mujoco.MjData(m))
            built.append(m)
        self._models = [built[i] for i in inverse.reshape(-1)]

    def close(self) -> None:
        if hasattr(self._rollout, "close"):
            self._rollout.close()
