"""The batched env of a locomotion task distribution, on any simulator backend.

``LocomotionVecEnv`` runs the host simulators (``batch``, ``rollout``): float64 numpy maths, then
one copy of observation, reward and termination to the device (through pinned memory on a GPU).
``DeviceLocomotionVecEnv`` runs the Warp simulator: the same maths in torch on the simulator's
device, reading its state in place, with no host synchronisation per step on a GPU. Both share
reset noise, action scaling, the task hooks of ``MujocoTaskDistribution`` and the error messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .backend_factory import make_simulator
from .base import BatchedEnv, TaskDistributionError
from .simulator import Simulator

if TYPE_CHECKING:  # the distribution builds this env and hands itself in: its hooks, duck-typed
    from .locomotion import MujocoTaskDistribution


def make_locomotion_env(
    dist: MujocoTaskDistribution, num_envs: int, device: torch.device | str, backend: str
) -> LocomotionVecEnv:
    sim = make_simulator(backend, dist.model, int(num_envs), dist.frame_skip, device)
    cls = DeviceLocomotionVecEnv if sim.on_device else LocomotionVecEnv
    return cls(dist, sim, torch.device(device))


class LocomotionVecEnv(BatchedEnv):
    """One host ``Simulator`` plus bookkeeping.

    Terminated sims are no longer stepped (the sampler masks them out anyway); their
    observation freezes and their reward is 0. ``info`` holds the last step's ``velocity``
    (forward velocity as gymnasium's ``info["x_velocity"]``, and y for Ant; float64 here).
    """

    def __init__(self, dist: MujocoTaskDistribution, sim: Simulator, device: torch.device):
        self.dist, self.sim, self.num_envs, self.device = dist, sim, sim.nsim, torch.device(device)
        model = dist.model
        if dist.observe_torso_com and sim.backend == "rollout":
            raise TaskDistributionError(
                f"{dist.label}: observe_torso_com needs simulator batch (mujoco >= 4.0) or warp, not rollout"
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
        self.info: dict[str, Any] = {}
        self._pinned: torch.Tensor | None = None
        self._copied: Any = None
        if self.device.type == "cuda" and not sim.on_device:
            self._pinned = torch.empty(self.num_envs * (self.obs_dim + 2), dtype=torch.float32, pin_memory=True)

    # ------------------------------------------------------------------------ shared parts
    def _set_tasks(self, tasks: np.ndarray) -> None:
        tasks = np.asarray(tasks, dtype=np.float64)
        if tasks.shape != self._tasks.shape:
            raise TaskDistributionError(
                f"{self.dist.label}: reset got tasks of shape {tasks.shape}, expected {self._tasks.shape}"
            )
        self._tasks = tasks.copy()
        self.dist.configure(self.sim, self._tasks)

    def _reset_state(self, rng: np.random.Generator) -> None:
        m, s = self.dist.model, self.dist.reset_noise_scale
        # for one sim these are the draws of gymnasium's reset_model: qpos noise, then qvel noise
        qpos = self._qpos0 + rng.uniform(-s, s, size=(self.num_envs, m.nq))
        qvel = s * rng.standard_normal((self.num_envs, m.nv))
        self.sim.reset(qpos, qvel)
        self._t = 0
        self.info = {}

    def _check_shape(self, actions: Any) -> None:
        if tuple(actions.shape) != (self.num_envs, self.act_dim):
            raise TaskDistributionError(
                f"{self.dist.label}: step got actions of shape {tuple(actions.shape)}, "
                f"expected ({self.num_envs}, {self.act_dim})"
            )

    def _terms(self, a: Any, before: Any) -> tuple[Any, Any]:
        """``(velocity, ctrl_cost)`` of the step just taken: array maths for numpy and torch alike."""
        velocity = (self.dist.position(self.sim) - before) / self._dt
        ctrl_cost = self.dist.ctrl_cost_weight * (a * a).sum(1)
        return velocity, ctrl_cost

    def _raise(self, sims: np.ndarray, reasons: list[str], what: str, step: int | None = None) -> None:
        """One-line error naming the first bad sim, its task row (index among distinct tasks) and values."""
        i = int(sims[0])
        _, first, inverse = np.unique(self._tasks, axis=0, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(first))
        row = int(rank[inverse.reshape(-1)[i]])
        values = ", ".join(f"{name}={v:.4g}" for name, v in zip(self.dist.task_names, self._tasks[i], strict=True))
        more = f" (and {len(sims) - 1} more sims)" if len(sims) > 1 else ""
        where = f"{self.dist.label} sim {i} (task row {row}: {values})"
        raise TaskDistributionError(f"{where} {what} at step {self._t if step is None else step}: {reasons[0]}{more}")

    def close(self) -> None:
        self.sim.close()

    # ---------------------------------------------------------------------- host simulators
    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        self._set_tasks(tasks)
        self._reset_state(rng)
        self._done[:] = False
        obs, _, _ = self._emit(None, None)
        return obs

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        self._check_shape(a)
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
        velocity, ctrl_cost = self._terms(a, before)
        sel = slice(None) if ids is None else ids
        reward = np.zeros(self.num_envs)
        terminated = self._done.copy()
        if ids is None or len(ids):
            r, done = self.dist.reward_and_termination(self._tasks[sel], velocity[sel], ctrl_cost[sel], self.sim, ids)
            reward[sel] = r
            terminated[sel] = False if done is None else done
        self._done |= terminated
        self.info = {"velocity": velocity}
        return self._emit(reward, terminated)

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


class DeviceLocomotionVecEnv(LocomotionVecEnv):
    """The Warp simulator's env: float32 torch maths on the simulator's device, state read in place.

    Every world steps, terminated ones too; their observation freezes and their reward is 0, as
    on the host. On Warp's CPU device every step is checked at once (as on the host); on a GPU
    nothing waits for the device: the step at which a world's state went bad (not finite, huge,
    or a contact/constraint buffer overflowed) is recorded on the device, and the sampler's one
    end-of-rollout read raises for it (:meth:`pending_faults`), so no rollout's numbers are
    returned from a faulty world. A rollout driven without the sampler gets the fault from the
    next ``reset``. ``info["velocity"]`` is a float32 tensor on the device.
    """

    def __init__(self, dist: MujocoTaskDistribution, sim: Simulator, device: torch.device):
        super().__init__(dist, sim, sim.device)
        f32 = dict(dtype=torch.float32, device=self.device)
        self._mid_t, self._half_t = torch.as_tensor(self._mid, **f32), torch.as_tensor(self._half, **f32)
        self._tasks_t = torch.zeros(self._tasks.shape, **f32)
        self._done_t = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self._first_bad = torch.full((self.num_envs,), -1, dtype=torch.int64, device=self.device)
        self._eager = self.device.type == "cpu"
        self._obs: torch.Tensor | None = None
        self._unread = False  # a step ran since the deferred faults were last read or handed out

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        self._report_deferred()
        self._set_tasks(tasks)
        self._tasks_t = torch.as_tensor(self._tasks, dtype=torch.float32).to(self.device)
        self._reset_state(rng)
        with self.sim.scope():
            self._done_t.zero_()
            self._first_bad.fill_(-1)
            self._obs = self._observe()
        return self._obs

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.as_tensor(actions).detach()
        self._check_shape(a)
        self._t += 1
        if self._eager and not bool(torch.isfinite(a).all()):
            bad = (~torch.isfinite(a).all(1)).nonzero()[:, 0].numpy()
            j = int((~torch.isfinite(a[bad[0]])).nonzero()[0, 0])
            self._raise(bad, [f"action[{j}]={float(a[bad[0], j])}"], "got a non-finite action")
        sim, done = self.sim, self._done_t
        self._unread = not self._eager
        with sim.scope():
            a = (a.to(self.device, torch.float32) / self.dist.action_scale).clamp(-1.0, 1.0)
            sim.set_ctrl(self._mid_t + a * self._half_t)
            before = self.dist.position(sim).clone()
            sim.step()
            velocity, ctrl_cost = self._terms(a, before)
            reward, ends = self.dist.reward_and_termination(self._tasks_t, velocity, ctrl_cost, sim, None)
            bad = sim.unstable_mask() & ~done
            if not self._eager:
                self._first_bad.masked_fill_(bad & (self._first_bad < 0), self._t)
            reward = reward.masked_fill(done, 0.0)
            terminated = done | ends if ends is not None else done.clone()
            obs = torch.where(done[:, None], self._obs, self._observe())
            velocity = velocity.masked_fill(done[:, None], 0.0)
            self._done_t, self._obs = terminated, obs
        if self._eager and bool(bad.any()):
            ids, reasons = sim.unstable(np.flatnonzero(bad.numpy()))
            self._raise(ids, reasons, "became unstable")
        self.info = {"velocity": velocity}
        return obs, reward, terminated

    def _observe(self) -> torch.Tensor:
        sim, skip = self.sim, self.dist.root_qpos_skip
        parts = [sim.state_qpos[:, skip:], sim.state_qvel]
        if self.dist.observe_torso_com:
            parts.append(sim.body_xpos(1))
        return torch.cat(parts, dim=1)

    def pending_faults(self) -> torch.Tensor | None:
        """Whether a world went bad since the last reset: a 0-dim bool on the device, not read here
        (the sampler reads it with its end-of-rollout check). None when every step is checked."""
        if self._eager:
            return None
        self._unread = False  # the caller reads it and calls report_faults when it is true
        with self.sim.scope():
            return (self._first_bad >= 0).any()

    def report_faults(self) -> None:
        """Raise for the world that went bad first (reads the device)."""
        if not self._eager:
            self._report_deferred(force=True)

    def _report_deferred(self, force: bool = False) -> None:
        """Raise for a world that went bad in the last episodes on a GPU: at ``reset`` only when
        nobody has read :meth:`pending_faults` since the last step (one device read then)."""
        if self._eager or self._obs is None or not (force or self._unread):
            return
        self._unread = False
        first = self._first_bad.cpu().numpy().copy()  # on the CPU .cpu() is no copy, and fill_ below clears it
        if (first >= 0).any():
            bad = np.flatnonzero(first >= 0)
            bad = bad[np.argsort(first[bad], kind="stable")]
            _, reasons = self.sim.unstable(bad[:1])
            self._first_bad.fill_(-1)
            self._raise(bad, reasons or ["state not finite"], "became unstable", step=int(first[bad[0]]))
