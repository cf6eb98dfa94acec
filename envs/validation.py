"""The task-distribution contract, checked on first use and then at every reset and step.

:func:`validate` runs a small batch once per distribution, so a broken user env fails with one
line before a run starts. :class:`StepChecker` is what the sampler runs at every reset and step of
training, evaluation and ``adapt``: shape, dtype and finiteness of observation, reward and
termination in a few whole-batch tensor operations (no loop over envs), and any exception raised
by the env re-raised as one line naming the env, the step, the simulation and its task row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .base import BatchedEnv, EnvFault, TaskDistribution, TaskDistributionError, one_line

_VALIDATED: set[tuple[str, str]] = set()


def env_name(dist: TaskDistribution) -> str:
    return getattr(dist, "name", type(dist).__name__)


def _fail(name: str, where: str, problem: str) -> None:
    raise EnvFault(name, where, problem)


def check_spaces(dist: TaskDistribution) -> None:
    """Only flat ``Box`` observations and ``Box`` or ``Discrete`` actions are supported."""
    name = env_name(dist)
    obs, act = dist.observation_space, dist.action_space
    if not isinstance(obs, gym.spaces.Box):
        _fail(name, "observation_space", f"{obs} is not supported; expected a gymnasium.spaces.Box")
    if isinstance(act, gym.spaces.Box):
        if len(act.shape) != 1:
            _fail(name, "action_space", f"{act} has shape {act.shape}; expected a 1-D Box")
    elif not isinstance(act, gym.spaces.Discrete):
        _fail(name, "action_space", f"{act} is not supported; expected a gymnasium.spaces.Box or Discrete")


class StepChecker:
    """The contract checks of every reset and step of one batched env.

    Shapes and dtypes are Python-level metadata checks at every step. Finiteness is either
    checked at every step (``eager``: the validator, :class:`SingleTaskEnv`) or, in the sampler's
    hot path, once per rollout by :meth:`check_rollout` on the buffers the sampler fills anyway
    (a non-finite value survives the alive mask: nan * 0 is nan): no tensor operation per step
    and, on an accelerator, a single device read per rollout. Only when a check fires is the
    culprit step and simulation located.
    """

    def __init__(self, dist: TaskDistribution, env: BatchedEnv, num_envs: int, eager: bool = True):
        self.name, self.env, self.eager = env_name(dist), env, eager
        self.task_names = tuple(dist.task_names)
        self.num_envs = num_envs
        self.obs_shape = (self.num_envs, int(np.prod(dist.observation_space.shape)))
        self.batch_shape = (self.num_envs,)
        self.tasks = np.zeros((self.num_envs, len(self.task_names)))
        self.episodes_per_task, self.first_task = 1, 0

    # ------------------------------------------------------------------ calling the env
    def reset(self, tasks: np.ndarray, rng: np.random.Generator, episodes_per_task: int = 1, first_task: int = 0):
        """``env.reset(tasks, rng)``, checked; ``tasks`` has one row per simulation."""
        self.tasks = np.asarray(tasks, dtype=np.float64).reshape(self.num_envs, -1)
        self.episodes_per_task, self.first_task = episodes_per_task, first_task
        obs = self._call("reset", self.env.reset, tasks, rng)
        self._check_obs("reset", obs)
        if self.eager and not math.isfinite(obs.sum(dtype=torch.float64).item()):
            self._locate("reset", obs, None)
        return obs

    def step(self, t: int, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``env.step(actions)`` at step ``t``, checked."""
        out = self._call(t, self.env.step, actions)
        if not isinstance(out, tuple) or len(out) != 3:
            self._fault(t, f"step() returned {_describe(out)}; expected (observation, reward, terminated)")
        obs, reward, terminated = out
        self._check_obs(t, obs)
        floating = "a floating-point dtype (torch.float32)"
        self._check_tensor(t, "reward", reward, self.batch_shape, torch.Tensor.is_floating_point, floating)
        self._check_tensor(t, "terminated", terminated, self.batch_shape, _is(torch.bool), "torch.bool")
        if self.eager and not math.isfinite(
            obs.sum(dtype=torch.float64).item() + reward.sum(dtype=torch.float64).item()
        ):
            self._locate(t, obs, reward)
        return obs, reward, terminated

    def check_rollout(self, obs: torch.Tensor, rewards: torch.Tensor, last_obs: torch.Tensor | None) -> None:
        """Finiteness of a whole rollout, from the sampler's buffers.

        ``obs [steps, ...]``: the observation at each time step (row 0 from ``reset``, row ``s``
        from step ``s - 1``); ``rewards [steps, ...]``; ``last_obs``: the observation after the
        last step (None when the env raised at step ``steps``, so it has none). Raises for the
        env's deferred faults (:meth:`BatchedEnv.pending_faults`, e.g. a GPU simulator's world whose
        state blew up or whose buffers overflowed: its numbers may be finite but wrong), then for
        the earliest non-finite value.
        """
        steps, n = rewards.shape[0], self.num_envs
        ok = torch.isfinite(obs).all() & torch.isfinite(rewards).all()
        if last_obs is not None:
            ok &= torch.isfinite(last_obs).all()
        pending = getattr(self.env, "pending_faults", lambda: None)()
        if pending is not None:
            ok &= ~pending.to(ok.device)
        if bool(ok):  # the only device read of the rollout
            return
        if pending is not None and bool(pending):
            self.env.report_faults()
            self._fault("end of rollout", "pending_faults() was true but report_faults() raised nothing")
        obs = obs.reshape(obs.shape[0], n, -1)
        if last_obs is not None:
            obs = torch.cat([obs, last_obs.reshape(1, n, -1).to(obs.device, obs.dtype)])
        obs, rewards = obs.cpu(), rewards.reshape(steps, n).cpu()
        obs_rows = (~torch.isfinite(obs)).any(-1).any(-1).nonzero().flatten().tolist()
        rew_rows = (~torch.isfinite(rewards)).any(-1).nonzero().flatten().tolist()
        obs_step = obs_rows[0] - 1 if obs_rows else math.inf  # row s holds the result of step s - 1
        rew_step = rew_rows[0] if rew_rows else math.inf
        if obs_step <= rew_step:
            self._locate("reset" if obs_step < 0 else obs_step, obs[obs_rows[0]], None)
        self._locate(rew_step, None, rewards[rew_step])

    # ------------------------------------------------------------------ helpers
    def _call(self, where: int | str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except EnvFault as exc:  # an adapter's fault: it knows the simulation, we know its task row
            if exc.sim is not None and exc.row is None:
                exc.row = self.first_task + exc.sim // self.episodes_per_task
            raise
        except TaskDistributionError:  # already one line naming the env (e.g. MuJoCo instability)
            raise
        except Exception as exc:
            what = "reset" if where == "reset" else "step"
            n_t = self.num_envs // max(self.episodes_per_task, 1)
            where_s = where if isinstance(where, str) else f"step {where}"
            raise EnvFault(
                self.name,
                f"{where_s} (a batch of {n_t} tasks x {self.episodes_per_task} episodes)",
                f"{type(self.env).__name__}.{what}() raised {one_line(exc)}",
                raised=True,
            ) from exc

    def _check_obs(self, where: int | str, obs: Any) -> None:
        self._check_tensor(where, "observation", obs, self.obs_shape, _is(torch.float32), "torch.float32")

    def _check_tensor(
        self,
        where: int | str,
        what: str,
        value: Any,
        shape: tuple[int, ...],
        dtype_ok: Callable[[torch.Tensor], bool],
        dtype: str,
    ) -> None:
        """``value`` must be a tensor of ``shape`` whose dtype passes ``dtype_ok`` (``dtype`` says
        which); each problem is a fault naming ``what``."""
        if not isinstance(value, torch.Tensor):
            self._fault(where, f"{what} is a {type(value).__name__}; expected a torch.Tensor")
        if value.shape != shape:
            self._fault(where, f"{what} has shape {tuple(value.shape)}; expected {shape}")
        if not dtype_ok(value):
            self._fault(where, f"{what} dtype is {value.dtype}; expected {dtype}")

    def _locate(self, where: int | str, obs: torch.Tensor | None, reward: torch.Tensor | None) -> None:
        """Name the first simulation with a non-finite observation or reward (if any)."""
        for what, x in (("observation", obs), ("reward", reward)):
            if x is None:
                continue
            x = x.reshape(self.num_envs, -1).cpu()
            bad = ~torch.isfinite(x)
            if bad.any():
                sim, j = bad.nonzero()[0].tolist()
                entry = (
                    f"observation[{j}]={float(x[sim, j])}" if what == "observation" else f"reward={float(x[sim, 0])}"
                )
                self._fault(where, f"{what} is not finite ({entry})", sim=sim)

    def _fault(self, where: int | str, problem: str, sim: int | None = None) -> None:
        fault = EnvFault(
            self.name,
            where,
            problem,
            sim=sim,
            task=None if sim is None else self.tasks[sim],
            task_names=self.task_names,
        )
        if sim is not None:
            fault.row = self.first_task + sim // self.episodes_per_task
        raise fault


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return f"a {type(value).__name__}"


def sample_tasks(dist: TaskDistribution, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
    """``dist.sample_tasks``, checked: ``[num_tasks, len(task_names)]`` finite numbers, on every
    call (a user's distribution that ignores ``num_tasks`` fails here by name, not in the sampler)."""
    tasks = dist.sample_tasks(rng, num_tasks)
    n_names = len(dist.task_names)
    if not isinstance(tasks, np.ndarray) or tasks.shape != (num_tasks, n_names):
        got = getattr(tasks, "shape", type(tasks).__name__)
        _fail(env_name(dist), "sample_tasks", f"returned {got}; expected an array of shape ({num_tasks}, {n_names})")
    if not np.issubdtype(tasks.dtype, np.number) or not np.isfinite(tasks).all():
        _fail(env_name(dist), "sample_tasks", "returned non-finite or non-numeric task parameters")
    return tasks


def validate(dist: TaskDistribution, num_envs: int = 4, steps: int = 10, seed: int = 0) -> None:
    """Sample tasks, reset and step a small batch; raise ``TaskDistributionError`` on any breach.

    Also rejects tasks that change nothing: two different tasks stepped with the same actions
    must differ in observation, reward or termination.
    """
    name = env_name(dist)
    key = (name, repr(dist.settings()))
    if key in _VALIDATED:
        return
    check_spaces(dist)
    rng = np.random.default_rng(seed)
    tasks = sample_tasks(dist, rng, 2)
    discrete = isinstance(dist.action_space, gym.spaces.Discrete)
    env = dist.make_vec_env(num_envs, torch.device("cpu"))
    half = num_envs // 2
    try:
        checker = StepChecker(dist, env, num_envs)
        obs = checker.reset(np.repeat(tasks, half, axis=0), rng, episodes_per_task=half)
        dist.action_space.seed(seed)
        differ, ends_differ = not torch.equal(obs[:half], obs[half:]), False
        for t in range(steps):
            one = np.asarray(dist.action_space.sample())
            actions = torch.as_tensor(np.repeat(one[None], num_envs, axis=0))  # same actions for every task
            obs, reward, terminated = checker.step(t, actions.long() if discrete else actions.float())
            differ |= not torch.allclose(reward[:half], reward[half:]) or not torch.allclose(obs[:half], obs[half:])
            ends_differ |= not torch.equal(terminated[:half], terminated[half:])
        if not differ and not ends_differ and not np.allclose(tasks[0], tasks[1]):
            hint = dist.tasks_ignored_hint
            _fail(
                name,
                f"steps 0-{steps - 1}",
                "two different tasks gave identical observations, rewards and terminations "
                f"with the same actions ({hint})",
            )
    finally:
        env.close()
    _VALIDATED.add(key)


def _is(dtype: torch.dtype) -> Callable[[torch.Tensor], bool]:
    """A check that a tensor has exactly ``dtype``."""
    return lambda tensor: tensor.dtype == dtype
