"""Meta-World ML1 and ML10 as task distributions (optional extra: ``pip install 'caml-rl[metaworld]'``).

Stepped through :class:`GymTaskDistribution`, i.e. gymnasium's synchronous vector API: one
Python-level Meta-World ``step`` per simulation per time step (a few thousand steps/s).

**Task rows.** Meta-World describes a task by its ``rand_vec``: the vector that places the
objects and the goal at reset (for ``reach-v3``, ``push-v3`` and ``pick-place-v3``: object
x, y, z, then goal x, y, z). Its ``ML1``/``ML10`` benchmarks pre-draw 50 of them per env from the
global numpy generator. Here the task row *is* the ``rand_vec`` itself, drawn in the main process
from caml-rl's seeded generator by Meta-World's own reset code (a probe env whose ``np_random``
is our generator for the duration of the draw), so every constraint Meta-World applies while
drawing (e.g. "goal at least 15 cm from the object" for reach/push/pick-place) holds, and the
continuous task space is the one Meta-World's 50 goals are drawn from. Each simulation gets the
row through Meta-World's public ``env.set_task(Task(...))`` with ``partially_observable=True``
(the goal is zeroed in the observation, as in ML1/ML10).

- ML1 (``metaworld_ml1``, ``env_name`` setting, any Meta-World v3 env, default ``reach-v3``):
  row = ``rand_vec`` (3 or 6 numbers, depending on the env). ``metaworld_ml1_reach``,
  ``metaworld_ml1_push`` and ``metaworld_ml1_pick_place`` are registry entries for ML1 with
  another default ``env_name`` (:data:`ML1_VARIANTS`).
- ML10 (``metaworld_ml10``): row = ``(env_index, rand_vec_0, ..., rand_vec_5)``; ``env_index``
  (stored as a float, an exact integer) picks one of Meta-World's ten ML10 train envs (or the
  five test envs with ``split="test"``) in the order of ``metaworld.env_dict.ML10_V3``, drawn
  uniformly; ``rand_vec`` is zero-padded to 6 numbers for envs with a 3-number vector.

``info["success"]`` of each step reaches the sampler as ``BatchedEnv.success``: an episode counts
as solved if it succeeds at any step (as in Meta-World's own evaluation, which ends an episode
on success). Actions are clipped to Meta-World's ``[-1, 1]^4``.

Costs: one Meta-World simulation holds about 25 MB (its model carries meshes and textures) and
takes about 0.1 s to build; a sampler builds ``tasks x episodes`` of them. ML10 simulations are
kept in a pool per env class and reused across resets and samplers of one distribution.

This module imports without Meta-World installed; :func:`register_metaworld` registers the
names only when it is.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import pickle
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from .base import TaskDistributionError, register, registered
from .gym_adapter import GymTaskDistribution

OBJ_GOAL_NAMES = ("obj_x", "obj_y", "obj_z", "goal_x", "goal_y", "goal_z")
"""Layout of ``rand_vec`` for the envs whose reset reads it as object then goal position."""
_OBJ_GOAL_ENVS = ("reach-v3", "push-v3", "pick-place-v3")
ML10_RAND_VEC_SIZE = 6


def metaworld_available() -> bool:
    return importlib.util.find_spec("metaworld") is not None


def _require_metaworld() -> None:
    """Raise a one-line TaskDistributionError if Meta-World is missing or its mujoco pin is not met."""
    if not metaworld_available():
        raise TaskDistributionError("Meta-World is not installed: pip install 'caml-rl[metaworld]'")
    try:
        pins = [
            r.split("==", 1)[1].strip()
            for r in importlib.metadata.requires("metaworld") or []
            if r.replace(" ", "").startswith("mujoco==") and ";" not in r
        ]
        have = importlib.metadata.version("mujoco")
    except importlib.metadata.PackageNotFoundError:
        return
    if pins and have != pins[0]:
        raise TaskDistributionError(
            f"Meta-World {importlib.metadata.version('metaworld')} needs mujoco=={pins[0]}, found mujoco {have}: "
            "install it in its own venv with pip install 'caml-rl[metaworld]'"
        )


class _EnvClass:
    """One Meta-World env class: its name, class and the kwargs of its ``Task`` data."""

    def __init__(self, env_name: str, cls: type, kwargs: dict[str, Any]):
        self.env_name, self.cls = env_name, cls
        self.kwargs = {k: v for k, v in kwargs.items() if k != "task_id"}
        self._sampler: Any = None  # a raw env used only to draw rand_vecs in the main process

    def new_env(self, horizon: int) -> Any:
        env = self.cls()
        env.max_path_length = horizon  # Meta-World truncates (and refuses to step) at this length
        return env

    @property
    def rand_vec_size(self) -> int:
        return int(self._draw_env()._random_reset_space.low.size)

    def _draw_env(self) -> Any:
        if self._sampler is None:
            env = self.cls()
            env._freeze_rand_vec, env.seeded_rand_vec = False, True  # draw from env.np_random at reset
            env._set_task_called, env._partially_observable = True, True
            env._set_task_inner(**self.kwargs)
            self._sampler = env
        return self._sampler

    def draw_rand_vec(self, rng: np.random.Generator) -> np.ndarray:
        """Meta-World's own reset draws the vector (with its rejection rules) from our generator."""
        env = self._draw_env()
        env.np_random = rng
        try:
            env.reset()
        finally:
            env.np_random = np.random.default_rng(0)  # never keep a reference to the caller's generator
        return np.asarray(env._last_rand_vec, dtype=np.float64).copy()

    def task(self, rand_vec: np.ndarray) -> Any:
        from metaworld.types import Task

        data = dict(
            self.kwargs, rand_vec=np.asarray(rand_vec, dtype=np.float64), env_cls=self.cls, partially_observable=True
        )
        return Task(env_name=self.env_name, data=pickle.dumps(data))


