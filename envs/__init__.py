"""Task distributions for caml-rl, installed as ``caml_rl.envs``.

Add your own: subclass :class:`TaskDistribution` (or wrap a Gymnasium env with
:class:`GymTaskDistribution`) and call :func:`register`. See the docs, "Task distributions and plug-ins".
"""

import os

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"  # headless rendering; must be set before mujoco is imported

import gymnasium as gym  # noqa: E402

from .base import (
    BatchedEnv,
    EnvFault,
    ShardedGenerator,
    TaskDistribution,
    TaskDistributionError,
    import_user_modules,
    make,
    register,
    registered,
    rng_offset,
)
from .gym_adapter import GymTaskDistribution
from .locomotion_registry import register_all
from .metaworld import register_metaworld
from .navigation import Navigation2D
from .sb3_trial import TrialVecEnv
from .sb3_vec_env import TaskVecEnv
from .single_task import SingleTaskEnv
from .task_in_observation import TaskInObservation
from .validation import validate

register("navigation2d", Navigation2D)
register("task_in_observation", TaskInObservation)  # the oracle baseline
register_all()  # HalfCheetah and Ant task distributions and their caml/...-v0 gym ids
register_metaworld()  # only when the optional `metaworld` extra is installed


def _single(name: str):
    def entry_point(task=None, **settings):
        return SingleTaskEnv(make(name, **settings), task=task)

    return entry_point


if "caml/Navigation2D-v0" not in gym.registry:
    gym.register("caml/Navigation2D-v0", entry_point=_single("navigation2d"), max_episode_steps=None)

__all__ = [
    "BatchedEnv",
    "EnvFault",
    "GymTaskDistribution",
    "Navigation2D",
    "ShardedGenerator",
    "SingleTaskEnv",
    "TaskDistribution",
    "TaskDistributionError",
    "TaskInObservation",
    "TaskVecEnv",
    "TrialVecEnv",
    "import_user_modules",
    "make",
    "register",
    "registered",
    "rng_offset",
    "validate",
]
