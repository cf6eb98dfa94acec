"""Batched MuJoCo simulation shared by the locomotion task distributions.

``MujocoBatch`` holds ``num_envs`` simulations of one model and advances all of them with one
C-level call per env step (``mujoco.batch.Batch`` on mujoco >= 4.0, on every core), so a
sampler never loops over simulations in Python. ``mujoco.batch`` keeps each simulation's solver
warm-start, which is why observations computed here from ``qpos``/``qvel`` match gymnasium's
HalfCheetah-v5 / Ant-v5 bit for bit. On older mujoco (3.2.7 to 3.3.x) it falls back to
``mujoco.rollout`` (stateless between calls: close to gymnasium, not bit-exact).

``MujocoTaskDistribution`` and ``LocomotionVecEnv`` are the glue every locomotion task shares:
reset noise, action scaling, instability checks and the copy of results onto the device.
Task files only say how to observe and how to score.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import math
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
import torch

from .base import BatchedEnv, SingleTaskEnv, TaskDistribution, TaskDistributionError

ASSETS_DIR = Path(gym.__file__).resolve().parent / "envs" / "mujoco" / "assets"

# MuJoCo warnings that mean the numbers went bad (MuJoCo then silently resets the sim).
_BAD_WARNINGS = ("mjWARN_BADQPOS", "mjWARN_BADQVEL", "mjWARN_BADQACC", "mjWARN_BADCTRL")
_MAX_ABS_STATE = 1e10  # MuJoCo's own mjMAXVAL for "huge value" checks


# model fields whose derived constants mj_setConst recomputes (mujoco < 4 does not list them)
_SETCONST_INPUTS = getattr(
    mujoco.MjModel,
    "_setconst_inputs",
    {"body_mass", "body_inertia", "body_pos", "body_quat", "body_ipos", "body_iquat", "dof_armature", "qpos0"},
)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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


class MujocoBatch:
    """``nsim`` simulations of one model, each env step one C call over the whole batch.

    ``qpos``/``qvel`` are live ``[nsim, nq]``/``[nsim, nv]`` float64 arrays; writes go into the
    simulations' state. ``backend`` is ``"batch"`` (mujoco >= 4.0) or ``"rollout"`` (fallback).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        nsim: int,
        frame_skip: int,
        *,
        backend: str | None = None,
        nthread: int | None = None,
    ):
        self.model, self.nsim, self.frame_skip = model, int(nsim), int(frame_skip)
        self.nthread = max(1, min(nthread or _cpu_count(), self.nsim))
        if backend is None:
            backend = "batch" if _has_batch() else "rollout"
            if backend == "rollout":
                warnings.warn(
                    f"mujoco {mujoco.__version__} has no mujoco.batch: stepping with mujoco.rollout "
                    "instead (slower, and not bit-exact with gymnasium); mujoco >= 4.0 is better",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if backend not in ("batch", "rollout"):
            raise ValueError(f"backend={backend!r}: expected 'batch' or 'rollout'")
        self.backend = backend
        self.applied_tasks: np.ndarray | None = None  # what configure() last set, to skip repeats
        self._bad_warnings = np.array([int(getattr(mujoco.mjtWarning, w)) for w in _BAD_WARNINGS])
        if backend == "batch":
            self._batch = importlib.import_module("mujoco.batch").Batch(model, nsim=self.nsim, nthread=self.nthread)
            self.qpos = self._batch.bind("qpos")
            self.qvel = self._batch.bind("qvel")
            self._ctrl = self._batch.bind("ctrl")
            # bound now: an output field bound later reads zero until the next call
            self._xpos = self._batch.bind("xpos")
        else:
            self._init_rollout()

    # ----------------------------------------------------------------------------- state
    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Reset every simulation (as ``mj_resetData``), then set ``qpos``/``qvel`` and run ``mj_forward``."""
        if self.backend == "batch":
            self._batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
            self.qpos[:] = qpos
            self.qvel[:] = qvel
            self._batch.forward()
        else:
            self.state[:] = self._state0
            self.qpos[:] = qpos
            self.qvel[:] = qvel
            self._prev_qpos = self.qpos.copy()

    def set_ctrl(self, ctrl: np.ndarray, ids: np.ndarray | None = None) -> None:
        if self.backend == "batch":
            if ids is None:
                self._ctrl[:] = ctrl
            else:
                self._ctrl[ids] = ctrl[ids]
        else:
            self._ctrl[:] = ctrl

    def step(self, ids: np.ndarray | None = None) -> None:
        """Advance the simulations ``ids`` (all by default) by ``frame_skip`` physics steps."""
        if self.backend == "batch":
            self._batch.step(ids=ids, nstep=self.frame_skip)
        else:
            self._rollout_step(ids)

    def body_xpos(self, body: int) -> np.ndarray:
        """``xpos`` of ``body``, ``[nsim, 3]``, as MjData holds it after ``mj_step``: one substep behind.

        That lag is gymnasium's (Ant-v5 reads ``data.body(1).xpos`` after stepping; under RK4 it is
        the last Runge-Kutta stage's). The rollout fallback supports only a root body on a free
        joint, whose ``xpos`` is its joint's ``qpos``, and approximates that lag (close, not equal).
        """
        if self.backend == "batch":
            return self._xpos[:, body]
        adr = self._free_qposadr(body)
        return self._prev_qpos[:, adr : adr + 3]

    def unstable(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """Simulations (among ``ids``) whose state is non-finite/huge or that raised a MuJoCo warning."""
        sel = np.arange(self.nsim) if ids is None else ids
        qpos, qvel = self.qpos[sel], self.qvel[sel]
        bad_pos = ~(np.abs(qpos) <= _MAX_ABS_STATE).all(axis=1)  # NaN compares False
        bad_vel = ~(np.abs(qvel) <= _MAX_ABS_STATE).all(axis=1)
        warned = np.zeros(len(sel), dtype=bool)
        if self.backend == "batch":
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

    # ---------------------------------------------------------------- per-simulation model
    def set_model_fields(self, values: dict[str, np.ndarray]) -> None:
        """Give model fields per-simulation values, e.g. ``{"body_mass": [nsim, nbody]}``.

        Constants derived from them (``mj_setConst``) follow, so the physics sees the change.
        """
        needs_const = any(name in _SETCONST_INPUTS for name in values)
        if self.backend == "batch":
            for name, value in values.items():
                self._batch.expand(name)[:] = value
            if needs_const:
                self._batch.set_const()
            return
        # rollout: one model per distinct parameter row, shared by the sims that use it
        names = sorted(values)
        flat = np.concatenate([np.asarray(values[n]).reshape(self.nsim, -1) for n in names], axis=1)
        rows, inverse = np.unique(flat, axis=0, return_inverse=True)
        built = []
        for r in range(len(rows)):
            m = copy.copy(self._rollout_base)
            first = int(np.flatnonzero(inverse.reshape(-1) == r)[0])
            for name in names:
                getattr(m, name)[...] = values[name][first]
            if needs_const:
                mujoco.mj_setConst(m, mujoco.MjData(m))
            built.append(m)
        self._models = [built[i] for i in inverse.reshape(-1)]

    def get_data(self, sim: int, data: mujoco.MjData) -> mujoco.MjData:
        """Copy simulation ``sim``'s ``qpos``/``qvel`` into ``data`` (for rendering)."""
        data.qpos[:] = self.qpos[sim]
        data.qvel[:] = self.qvel[sim]
        return data

    def close(self) -> None:
        if self.backend == "rollout" and hasattr(self._rollout, "close"):
            self._rollout.close()
        self.__dict__.pop("_batch", None)

    # ----------------------------------------------------------------- rollout fallback
    def _init_rollout(self) -> None:
        rollout = importlib.import_module("mujoco.rollout")
        base = copy.copy(self.model)
        # without auto-reset a blow-up stays visible in the state, where unstable() sees it
        autoreset = getattr(mujoco.mjtDisableBit, "mjDSBL_AUTORESET", None)
        if autoreset is not None:
            base.opt.disableflags |= int(autoreset)
        self._rollout_base = base
        self._models: list[mujoco.MjModel] | mujoco.MjModel = base
        self._datas = [mujoco.MjData(base) for _ in range(self.nthread)]
        spec = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
        self._spec = spec
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

    def _free_qposadr(self, body: int) -> int:
        m = self.model
        if m.body_jntnum[body] < 1 or m.jnt_type[m.body_jntadr[body]] != mujoco.mjtJoint.mjJNT_FREE:
            raise NotImplementedError("the rollout fallback gives xpos only for a body on a free joint")
        return int(m.jnt_qposadr[m.body_jntadr[body]])

    def _rollout_step(self, ids: np.ndarray | None) -> None:
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


def _has_batch() -> bool:
    try:
        importlib.import_module("mujoco.batch")
    except ImportError:
        return False
    return True


# ================================================================== task distribution glue
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
    the observation) and implement ``score`` (and ``configure`` for dynamics tasks).
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

    def make_vec_env(self, num_envs: int, device: torch.device, *, backend: str | None = None) -> BatchedEnv:
        return LocomotionVecEnv(self, num_envs, device, backend=backend)

    # hooks -------------------------------------------------------------------------------
    def position(self, sim: MujocoBatch) -> np.ndarray:
        """The ``[N, k]`` position whose change over a step is the velocity ``score`` receives."""
        return sim.qpos[:, :1]

    def configure(self, sim: MujocoBatch, tasks: np.ndarray) -> None:
        """Set per-simulation model fields for ``tasks`` (dynamics tasks); reward tasks do nothing."""

    def score(
        self,
        tasks: np.ndarray,
        velocity: np.ndarray,
        ctrl_cost: np.ndarray,
        sim: MujocoBatch,
        ids: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(reward float64 [n], terminated bool [n])`` for the stepped sims ``ids`` (None: all)."""
        raise NotImplementedError


class LocomotionVecEnv(BatchedEnv):
    """The batched env of a ``MujocoTaskDistribution``: one ``MujocoBatch`` plus bookkeeping.

    Terminated sims are no longer stepped (the sampler masks them out anyway); their
    observation freezes and their reward is 0. ``info`` holds the last step's float64
    ``velocity`` (forward velocity as gymnasium's ``info["x_velocity"]``, and y for Ant).
    """

    def __init__(
        self,
        dist: MujocoTaskDistribution,
        num_envs: int,
        device: torch.device | str,
        backend: str | None = None,
    ):
        self.dist, self.num_envs, self.device = dist, int(num_envs), torch.device(device)
        model = dist.model
        self.sim = MujocoBatch(model, self.num_envs, dist.frame_skip, backend=backend)
        if dist.observe_torso_com and self.sim.backend != "batch":
            raise TaskDistributionError(
                f"{dist.label}: observe_torso_com needs mujoco >= 4.0 (mujoco.batch); this is mujoco {mujoco.__version__}"
            )
        self.obs_dim = dist.observation_space.shape[0]
        self.act_dim = model.nu
        lo, hi = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
        # ctrl = mid + a * half: exact (a itself) for the usual [-1, 1] ctrlrange
        self._mid, self._half = (hi + lo) / 2.0, (hi - lo) / 2.0
        self._qpos0 = model.qpos0.copy()
        self._dt = dist.dt  # as gymnasium's: timestep * frame_skip
        self._tasks = np.zeros((self.num_envs, len(dist.task_names)))
        self._done = np.zeros(self.num_envs, dtype=bool)
        self._t = 0
        self.info: dict[str, np.ndarray] = {}
        self._pinned: torch.Tensor | None = None
        self._copied: Any = None
        if self.device.type == "cuda":
            self._pinned = torch.empty(self.num_envs * (self.obs_dim + 2), dtype=torch.float32, pin_memory=True)

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        tasks = np.asarray(tasks, dtype=np.float64)
        if tasks.shape != self._tasks.shape:
            raise TaskDistributionError(
                f"{self.dist.label}: reset got tasks of shape {tasks.shape}, expected {self._tasks.shape}"
            )
        self._tasks = tasks.copy()
        self.dist.configure(self.sim, self._tasks)
        m, s = self.dist.model, self.dist.reset_noise_scale
        # for one sim these are the draws of gymnasium's reset_model: qpos noise, then qvel noise
        qpos = self._qpos0 + rng.uniform(-s, s, size=(self.num_envs, m.nq))
        qvel = s * rng.standard_normal((self.num_envs, m.nv))
        self.sim.reset(qpos, qvel)
        self._done[:] = False
        self._t = 0
        self.info = {}
        obs, _, _ = self._emit(None, None)
        return obs

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if a.shape != (self.num_envs, self.act_dim):
            raise TaskDistributionError(
                f"{self.dist.label}: step got actions of shape {tuple(a.shape)}, "
                f"expected ({self.num_envs}, {self.act_dim})"
            )
        self._t += 1
        if not np.isfinite(a).all():
            bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
            j = int(np.flatnonzero(~np.isfinite(a[bad[0]]))[0])
            self._raise(bad, [f"action[{j}]={a[bad[0], j]}"], "got a non-finite action")
        a = np.clip(a.astype(np.float64) / self.dist.action_scale, -1.0, 1.0)
        ids = None if not self._done.any() else np.flatnonzero(~self._done)
        self.sim.set_ctrl(self._mid + a * self._half, ids)
        before = self.dist.position(self.sim).copy()
        if ids is None or len(ids):
            try:
                self.sim.step(ids)
            except RuntimeError as exc:  # mujoco.batch.SimulationError: mju_error in some sims
                if getattr(exc, "ids", None) is None:
                    raise
                self._raise(np.asarray(exc.ids), [str(exc)], "raised a MuJoCo error")
        bad, reasons = self.sim.unstable(ids)
        if len(bad):
            self._raise(bad, reasons, "became unstable")
        velocity = (self.dist.position(self.sim) - before) / self._dt
        ctrl_cost = self.dist.ctrl_cost_weight * np.sum(np.square(a), axis=1)
        sel = slice(None) if ids is None else ids
        reward = np.zeros(self.num_envs)
        terminated = self._done.copy()
        if ids is None or len(ids):
            r, done = self.dist.score(self._tasks[sel], velocity[sel], ctrl_cost[sel], self.sim, ids)
            reward[sel], terminated[sel] = r, done
        self._done |= terminated
        self.info = {"velocity": velocity}
        return self._emit(reward, terminated)

    def close(self) -> None:
        self.sim.close()

    # ---------------------------------------------------------------------------------------
    def _emit(self, reward: np.ndarray | None, terminated: np.ndarray | None):
        """Observation, reward, terminated as tensors on the device (one pinned copy for cuda)."""
        n, k, skip = self.num_envs, self.obs_dim, self.dist.root_qpos_skip
        nq = self.sim.qpos.shape[1]
        if self._pinned is None:
            obs = np.empty((n, k), dtype=np.float32)
        else:
            if self._copied is not None:  # the last copy out of the pinned buffer must be done
                self._copied.synchronize()
            flat = self._pinned.numpy()
            obs = flat[: n * k].reshape(n, k)
        obs[:, : nq - skip] = self.sim.qpos[:, skip:]
        obs[:, nq - skip : nq - skip + self.sim.qvel.shape[1]] = self.sim.qvel
        if self.dist.observe_torso_com:
            obs[:, -3:] = self.sim.body_xpos(1)
        rew = np.zeros(n) if reward is None else reward
        term = np.zeros(n, dtype=bool) if terminated is None else terminated
        if self._pinned is None:
            out = torch.from_numpy(obs), torch.from_numpy(rew.astype(np.float32)), torch.from_numpy(term)
            if self.device.type != "cpu":
                out = tuple(x.to(self.device) for x in out)
            return out
        flat[n * k : n * k + n] = rew
        flat[n * k + n :] = term
        dev = self._pinned.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return dev[: n * k].view(n, k), dev[n * k : n * k + n], dev[n * k + n :] > 0.5

    def _raise(self, sims: np.ndarray, reasons: list[str], what: str) -> None:
        """One-line error naming the first bad sim, its task row (index among distinct tasks) and values."""
        i = int(sims[0])
        _, first, inverse = np.unique(self._tasks, axis=0, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(first))
        row = int(rank[inverse.reshape(-1)[i]])
        values = ", ".join(f"{name}={v:.4g}" for name, v in zip(self.dist.task_names, self._tasks[i], strict=True))
        more = f" (and {len(sims) - 1} more sims)" if len(sims) > 1 else ""
        where = f"{self.dist.label} sim {i} (task row {row}: {values})"
        raise TaskDistributionError(f"{where} {what} at step {self._t}: {reasons[0]}{more}")


class MujocoSingleTaskEnv(SingleTaskEnv):
    """One task as a Gymnasium env that can also ``render()`` ``rgb_array`` frames.

    Renders an MjData mirroring sim 0's ``qpos``/``qvel`` through ``mujoco.Renderer``, from the
    XML's tracking camera when it has one. Needs an OpenGL backend: ``MUJOCO_GL=egl`` (or
    ``osmesa``) set before mujoco is imported; the GL context is made on the first ``render()``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        distribution: MujocoTaskDistribution,
        task: np.ndarray | None = None,
        render_mode: str | None = None,
        width: int = 320,
        height: int = 240,
        camera: str | int | None = "track",
    ):
        super().__init__(distribution, task)
        if render_mode not in (None, "rgb_array"):
            raise TaskDistributionError(f"render_mode={render_mode!r}: only 'rgb_array' is supported")
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / distribution.dt))}
        self.width, self.height, self.camera = width, height, camera
        self._renderer: mujoco.Renderer | None = None
        self._render_data: mujoco.MjData | None = None

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode='rgb_array'; nothing rendered")
            return None
        if self._renderer is None:
            model = copy.copy(self.distribution.model)
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
            try:
                self._renderer = mujoco.Renderer(model, self.height, self.width)
            except Exception as exc:  # no display / no GL library
                raise RuntimeError(
                    f"could not create an OpenGL context for rendering (MUJOCO_GL="
                    f"{os.environ.get('MUJOCO_GL', '<unset>')}): {exc}. Set MUJOCO_GL=egl (or osmesa with "
                    "PYOPENGL_PLATFORM=osmesa) before mujoco is imported"
                ) from exc
            self._render_model = model
            self._render_data = mujoco.MjData(model)
            cam = self.camera
            self._camera_id = -1
            if isinstance(cam, str):
                self._camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam)
            elif isinstance(cam, int):
                self._camera_id = cam
        data = self._vec.sim.get_data(0, self._render_data)
        mujoco.mj_forward(self._render_model, data)
        self._renderer.update_scene(data, camera=self._camera_id)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()