class MetaWorldTaskEnv(gym.Env):
    """One simulation slot: ``set_task(row)`` picks the env class and its ``rand_vec``.

    The Meta-World env behind it is taken from (and given back to) the distribution's pool, so a
    slot that switches env class (ML10) does not build a new simulation each time.
    """

    metadata = {"render_modes": []}

    def __init__(self, dist: _MetaWorldBase):
        self._dist = dist
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dist.obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._env: Any = None
        self._index = -1
        self._t = 0

    def set_task(self, task: np.ndarray) -> None:
        index, rand_vec = self._dist.decode(np.asarray(task, dtype=np.float64))
        if index != self._index:
            self._give_back()
            self._env, self._index = self._dist.borrow(index), index
        self._env.set_task(self._dist.classes[index].task(rand_vec))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)  # Meta-World's reset is deterministic given the task
        if self._env is None:
            raise RuntimeError("MetaWorldTaskEnv: call set_task(task) before reset()")
        self._t = 0
        obs, _ = self._env.reset()
        return np.asarray(obs, dtype=np.float32), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        obs, reward, terminated, truncated, info = self._env.step(action)
        self._t += 1
        truncated = bool(truncated) or self._t >= self._dist.horizon
        # only "success" is passed on: the vector env aggregates every info key at every step
        return (
            np.asarray(obs, dtype=np.float32),
            float(reward),
            bool(terminated),
            truncated,
            {"success": bool(info.get("success", False))},
        )

    def _give_back(self) -> None:
        if self._env is not None:
            self._dist.give_back(self._index, self._env)
            self._env, self._index = None, -1

    def close(self) -> None:
        self._give_back()


@dataclasses.dataclass
class _MetaWorldBase(GymTaskDistribution):
    """Shared machinery: env classes, task (de)coding, the pool of Meta-World simulations."""

    horizon: int = 500

    def __post_init__(self) -> None:
        _require_metaworld()
        self._classes: list[_EnvClass] | None = None  # built on first use (imports Meta-World)
        self._pool: dict[int, list[Any]] = {}  # env index -> Meta-World envs no slot is using

    # -- subclasses -------------------------------------------------------------------------
    def _env_classes(self) -> list[_EnvClass]:
        raise NotImplementedError

    def decode(self, row: np.ndarray) -> tuple[int, np.ndarray]:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    @property
    def classes(self) -> list[_EnvClass]:
        if self._classes is None:
            self._classes = self._env_classes()
        return self._classes

    @property
    def obs_dim(self) -> int:
        return 39  # Meta-World v3: hand (3) + gripper (1) + objects (14), twice (frame stack), + goal (3)

    def borrow(self, index: int) -> Any:
        free = self._pool.setdefault(index, [])
        return free.pop() if free else self.classes[index].new_env(self.horizon)

    def give_back(self, index: int, env: Any) -> None:
        self._pool.setdefault(index, []).append(env)

    def make_env(self) -> gym.Env:
        return MetaWorldTaskEnv(self)

    def validate_settings(self) -> None:
        super().validate_settings()
        self.classes  # noqa: B018  (an unknown env name fails here)


