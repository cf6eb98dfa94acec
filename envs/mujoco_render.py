"""Rendering a locomotion task: one task as a Gymnasium env whose ``render()`` returns frames.

Kept apart from the simulators: it mirrors one simulation's ``qpos``/``qvel`` (from any backend)
into an ``MjData`` and draws it with the C library's OpenGL renderer.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING

import gymnasium as gym
import mujoco
import numpy as np

from .base import TaskDistributionError
from .single_task import SingleTaskEnv

if TYPE_CHECKING:
    from .locomotion import MujocoTaskDistribution


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
