"""Registers the MuJoCo locomotion task distributions by name and as Gymnasium ids.

``envs/__init__.py`` calls ``register_all()`` on import; calling it again does nothing (it
skips names and ids already registered).
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np

from .ant import AntDir, AntGoal, AntVel
from .base import make, register, registered
from .half_cheetah import HalfCheetahDir, HalfCheetahDynamics, HalfCheetahVel
from .locomotion import MujocoTaskDistribution
from .mujoco_render import MujocoSingleTaskEnv

LOCOMOTION: dict[str, tuple[type[MujocoTaskDistribution], str]] = {
    "halfcheetah_vel": (HalfCheetahVel, "caml/HalfCheetahVel-v0"),
    "halfcheetah_dir": (HalfCheetahDir, "caml/HalfCheetahDir-v0"),
    "halfcheetah_dynamics": (HalfCheetahDynamics, "caml/HalfCheetahDynamics-v0"),
    "ant_vel": (AntVel, "caml/AntVel-v0"),
    "ant_dir": (AntDir, "caml/AntDir-v0"),
    "ant_goal": (AntGoal, "caml/AntGoal-v0"),
}


def make_single(
    name: str,
    task: np.ndarray | None = None,
    render_mode: str | None = None,
    width: int = 320,
    height: int = 240,
    **settings: Any,
) -> MujocoSingleTaskEnv:
    """Gymnasium entry point: one env of registered distribution ``name`` (``task`` fixes its task)."""
    return MujocoSingleTaskEnv(make(name, **settings), task=task, render_mode=render_mode, width=width, height=height)


def register_all() -> None:
    """Register every locomotion distribution under its name and its ``caml/...-v0`` Gymnasium id."""
    known = registered()
    for name, (cls, gym_id) in LOCOMOTION.items():
        if name not in known:
            register(name, cls)
        if gym_id not in gym.registry:
            gym.register(gym_id, entry_point=functools.partial(make_single, name), max_episode_steps=None)