@dataclasses.dataclass
class MetaWorldML1(_MetaWorldBase):
    """Meta-World ML1: one env (``env_name``, any v3 name), tasks = its object/goal placements.

    Task row = Meta-World's ``rand_vec`` for that env (see the module docstring).
    """

    name = "metaworld_ml1"
    env_name: str = "reach-v3"

    @property
    def task_names(self) -> tuple[str, ...]:  # type: ignore[override]
        n = self.classes[0].rand_vec_size
        if self.env_name in _OBJ_GOAL_ENVS and n == len(OBJ_GOAL_NAMES):
            return OBJ_GOAL_NAMES
        return tuple(f"rand_vec_{i}" for i in range(n))

    def _env_classes(self) -> list[_EnvClass]:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS

        if self.env_name not in ALL_V3_ENVIRONMENTS:
            raise TaskDistributionError(
                f"env setting env_name={self.env_name!r} is not a Meta-World v3 env; "
                f"known: {', '.join(sorted(ALL_V3_ENVIRONMENTS))}"
            )
        kwargs = ML1_ARGS_KWARGS[self.env_name]["kwargs"]
        return [_EnvClass(self.env_name, ALL_V3_ENVIRONMENTS[self.env_name], kwargs)]

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        cls = self.classes[0]
        return np.stack([cls.draw_rand_vec(rng) for _ in range(num_tasks)]).reshape(num_tasks, -1)

    def decode(self, row: np.ndarray) -> tuple[int, np.ndarray]:
        return 0, row


@dataclasses.dataclass
class MetaWorldML10(_MetaWorldBase):
    """Meta-World ML10: ten manipulation envs (``split="train"``) or the five held-out ones (``"test"``).

    Task row = ``(env_index, rand_vec_0..5)``: ``env_index`` ~ uniform over the split's envs in
    ``metaworld.env_dict.ML10_V3`` order, ``rand_vec`` drawn by that env (zero-padded to 6).
    """

    name = "metaworld_ml10"
    task_names = ("env_index",) + tuple(f"rand_vec_{i}" for i in range(ML10_RAND_VEC_SIZE))
    split: str = "train"

    @property
    def env_names(self) -> list[str]:
        return [c.env_name for c in self.classes]

    def _env_classes(self) -> list[_EnvClass]:
        from metaworld.env_dict import ML10_ARGS_KWARGS, ML10_V3

        if self.split not in ("train", "test"):
            raise TaskDistributionError(f"env setting split={self.split!r} must be 'train' or 'test'")
        args = ML10_ARGS_KWARGS[self.split]
        return [_EnvClass(n, cls, args[n]["kwargs"]) for n, cls in ML10_V3[self.split].items()]

    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        classes = self.classes
        rows = np.zeros((num_tasks, 1 + ML10_RAND_VEC_SIZE))
        rows[:, 0] = rng.integers(len(classes), size=num_tasks)
        for row in rows:
            vec = classes[int(row[0])].draw_rand_vec(rng)
            row[1 : 1 + vec.size] = vec
        return rows

    def decode(self, row: np.ndarray) -> tuple[int, np.ndarray]:
        index = int(round(row[0]))
        if not 0 <= index < len(self.classes):
            raise TaskDistributionError(f"env {self.name!r}: env_index {row[0]} outside 0..{len(self.classes) - 1}")
        return index, row[1 : 1 + self.classes[index].rand_vec_size]


ML1_VARIANTS = {
    "metaworld_ml1_reach": "reach-v3",  # reach a hidden goal position
    "metaworld_ml1_push": "push-v3",  # push a puck (placed by the task) to a hidden goal
    "metaworld_ml1_pick_place": "pick-place-v3",  # pick a puck up and place it at a hidden goal
}
"""Registered name -> default ``env_name`` of ML1 (still a setting under that name)."""

METAWORLD_ENVS: dict[str, Callable[..., _MetaWorldBase]] = {
    "metaworld_ml1": MetaWorldML1,
    **{name: functools.partial(MetaWorldML1, env_name=env_name) for name, env_name in ML1_VARIANTS.items()},
    "metaworld_ml10": MetaWorldML10,
}
# ``module:Class`` names that runs recorded when the variants were subclasses
MetaWorldML1Reach = METAWORLD_ENVS["metaworld_ml1_reach"]
MetaWorldML1Push = METAWORLD_ENVS["metaworld_ml1_push"]
MetaWorldML1PickPlace = METAWORLD_ENVS["metaworld_ml1_pick_place"]


def register_metaworld() -> list[str]:
    """Register the Meta-World task distributions if Meta-World is installed (idempotent).

    Returns the names registered by this call (none without Meta-World).
    """
    if not metaworld_available():
        return []
    known = registered()
    added = [name for name in METAWORLD_ENVS if name not in known]
    for name in added:
        register(name, METAWORLD_ENVS[name])
    return added
