"""The ``warp`` simulator: MuJoCo Warp, ``nsim`` worlds on the policy's device.

State lives in Warp arrays on the device (an NVIDIA GPU, or Warp's CPU device), seen by torch
without copies through ``wp.to_torch``: the env's observation and reward maths reads them in
place and writes controls in place. The ``frame_skip`` physics steps of one env step are captured
once into a graph (a CUDA graph on a GPU; Warp's replayed recording on its CPU device) and
replayed every step, so stepping costs one launch and never waits for the device.

MuJoCo Warp computes in float32 and builds some contact frames differently from the C library,
so its trajectories follow the C simulator closely until contacts and then drift (tested with
stated tolerances in tests/test_warp_backend.py). Kernels compile on first use (about a minute
per model on a CPU; cached in Warp's kernel cache folder afterwards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Iterator
from typing import Any

import mujoco
import numpy as np
import torch

from .base import TaskDistributionError
from .simulator import MAX_ABS_STATE, SETCONST_INPUTS, Simulator, state_faults

INSTALL_HINT = "pip install 'caml-rl[warp]' (or: pip install mujoco-warp)"
# constants mj_setConst derives from body masses/inertias: per world too when those are
_DERIVED = ("body_subtreemass", "body_invweight0", "dof_invweight0", "tendon_invweight0", "actuator_acc0")
# buffer overflows after which a world's results are wrong (solver iteration limits are not)
_CAPACITY_OVERFLOWS = ("NEFC", "NJMAX_NNZ", "BROADPHASE", "NARROWPHASE", "CCD")


def require_warp() -> tuple[Any, Any]:
    """``(warp, mujoco_warp)``, or a one-line error saying how to install them."""
    try:
        wp = importlib.import_module("warp")
        wp.config.quiet = True  # before anything initialises Warp: no banner
        wp.config.log_level = max(wp.config.log_level, wp.LOG_WARNING)  # no line per kernel module loaded
        mjw = importlib.import_module("mujoco_warp")
    except ImportError as exc:
        raise TaskDistributionError(
            f"env setting simulator='warp' needs MuJoCo Warp, which is not installed ({exc.name} missing): "
            + INSTALL_HINT
        ) from None
    return wp, mjw


def per_world_fields() -> tuple[str, ...]:
    """Model fields MuJoCo Warp can give a value per world (its ``Model`` arrays whose shape starts ``*``)."""
    _, mjw = require_warp()
    return tuple(f.name for f in dataclasses.fields(mjw.Model) if tuple(getattr(f.type, "shape", ()))[:1] == ("*",))


class WarpSimulator(Simulator):
    """``state_qpos``/``state_qvel``/``body_xpos`` are float32 torch views of the Warp data on ``device``.

    ``qpos``/``qvel`` are numpy arrays for inspection: views on Warp's CPU device, copies on a GPU.
    Every Warp launch and every torch operation on the state belongs inside ``scope()``.
    """

    backend = "warp"
    on_device = True

    def __init__(self, model: mujoco.MjModel, nsim: int, frame_skip: int, device: torch.device, capture: bool = True):
        """``capture=False`` launches every kernel of every step from Python (for comparison and debugging)."""
        self._wp, self._mjw = require_warp()
        wp = self._wp
        self.model, self.nsim, self.frame_skip = model, int(nsim), int(frame_skip)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device.type not in ("cpu", "cuda"):
            raise TaskDistributionError(f"simulator='warp' runs on cpu or cuda devices, not {self.device}")
        try:
            self._wdev = wp.get_device("cpu" if self.device.type == "cpu" else f"cuda:{self.device.index}")
        except Exception as exc:
            raise TaskDistributionError(f"simulator='warp' cannot use device {self.device}: {exc}") from None
        self.applied_tasks = None
        self._batched: set[str] = set()
        self._capacity = sum(int(getattr(self._mjw.OverflowType, n)) for n in _CAPACITY_OVERFLOWS)
        with self.scope():
            self._m = self._mjw.put_model(model)
            self._d = self._mjw.make_data(model, nworld=self.nsim)
            self._qpos = wp.to_torch(self._d.qpos)
            self._qvel = wp.to_torch(self._d.qvel)
            self._ctrl = wp.to_torch(self._d.ctrl)
            self._xpos = wp.to_torch(self._d.xpos)  # [nsim, nbody, 3]
        self._graph: Any = None
        self._stepped = False
        self._capture = capture

    # --------------------------------------------------------------------------- device
    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Warp's device, and on a GPU Warp's stream for torch too, ordered after the caller's stream.

        The caller's stream waits for this work on leaving, so tensors handed back are ready there
        without the host ever waiting.
        """
        wp = self._wp
        if self._wdev.is_cpu:
            with wp.ScopedDevice(self._wdev):
                yield
            return
        caller = torch.cuda.current_stream(self.device)
        ours = wp.stream_to_torch(self._wdev.stream)
        ours.wait_stream(caller)
        try:
            with wp.ScopedDevice(self._wdev), torch.cuda.stream(ours):
                yield
        finally:
            caller.wait_stream(ours)

    # ---------------------------------------------------------------------------- state
    @property
    def state_qpos(self) -> torch.Tensor:
        return self._qpos

    @property
    def state_qvel(self) -> torch.Tensor:
        return self._qvel

    @property
    def qpos(self) -> np.ndarray:
        return self._d.qpos.numpy()

    @property
    def qvel(self) -> np.ndarray:
        return self._d.qvel.numpy()

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """One host-to-device copy per reset (the reset noise is drawn on the host, as gymnasium's)."""
        with self.scope():
            self._mjw.reset_data(self._m, self._d)
            self._qpos.copy_(torch.as_tensor(qpos, dtype=torch.float32).to(self.device, non_blocking=True))
            self._qvel.copy_(torch.as_tensor(qvel, dtype=torch.float32).to(self.device, non_blocking=True))
            self._mjw.forward(self._m, self._d)

    def set_ctrl(self, ctrl: torch.Tensor, ids: np.ndarray | None = None) -> None:
        """All worlds (``ids`` is for the host simulators, which skip terminated ones)."""
        with self.scope():
            self._ctrl.copy_(ctrl)

    def step(self, ids: np.ndarray | None = None) -> None:
        """Every world steps (terminated ones too: the env freezes what they report).

        The first step runs the kernels directly (compiling them); the second captures them into a
        graph, which every later step replays.
        """
        wp, mjw = self._wp, self._mjw
        with self.scope():
            if self._graph is None and self._stepped and self._capture:
                with wp.ScopedCapture(device=self._wdev) as capture:
                    for _ in range(self.frame_skip):
                        mjw.step(self._m, self._d)
                self._graph = capture.graph
            if self._graph is not None:
                wp.capture_launch(self._graph)
            else:
                for _ in range(self.frame_skip):
                    mjw.step(self._m, self._d)
                self._stepped = True

    def body_xpos(self, body: int) -> torch.Tensor:
        return self._xpos[:, body]

    def unstable_mask(self) -> torch.Tensor:
        """``[nsim]`` bool on the device: state not finite or huge, or a buffer overflowed (no sync)."""
        with self.scope():
            bad = ~((self._qpos.abs() <= MAX_ABS_STATE).all(1) & (self._qvel.abs() <= MAX_ABS_STATE).all(1))
            return bad | ((self._wp.to_torch(self._d.overflow) & self._capacity) != 0)

    def unstable(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """Host side (reads the state): non-finite or huge state, or a MuJoCo Warp buffer overflow."""
        sel = np.arange(self.nsim) if ids is None else ids
        bad_pos, bad_vel = state_faults(self.qpos[sel], self.qvel[sel])
        overflow = self._d.overflow.numpy()[sel] & self._capacity
        bad = bad_pos | bad_vel | (overflow != 0)
        reasons = []
        for k in np.flatnonzero(bad):
            parts = [p for p, b in (("qpos not finite", bad_pos[k]), ("qvel not finite", bad_vel[k])) if b]
            if overflow[k]:
                names = [n for n in _CAPACITY_OVERFLOWS if overflow[k] & int(getattr(self._mjw.OverflowType, n))]
                parts.append(
                    f"MuJoCo Warp overflowed {'/'.join(names)} (njmax={self._d.njmax}, naconmax={self._d.naconmax})"
                )
            reasons.append("; ".join(parts))
        return sel[bad], reasons

    # ------------------------------------------------------------------ per-world model
    def set_model_fields(self, values: dict[str, np.ndarray]) -> None:
        """Fields become per-world on first use (the model is rebuilt once, the step graph recaptured)."""
        allowed = per_world_fields()
        for name in values:
            if name not in allowed:
                raise TaskDistributionError(
                    f"simulator='warp' cannot give model field {name!r} a value per world; "
                    f"it can vary: {', '.join(allowed)}"
                )
        needs_const = any(name in SETCONST_INPUTS for name in values)
        wanted = set(values) | ({n for n in _DERIVED if n in allowed} if needs_const else set())
        with self.scope():
            if not wanted <= self._batched:
                self._batched |= wanted
                self._m = self._mjw.put_model(self.model, batch_sizes={n: self.nsim for n in sorted(self._batched)})
                self._graph, self._stepped = None, False
            for name, value in values.items():
                target = self._wp.to_torch(getattr(self._m, name))
                target.copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32).reshape(target.shape))
            if needs_const:
                self._mjw.set_const(self._m, self._d)

    def get_data(self, sim: int, data: mujoco.MjData) -> mujoco.MjData:
        data.qpos[:] = self.qpos[sim]
        data.qvel[:] = self.qvel[sim]
        return data

    def close(self) -> None:
        self._graph = None
