"""Every task distribution as a Stable-Baselines3 ``VecEnv``: all envs stepped in one batched call.

``TaskVecEnv(distribution, tasks)`` drives the distribution's :class:`~caml_rl.envs.BatchedEnv`
(the one caml-rl's sampler uses) behind SB3's ``VecEnv`` API, so any SB3 or sb3-contrib algorithm
trains on caml-rl's tasks with one simulator call per step for the whole batch, instead of one
Python ``step`` per env as ``DummyVecEnv`` of the ``caml/...-v0`` Gymnasium envs does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from .actions import action_clipper
from .base import BatchedEnv, TaskDistribution, TaskDistributionError, make
from .validation import StepChecker, sample_tasks, validate


class TaskVecEnv(VecEnv):
    """``num_envs`` envs of one task distribution as an SB3 ``VecEnv``, stepped as one batch.

    **Tasks.** Env ``i`` runs task ``tasks[i % len(tasks)]`` (so ``tasks`` may hold one row per env,
    or fewer rows shared round-robin); with ``tasks=None`` every episode of every env draws a new
    task from the distribution (as :class:`~caml_rl.envs.SingleTaskEnv` without a fixed task).
    :meth:`set_tasks` changes them all (None: draw again) and :meth:`set_task` (or
    ``env_method("set_task", row, indices=...)``) fixes some envs' task, from each env's next
    episode on (at once after :meth:`reset`). ``info["task"]`` holds the task of the step's
    episode, :attr:`current_tasks` those of the episodes running.

    **Episodes and auto-reset.** A batched env can only reset all its simulations together (the
    ``BatchedEnv`` protocol has ``reset(tasks, rng)`` for the whole batch and no per-simulation
    reset; a terminated simulation is frozen or keeps stepping, masked out by the sampler). So the
    view is *horizon-aligned*: the batch runs ``distribution.horizon`` steps, then every env's
    episode ends at the same step (``done``, ``info["TimeLimit.truncated"] = True`` unless it also
    terminated there, ``info["terminal_observation"]`` its last observation) and the whole batch
    resets in one call. An env that *terminates* before the horizon (reaching the goal in
    navigation2d, an unhealthy Ant) is reported ``done`` with ``TimeLimit.truncated = False`` and
    its terminal observation, and is auto-reset individually: its next episode runs in a
    one-simulation env of the same distribution (built once per env and reused), stepped beside
    the batch, until the batch's next horizon step, where that episode is cut (truncated, so SB3
    bootstraps its value) and the env rejoins the batch. Every transition SB3 sees is therefore a
    real step of a real episode, and termination and truncation are told apart as SB3 needs.
    The alternatives were worse: resetting the whole batch when one env terminates would cut the
    other envs' episodes short at every early termination; letting a terminated env idle until
    the horizon would feed SB3 transitions of no episode. The price: episodes that start after an
    early termination are shorter than the horizon (SB3's episode statistics count them), and
    those envs step at single-env speed until the batch's next reset. Distributions whose episodes
    never terminate early (HalfCheetah) always run as one batch.

    **Actions and observations.** Box actions are clipped to the action space (as caml-rl's
    sampler does); Discrete actions are integers. Observations are numpy arrays of the observation
    space's dtype (float32 for every built-in distribution), rewards float32, dones bool. Every
    reset and step is checked against the task-distribution contract
    (:class:`~caml_rl.envs.validation.StepChecker`): a broken env stops with one line naming the
    env, the step and the simulation.

    **Seeding.** ``seed`` (or SB3's ``VecEnv.seed(seed)``, used at the next :meth:`reset`) seeds one
    ``numpy`` generator that draws the tasks (``tasks=None``) and every reset's randomness.
    """

    def __init__(
        self,
        distribution: TaskDistribution | str,
        tasks: np.ndarray | Sequence[Sequence[float]] | None = None,
        num_envs: int | None = None,
        *,
        device: torch.device | str = "cpu",
        seed: int | None = None,
    ):
        """``distribution``: a task distribution or a registered name (default settings).
        ``num_envs``: defaults to ``len(tasks)``; required when ``tasks`` is None.
        ``device``: where the batched env steps (observations come back to the host)."""
        dist = make(distribution) if isinstance(distribution, str) else distribution
        if not isinstance(dist, TaskDistribution):
            raise TaskDistributionError(f"TaskVecEnv needs a TaskDistribution or a registered name, not {dist!r}")
        validate(dist)  # spaces and a small batch, once per distribution: a broken env fails here in one line
        if num_envs is None:
            if tasks is None:
                raise TaskDistributionError("TaskVecEnv: give tasks, num_envs or both")
            num_envs = len(tasks)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise TaskDistributionError(f"TaskVecEnv: num_envs={num_envs!r} must be an integer >= 1")
        self.distribution = dist
        self.device = torch.device(device)
        self._obs_shape = tuple(dist.observation_space.shape)
        self._obs_dtype = dist.observation_space.dtype
        self._discrete = isinstance(dist.action_space, gym.spaces.Discrete)
        self._clip = action_clipper(dist.action_space, self.device)
        self._task_dim = len(dist.task_names)
        self._rng = np.random.default_rng(seed)
        super().__init__(int(num_envs), dist.observation_space, dist.action_space)
        self._table = np.zeros((self.num_envs, self._task_dim))  # each env's task for its next episodes
        self._draw = np.ones(self.num_envs, dtype=bool)  # ... or a new task drawn for each of its episodes
        self.set_tasks(tasks)
        self._env: BatchedEnv = dist.make_vec_env(self.num_envs, self.device)
        self._check = StepChecker(dist, self._env, self.num_envs)
        self._solo_envs: dict[int, tuple[BatchedEnv, StepChecker]] = {}  # built on an env's first early end
        self._solo_t: dict[int, int] = {}  # envs running their own episode: step within it
        self._current = np.zeros((self.num_envs, self._task_dim))
        self._t = 0
        self._actions: np.ndarray | None = None
        self._needs_reset = True

    # ------------------------------------------------------------------ tasks
    def set_tasks(self, tasks: np.ndarray | Sequence[Sequence[float]] | None) -> None:
        """Env ``i`` runs ``tasks[i % len(tasks)]`` from its next episode on; None: a new task per episode."""
        if tasks is None:
            self._draw[:] = True
            return
        rows = np.asarray(tasks, dtype=np.float64)
        if rows.ndim == 1 and self._task_dim == 1:
            rows = rows[:, None]
        if rows.ndim != 2 or rows.shape[1] != self._task_dim or len(rows) == 0:
            raise TaskDistributionError(
                f"TaskVecEnv: tasks of shape {rows.shape}; expected (k, {self._task_dim}) rows of "
                f"{', '.join(self.distribution.task_names)}, k >= 1"
            )
        if not np.isfinite(rows).all():
            raise TaskDistributionError("TaskVecEnv: tasks hold non-finite values")
        self._table = rows[np.arange(self.num_envs) % len(rows)].copy()
        self._draw[:] = False

    def set_task(self, task: Sequence[float], indices: VecEnvIndices = None) -> None:
        """Fix the task of the envs ``indices`` (default: all) from their next episode on."""
        row = np.asarray(task, dtype=np.float64).reshape(-1)
        if row.shape != (self._task_dim,) or not np.isfinite(row).all():
            raise TaskDistributionError(f"TaskVecEnv: task {task!r} is not {self._task_dim} finite numbers")
        idx = list(self._get_indices(indices))
        self._table[idx] = row
        self._draw[idx] = False

    @property
    def current_tasks(self) -> np.ndarray:
        """``[num_envs, task_dim]``: the task of each env's episode in progress."""
        return self._current.copy()

    def _next_tasks(self, rows: np.ndarray) -> np.ndarray:
        """The tasks of the next episodes of envs ``rows``: fixed ones, or drawn from the generator."""
        tasks = self._table[rows]
        draw = self._draw[rows]
        if draw.any():
            tasks[draw] = sample_tasks(self.distribution, self._rng, int(draw.sum()))
        return tasks

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> VecEnvObs:
        if self._seeds[0] is not None:  # VecEnv.seed(seed): seeds[i] = seed + i; one generator for the batch
            self._rng = np.random.default_rng(self._seeds[0])
        self._reset_seeds()
        self._reset_options()
        obs = self._reset_batch()
        self._needs_reset = False
        return obs

    def _reset_batch(self) -> np.ndarray:
        self._solo_t.clear()
        self._current = self._next_tasks(np.arange(self.num_envs)).copy()
        obs = self._check.reset(self._current, self._rng)
        self._t = 0
        self.reset_infos = [{"task": self._current[i]} for i in range(self.num_envs)]
        return self._host(obs, self.num_envs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._needs_reset:
            raise RuntimeError("TaskVecEnv: call reset() before step()")
        n = self.num_envs
        actions = self._to_tensor(self._actions)
        obs_t, reward_t, terminated_t = self._check.step(self._t, actions)
        self._report_faults(self._env)
        self._t += 1
        obs = self._host(obs_t, n)
        reward = reward_t.detach().to("cpu", torch.float32).numpy().copy()
        terminated = terminated_t.detach().cpu().numpy().copy()
        for i in list(self._solo_t):  # envs in their own episode after an early end: stepped one by one
            env, check = self._solo_envs[i]
            o, r, d = check.step(self._solo_t[i], actions[i : i + 1])
            self._report_faults(env)
            self._solo_t[i] += 1
            obs[i], reward[i], terminated[i] = self._host(o, 1)[0], float(r[0]), bool(d[0])
        boundary = self._t >= self.distribution.horizon
        truncated = np.full(n, boundary) & ~terminated
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [
            {"task": self._current[i], "TimeLimit.truncated": bool(truncated[i])} for i in range(n)
        ]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = obs[i].copy()
        if boundary:  # every episode ends here: the whole batch resets in one call
            obs = self._reset_batch()
        else:
            for i in np.flatnonzero(terminated):  # an early end: env i's next episode runs on its own
                obs[i] = self._reset_solo(int(i))
        return obs, reward, dones, infos

    def _reset_solo(self, i: int) -> np.ndarray:
        if i not in self._solo_envs:
            env = self.distribution.make_vec_env(1, self.device)
            self._solo_envs[i] = env, StepChecker(self.distribution, env, 1)
        _, check = self._solo_envs[i]
        task = self._next_tasks(np.array([i]))
        self._current = self._current.copy()  # infos of earlier steps keep their rows
        self._current[i] = task[0]
        obs = check.reset(task.reshape(1, -1), self._rng)
        self._solo_t[i] = 0
        self.reset_infos[i] = {"task": self._current[i]}
        return self._host(obs, 1)[0]

    def _to_tensor(self, actions: Any) -> torch.Tensor:
        a = np.asarray(actions)
        if self._discrete:
            return torch.as_tensor(a.reshape(self.num_envs).astype(np.int64), device=self.device)
        t = torch.as_tensor(a, dtype=torch.float32, device=self.device).reshape(self.num_envs, -1)
        return self._clip(t)

    def _host(self, obs: torch.Tensor, n: int) -> np.ndarray:
        """A fresh numpy copy (SB3 keeps references to what it is given), in the space's shape and dtype."""
        return obs.detach().cpu().numpy().reshape(n, *self._obs_shape).astype(self._obs_dtype, copy=True)

    @staticmethod
    def _report_faults(env: BatchedEnv) -> None:
        """For an env that defers its fault checks (GPU simulators): raise what it flagged."""
        pending = getattr(env, "pending_faults", None)
        flag = pending() if callable(pending) else None
        if flag is not None and bool(flag):
            env.report_faults()

    def close(self) -> None:
        self._env.close()
        for env, _ in self._solo_envs.values():
            env.close()
        self._solo_envs.clear()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """``"task"``: each env's current task; ``"render_mode"``: None; else the distribution's attribute."""
        idx = list(self._get_indices(indices))
        if attr_name == "task":
            return [self._current[i].copy() for i in idx]
        if attr_name == "render_mode":
            return [None] * len(idx)
        if not hasattr(self.distribution, attr_name):
            raise AttributeError(f"{type(self.distribution).__name__} has no attribute {attr_name!r}")
        value = getattr(self.distribution, attr_name)
        return [value] * len(idx)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Only ``"task"`` (as :meth:`set_task`): the envs share one distribution, whose settings are fixed."""
        if attr_name != "task":
            raise AttributeError(f"TaskVecEnv: only 'task' can be set per env, not {attr_name!r}")
        self.set_task(value, indices)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        """Only ``set_task(task)``, per env."""
        if method_name != "set_task":
            raise AttributeError(f"TaskVecEnv: envs have no method {method_name!r} (only set_task)")
        idx = list(self._get_indices(indices))
        self.set_task(*method_args, indices=idx, **method_kwargs)
        return [None] * len(idx)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))
