"""Any Gymnasium env with a ``set_task(task)`` hook as a task distribution.

The envs are stepped one after the other in Python (as Gymnasium's ``SyncVectorEnv`` would), so
this is much slower than a batched env (a few thousand steps/s instead of ~100k for the built-in
MuJoCo tasks). Use it to get a new env working; write a ``BatchedEnv`` when speed matters.

Each env's result is checked as it is copied into the batch (a type test per value, so no cost
worth measuring next to the env's own ``step``): a wrong shape, a reward that is not a number,
a non-finite value or an exception in the user's code stops with one line naming the env, the
step, the simulation and its task parameters. An env that terminated or was truncated is not
stepped again until the next ``reset`` (its observation stays, its reward is 0).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from .base import BatchedEnv, EnvFault, TaskDistribution, TaskDistributionError, one_line, rng_offset

_NUMBERS = (float, int, np.float64, np.float32, np.int64, np.int32)
_BOOLS = (bool, np.bool_)


def find_set_task(env: Any) -> Callable[[np.ndarray], Any] | None:
    """The outermost ``set_task`` of ``env`` and the envs it wraps (a wrapper may define it)."""
    while env is not None:
        fn = getattr(env, "set_task", None)
        if callable(fn):
            return fn
        env = getattr(env, "env", None)
    return None


def _chain(env: Any) -> str:
    names = []
    while env is not None:
        names.append(type(env).__name__)
        env = getattr(env, "env", None)
    return " > ".join(names)


@dataclasses.dataclass
class GymTaskDistribution(TaskDistribution):
    """Subclass it: set ``name`` and ``task_names``, implement ``make_env`` and ``sample_tasks``.

    ``make_env()`` returns a fresh env that has ``set_task(task_row)``, itself or on any wrapper
    around it (the outermost one is used); the adapter calls it on every env before each batch of
    episodes.
    """

    tasks_ignored_hint: ClassVar[str] = "does set_task(task) change the env? caml-rl calls it before each reset"

    @abstractmethod
    def make_env(self) -> gym.Env:
        """A fresh single env (with a ``set_task`` method)."""

    @property
    def _probe(self) -> gym.Env:
        if not hasattr(self, "_probe_env"):
            object.__setattr__(self, "_probe_env", self.make_env())
        return self._probe_env

    @property
    def observation_space(self) -> gym.spaces.Box:
        return self._probe.observation_space

    @property
    def action_space(self) -> gym.spaces.Space:
        return self._probe.action_space

    def make_vec_env(self, num_envs: int, device: torch.device) -> BatchedEnv:
        if find_set_task(self._probe) is None:
            raise TaskDistributionError(
                f"env {self.name!r}: {_chain(self._probe)} has no set_task(task) method "
                "(define it on the env or on a wrapper around it)"
            )
        return GymVecEnv(self, num_envs, device)

    def render_env(self, task: np.ndarray) -> gym.Env | None:
        """``make_env()``'s env set to ``task``, if it renders ``rgb_array`` frames (made with
        ``render_mode="rgb_array"``); override to build a rendering env only for videos."""
        env = self.make_env()
        set_task = find_set_task(env)
        if getattr(env, "render_mode", None) != "rgb_array" or set_task is None:
            env.close()
            return None
        set_task(np.asarray(task, dtype=np.float64))
        return env


class GymVecEnv(BatchedEnv):
    """``num_envs`` Gymnasium envs as one batched env, each value checked as it is copied."""

    def __init__(self, dist: GymTaskDistribution, num_envs: int, device: torch.device):
        self.dist, self.name = dist, dist.name
        self.num_envs, self.device = num_envs, torch.device(device)
        self.envs = [dist.make_env() for _ in range(num_envs)]
        self._set_task = [find_set_task(env) for env in self.envs]
        self.label = type(self.envs[0].unwrapped).__name__
        self.obs_shape = tuple(dist.observation_space.shape)
        self._obs = np.zeros((num_envs, *self.obs_shape), dtype=np.float32)
        self._reward = np.zeros(num_envs)
        self._done = np.zeros(num_envs, dtype=bool)
        self._success = np.zeros(num_envs, dtype=bool)
        self._tasks = np.zeros((num_envs, len(dist.task_names)))
        self._t = 0

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        self._tasks = np.asarray(tasks, dtype=np.float64).reshape(self.num_envs, -1)
        # env i gets seed + i, as SyncVectorEnv.reset(seed=seed) gives; i counts in the whole batch
        seed = int(rng.integers(2**31)) + rng_offset(rng)
        for i, env in enumerate(self.envs):  # once per batch of episodes, not per step
            set_task = self._set_task[i]
            if set_task is None:
                raise TaskDistributionError(f"env {self.name!r}: {_chain(env)} has no set_task(task) method")
            owner = type(getattr(set_task, "__self__", env)).__name__
            self._guard(i, "reset", f"{owner}.set_task()", set_task, self._tasks[i])
            out = self._guard(i, "reset", f"{self.label}.reset()", env.reset, seed=seed + i)
            if not isinstance(out, tuple) or len(out) != 2:
                self._fault(i, "reset", f"reset() returned {_describe(out)}; expected (observation, info)")
            self._store_obs(i, "reset", out[0])
        self._done[:] = False
        self._success[:] = False
        self._t = 0
        self.success = None
        self._check_finite("reset")
        return torch.from_numpy(self._obs.reshape(self.num_envs, -1).copy()).to(self.device)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        act = actions.detach().cpu().numpy()
        t = self._t
        self._t += 1
        self._reward[self._done] = 0.0
        any_success = False
        for i, env in enumerate(self.envs):
            if self._done[i]:
                continue
            out = self._guard(i, t, f"{self.label}.step()", env.step, act[i])
            if not isinstance(out, tuple) or len(out) != 5:
                self._fault(
                    i,
                    t,
                    f"step() returned {_describe(out)}; expected (observation, reward, terminated, truncated, info)",
                )
            obs, reward, terminated, truncated, info = out
            self._store_obs(i, t, obs)
            self._reward[i] = reward if type(reward) in _NUMBERS else self._scalar(i, t, "reward", reward, "a number")
            if type(terminated) not in _BOOLS:
                terminated = self._scalar(i, t, "terminated", terminated, "a bool")
            if type(truncated) not in _BOOLS:
                truncated = self._scalar(i, t, "truncated", truncated, "a bool")
            self._done[i] = terminated or truncated
            if isinstance(info, dict) and "success" in info:  # e.g. Meta-World: logged beside the return
                self._success[i] = bool(info["success"])
                any_success = True
        self._check_finite(t)
        if any_success:
            self.success = torch.from_numpy(self._success.copy()).to(self.device)
        return (
            torch.from_numpy(self._obs.reshape(self.num_envs, -1).copy()).to(self.device),
            torch.from_numpy(self._reward.astype(np.float32)).to(self.device),
            torch.from_numpy(self._done.copy()).to(self.device),
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # ------------------------------------------------------------------ checks
    def _fault(self, i: int, where: int | str, problem: str, raised: bool = False) -> None:
        raise EnvFault(
            self.name, where, problem, sim=i, task=self._tasks[i], task_names=self.dist.task_names, raised=raised
        )

    def _guard(self, i: int, where: int | str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the user's code; an exception becomes one line with its context (the original as cause)."""
        try:
            return fn(*args, **kwargs)
        except TaskDistributionError:
            raise
        except Exception as exc:
            fault = EnvFault(
                self.name,
                where,
                f"{what} raised {one_line(exc)}",
                sim=i,
                task=self._tasks[i],
                task_names=self.dist.task_names,
                raised=True,
            )
            raise fault from exc

    def _store_obs(self, i: int, where: int | str, obs: Any) -> None:
        if getattr(obs, "shape", None) != self.obs_shape:
            try:
                shape = np.shape(obs)
            except Exception:  # ragged sequences
                shape = None
            if shape != self.obs_shape:
                got = f"shape {shape}" if shape is not None else f"a ragged {type(obs).__name__}"
                self._fault(i, where, f"observation has {got}; expected {self.obs_shape} (the observation space's)")
        try:
            self._obs[i] = obs
        except (TypeError, ValueError) as exc:
            self._fault(i, where, f"observation is not numeric ({one_line(exc)})")

    def _scalar(self, i: int, where: int | str, what: str, value: Any, expected: str) -> Any:
        """The slow path for a value that is not a plain Python/numpy scalar: 0-d arrays pass."""
        try:
            arr = np.asarray(value)
        except Exception:
            arr = np.asarray(None, dtype=object)
        if arr.ndim != 0:
            self._fault(i, where, f"{what} has shape {arr.shape}; expected {expected}")
        if arr.dtype.kind not in "biuf":
            self._fault(i, where, f"{what} is {_short(value)}; expected {expected}")
        return arr.item()

    def _check_finite(self, where: int | str) -> None:
        if np.isfinite(self._obs).all() and np.isfinite(self._reward).all():
            return
        for what, x in (("observation", self._obs.reshape(self.num_envs, -1)), ("reward", self._reward[:, None])):
            bad = ~np.isfinite(x)
            if bad.any():
                i, j = np.argwhere(bad)[0]
                entry = f"observation[{j}]={x[i, j]}" if what == "observation" else f"reward={x[i, 0]}"
                self._fault(int(i), where, f"{what} is not finite ({entry})")


def _describe(value: Any) -> str:
    return f"a tuple of {len(value)}" if isinstance(value, tuple) else f"a {type(value).__name__}"


def _short(value: Any) -> str:
    text = repr(value)
    return f"a {type(value).__name__} ({text[:40] + '...' if len(text) > 40 else text})"
