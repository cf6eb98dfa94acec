"""Figures and videos of a trained run: what the policy does after 0, 1, 2, ... inner steps.

Adaptation follows ``caml-rl evaluate``: tasks come from the evaluation seed stream, and step k's
episodes are sampled with the fast values adapted on step k-1's (fresh) episodes. Outputs:
learning curves (``progress.csv``), 2D-navigation trajectories, MuJoCo videos (one episode per
step, panels side by side) with forward-velocity plots, and a PCA of the adapted contexts.

Rendering makes its own offscreen OpenGL context, trying ``$MUJOCO_GL``, then EGL, then OSMesa,
so it works even when MuJoCo was imported before ``MUJOCO_GL`` was set.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caml_rl.envs.base import BatchedEnv

from .checkpoint import CheckpointError, check_out_path, read_progress, read_yaml_mapping
from .episodes import Episodes
from .evaluation import adaptation_steps
from .partition import FastWeights
from .runs import LoadedRun, load_run
from .sampler import Sampler
from .seeding import EVAL_STREAM, make_streams

DPI = 120
GL_BACKENDS = ("egl", "osmesa")
PANEL_W, PANEL_H, CAPTION_H = 320, 240, 48
MAX_TRAJECTORIES = 10  # episodes drawn per navigation panel
MAX_GRID_TASKS = 6
EMBEDDING_TASKS = 40  # the paper-style embedding plot: 40+ tasks


class RenderError(RuntimeError):
    """No OpenGL backend could make an offscreen context; the message names each one tried."""


def notice(message: str) -> None:
    print(f"caml-rl: notice: {message}", file=sys.stderr)


# ============================================================== adapting and recording
@dataclass
class StepRecord:
    """One adaptation step's rollout. ``obs`` has the reset observation first: ``[T+1, tasks, eps, d]``."""

    step: int
    episodes: Episodes
    fast: FastWeights
    obs: np.ndarray
    velocity: np.ndarray | None  # [T, tasks, eps] forward velocity (MuJoCo)
    qpos: np.ndarray | None  # [T+1, tasks, nq] of each task's first episode (MuJoCo)
    qvel: np.ndarray | None


class _Recorder(BatchedEnv):
    """Wraps the sampler's env and keeps every observation; for MuJoCo also the forward velocity
    and the state of each task's first simulation (for rendering)."""

    def __init__(self, env: BatchedEnv, render_ids: np.ndarray):
        self.env, self.num_envs, self.device = env, env.num_envs, env.device
        self.sim = getattr(env, "sim", None)
        self.render_ids = render_ids

    @property
    def success(self) -> torch.Tensor | None:  # type: ignore[override]
        return self.env.success

    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        obs = self.env.reset(tasks, rng)
        self.obs, self.velocity, self.qpos, self.qvel = [obs.cpu().numpy().copy()], [], [], []
        self._keep_state()
        return obs

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs, reward, terminated = self.env.step(actions)
        self.obs.append(obs.cpu().numpy().copy())
        velocity = getattr(self.env, "info", {}).get("velocity")
        if velocity is not None:
            self.velocity.append(np.array(velocity[:, 0], dtype=np.float64))
        self._keep_state()
        return obs, reward, terminated

    def _keep_state(self) -> None:
        if self.sim is not None:
            self.qpos.append(self.sim.qpos[self.render_ids].copy())
            self.qvel.append(self.sim.qvel[self.render_ids].copy())

    def close(self) -> None:
        self.env.close()


def rollout_adaptation(
    run: LoadedRun,
    tasks: np.ndarray,
    steps: Sequence[int],
    *,
    episodes: int | None = None,
    seed: int | None = None,
    through: int | None = None,
) -> tuple[list[StepRecord], FastWeights]:
    """Adapt to every task step by step on fresh episodes, recording the ``steps`` asked for.

    Adapts ``through`` steps in all (default ``max(steps)``); returns the records and the final
    fast values (after ``through`` inner steps).
    """
    tasks = np.asarray(tasks, dtype=np.float64).reshape(-1, len(run.distribution.task_names))
    a, e = run.config.adaptation, run.config.evaluation
    episodes = episodes or e.episodes
    last = max(steps, default=0) if through is None else through
    n_t = len(tasks)
    streams = make_streams(run.config.seed if seed is None else seed, EVAL_STREAM)
    sampler = Sampler(run.distribution, n_t, episodes, torch.device("cpu"))
    sampler.env = recorder = _Recorder(sampler.env, np.arange(n_t) * episodes)
    records: list[StepRecord] = []
    lr = e.inner_lr or a.inner_lr
    try:
        for k, ep, fast in adaptation_steps(
            run.policy, sampler, run.partition, tasks, last, lr, a.gamma, a.gae_lambda, streams
        ):
            if k in steps:
                shape = (-1, n_t, episodes)
                obs = np.stack(recorder.obs).reshape(*shape, recorder.obs[0].shape[-1])
                vel = np.stack(recorder.velocity).reshape(shape) if recorder.velocity else None
                qpos = np.stack(recorder.qpos) if recorder.qpos else None
                qvel = np.stack(recorder.qvel) if recorder.qvel else None
                records.append(StepRecord(k, ep, fast, obs, vel, qpos, qvel))
    finally:
        sampler.close()
    return records, fast


def sample_eval_tasks(run: LoadedRun, num_tasks: int, seed: int | None = None) -> np.ndarray:
    """``num_tasks`` test tasks from the evaluation seed stream (the built-in distributions give the
    first ``num_tasks`` of the tasks ``evaluate`` uses with the same seed)."""
    streams = make_streams(run.config.seed if seed is None else seed, EVAL_STREAM)
    return run.distribution.sample_tasks(streams.tasks, num_tasks)


def _as_run(run: LoadedRun | str | Path) -> LoadedRun:
    return run if isinstance(run, LoadedRun) else load_run(run)


def _is_mujoco(run: LoadedRun) -> bool:
    return hasattr(run.distribution, "model")


def _is_navigation(run: LoadedRun) -> bool:
    d = run.distribution
    return not _is_mujoco(run) and tuple(d.task_names) == ("goal_x", "goal_y") and d.observation_space.shape == (2,)


def _task_label(run: LoadedRun, task: np.ndarray) -> str:
    return ", ".join(f"{n}={v:.2f}" for n, v in zip(run.distribution.task_names, task, strict=True))


# ====================================================================== matplotlib
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(max(width, 8.0), height), dpi=DPI, layout="constrained")


def _save(fig: Any, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def _step_colors(steps: Sequence[int]) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(len(steps))]


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def plot_learning_curves(run_dir: str | Path, out: str | Path | None = None, max_kl: float | None = None) -> Path:
    """Return before/after adaptation, TRPO KL (with ``max_kl``) and the rolling acceptance rate."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    path = run_dir / "progress.csv"
    if not path.is_file():
        raise CheckpointError(f"run directory {str(run_dir)!r} has no progress.csv to plot")
    rows = read_progress(path)  # a damaged file is one line naming it
    if not rows:
        raise CheckpointError(f"{str(path)!r} has no rows yet")
    col = lambda key: np.array([_float(r.get(key)) for r in rows])  # noqa: E731
    it = col("iteration")
    it = np.where(np.isfinite(it), it, np.arange(1, len(rows) + 1))
    if max_kl is None:
        try:
            max_kl = float(read_yaml_mapping(run_dir / "config.yaml", "run config")["trpo"]["max_kl"])
        except Exception:  # no or odd config: draw no line
            max_kl = None
    fig = _figure(9, 9.5)
    ax_r, ax_kl, ax_acc = fig.subplots(3, 1, sharex=True)
    style = {"marker": "o", "ms": 3} if len(rows) < 30 else {}
    ax_r.plot(it, col("return/before_adaptation"), label="before adaptation (context at zero)", **style)
    ax_r.plot(it, col("return/after_adaptation"), label="after adaptation", **style)
    ax_r.set(ylabel="mean episode return", title=f"Learning curves: {run_dir.name}")
    kl = col("trpo/kl")
    ax_kl.plot(it, kl, ".", color="tab:purple", label="KL of the step taken (rejected steps omitted)")
    if max_kl:
        ax_kl.axhline(max_kl, color="tab:red", ls="--", label=f"trust region max_kl = {max_kl:g}")
    ax_kl.set(ylabel="mean KL (nats)")
    accepted = col("trpo/accepted")
    window = max(1, min(10, len(rows)))
    filled = np.nan_to_num(accepted)
    rolling = np.convolve(filled, np.ones(window) / window, mode="valid")
    ax_acc.plot(it, accepted, "|", color="0.6", ms=8, label="accepted (1) / rejected (0)")
    ax_acc.plot(it[window - 1 :], rolling, color="tab:green", label=f"rolling acceptance rate ({window} iterations)")
    ax_acc.set(ylabel="acceptance rate", xlabel="meta-iteration", ylim=(-0.05, 1.05))
    for ax in (ax_r, ax_kl, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    return _save(fig, Path(out) if out else run_dir / "visualize" / "learning_curves.png")


# ==================================================================== 2D navigation
def _nav_trajectories(rec: StepRecord, task: int) -> list[np.ndarray]:
    """Positions of each of the task's episodes: the start, then one per step actually taken."""
    lengths = rec.episodes.mask[:, task].sum(0).long().tolist()
    return [rec.obs[: n + 1, task, e] for e, n in enumerate(lengths)]


def _nav_limits(run: LoadedRun, records: list[StepRecord], tasks: np.ndarray) -> tuple[float, float]:
    d = run.distribution
    lo, hi = min(getattr(d, "goal_low", -0.5), 0.0), max(getattr(d, "goal_high", 0.5), 0.0)
    for rec in records:
        pts = rec.obs[:, : len(tasks), :MAX_TRAJECTORIES]
        mask = np.ones(pts.shape[:-1], bool)
        mask[1:] = rec.episodes.mask[:, : len(tasks), :MAX_TRAJECTORIES].numpy() > 0
        if mask.any():
            lo, hi = min(lo, float(pts[mask].min())), max(hi, float(pts[mask].max()))
    pad = 0.08 * (hi - lo)
    return lo - pad, hi + pad


def _nav_panel(ax: Any, run: LoadedRun, rec: StepRecord, task: int, goal: np.ndarray, lim: tuple[float, float]) -> None:
    for e, traj in enumerate(_nav_trajectories(rec, task)[:MAX_TRAJECTORIES]):
        ax.plot(
            traj[:, 0],
            traj[:, 1],
            lw=0.8,
            alpha=0.7,
            color="tab:blue",
            label=f"episodes ({min(MAX_TRAJECTORIES, rec.obs.shape[2])} shown)" if e == 0 else None,
        )
    start = rec.obs[0, task, 0]
    ax.plot(*start, "o", color="black", ms=6, label="start")
    ax.plot(*goal, "*", color="tab:red", ms=14, mec="black", label="goal")
    radius = getattr(run.distribution, "goal_radius", None)
    if radius:
        from matplotlib.patches import Circle

        ax.add_patch(Circle(tuple(goal), radius, fill=False, color="tab:red", lw=0.8))
    ret = float(rec.episodes.task_returns()[task])
    ax.set(xlim=lim, ylim=lim, aspect="equal", title=f"step {rec.step}: mean return {ret:.1f}")
    ax.grid(alpha=0.3)


def plot_navigation(
    run: LoadedRun | str | Path,
    tasks: np.ndarray,
    steps: Sequence[int] = (0, 1, 2, 3),
    out: str | Path = ".",
    *,
    episodes: int | None = None,
    seed: int | None = None,
    records: list[StepRecord] | None = None,
) -> list[Path]:
    """One PNG per task (a panel per step) and one grid PNG over up to 6 tasks, written into ``out``."""
    run = _as_run(run)
    if not _is_navigation(run):
        raise ValueError(
            f"env {run.config.env.name!r} is not a 2D navigation env; plot_navigation needs goal_x, goal_y"
        )
    tasks = np.asarray(tasks, dtype=np.float64).reshape(-1, 2)
    steps = sorted(set(steps))
    if records is None:
        records, _ = rollout_adaptation(run, tasks, steps, episodes=episodes, seed=seed)
    out, lim, written = Path(out), _nav_limits(run, records, tasks), []
    where = f"{run.config.env.name}, {run.config.adaptation.partition}, iteration {run.iteration}"
    for i, goal in enumerate(tasks):
        fig = _figure(3.6 * len(records), 4.2)
        axes = np.atleast_1d(fig.subplots(1, len(records), sharex=True, sharey=True))
        for ax, rec in zip(axes, records, strict=True):
            _nav_panel(ax, run, rec, i, goal, lim)
            ax.set_xlabel("x position (env units)")
        axes[0].set_ylabel("y position (env units)")
        axes[0].legend(loc="best", fontsize="small")
        fig.suptitle(f"Trajectories after each inner step, goal ({goal[0]:.2f}, {goal[1]:.2f}) [{where}]")
        written.append(_save(fig, out / f"task{i:02d}_navigation.png"))
    n = min(len(tasks), MAX_GRID_TASKS)
    fig = _figure(3.0 * len(records), 3.0 * n + 0.6)
    grid = np.array(fig.subplots(n, len(records), sharex=True, sharey=True, squeeze=False))
    for i in range(n):
        for j, rec in enumerate(records):
            _nav_panel(grid[i, j], run, rec, i, tasks[i], lim)
            grid[i, j].set_title(
                f"goal ({tasks[i, 0]:.2f}, {tasks[i, 1]:.2f}), step {rec.step}: "
                f"{float(rec.episodes.task_returns()[i]):.1f}",
                fontsize="small",
            )
        grid[i, 0].set_ylabel("y position (env units)")
    for ax in grid[-1]:
        ax.set_xlabel("x position (env units)")
    handles, labels = grid[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3)
    fig.suptitle(f"Trajectories over {n} tasks (rows) and inner steps (columns)\npanel title: mean return [{where}]")
    written.append(_save(fig, out / "navigation_grid.png"))
    return written


# ================================================================ context embedding
def plot_context_embedding(
    run: LoadedRun | str | Path,
    tasks: np.ndarray | None = None,
    out: str | Path = "context_embedding.png",
    *,
    num_tasks: int = EMBEDDING_TASKS,
    episodes: int | None = None,
    seed: int | None = None,
    highlight: Sequence[int] = (),
    notify: Callable[[str], None] = notice,
) -> Path | None:
    """Scatter of the contexts after one inner step, first two principal components, coloured by the
    first task parameter. ``highlight``: indices of tasks to mark with a star. None if no context adapts."""
    run = _as_run(run)
    if run.policy.context_size == 0 or "context" not in run.partition:
        notify(
            f"no context embedding: this run adapts no context (context_size={run.policy.context_size}, "
            f"partition={run.config.adaptation.partition!r})"
        )
        return None
    tasks = sample_eval_tasks(run, num_tasks, seed) if tasks is None else np.asarray(tasks, dtype=np.float64)
    tasks = tasks.reshape(-1, len(run.distribution.task_names))
    if len(tasks) < 2:
        notify("no context embedding: it needs at least 2 tasks")
        return None
    _, fast = rollout_adaptation(run, tasks, [], episodes=episodes, seed=seed, through=1)
    ctx = fast["context"].double().numpy()
    centred = ctx - ctx.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s**2 / max(float((s**2).sum()), 1e-300)
    pcs = centred @ vt[:2].T
    if pcs.shape[1] < 2:
        pcs, share = np.concatenate([pcs, np.zeros_like(pcs)], 1), np.append(share, 0.0)
    fig = _figure(8, 6.5)
    ax = fig.subplots()
    name = run.distribution.task_names[0]
    sc = ax.scatter(
        pcs[:, 0],
        pcs[:, 1],
        c=tasks[:, 0],
        cmap="viridis",
        s=45,
        edgecolors="black",
        lw=0.5,
        label=f"adapted context, {len(tasks)} tasks",
    )
    fig.colorbar(sc, ax=ax, label=f"task parameter {name}")
    if len(highlight):
        h = list(highlight)
        ax.scatter(
            pcs[h, 0],
            pcs[h, 1],
            marker="*",
            s=300,
            c="none",
            edgecolors="tab:red",
            lw=1.5,
            label="requested task",
        )
    corr = float(np.corrcoef(pcs[:, 0], tasks[:, 0])[0, 1]) if np.ptp(tasks[:, 0]) > 0 else float("nan")
    ax.set(
        xlabel=f"PC 1 ({100 * share[0]:.0f}% of variance, context units)",
        ylabel=f"PC 2 ({100 * share[1]:.0f}% of variance, context units)",
        title=f"Contexts after 1 inner step (PCA of {ctx.shape[1]}-d context) [{run.config.env.name}, "
        f"iteration {run.iteration}]\ncorrelation of PC 1 with {name}: r = {corr:.2f}",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, Path(out))


# ========================================================================= MuJoCo
def _gl_context(width: int, height: int) -> tuple[Any, str]:
    """An offscreen GL context from the first backend that works.

    Tried in order: ``$MUJOCO_GL``, egl, osmesa, and glfw when there is a display.
    """
    order = [os.environ.get("MUJOCO_GL", "").lower().strip(), *GL_BACKENDS]
    if os.environ.get("DISPLAY"):
        order.append("glfw")
    tried = []
    for name in dict.fromkeys(b for b in order if b in ("egl", "osmesa", "glfw")):
        try:
            ctx = importlib.import_module(f"mujoco.{name}").GLContext(width, height)
            ctx.make_current()
            return ctx, name
        except Exception as exc:  # missing library, no device, wrong PYOPENGL_PLATFORM, ...
            tried.append(f"{name}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]}")
    raise RenderError(
        f"no OpenGL backend could render (tried {'; '.join(tried)}); install EGL (libegl1) "
        "or OSMesa (libosmesa6) and set MUJOCO_GL=egl or osmesa"
    )


class _Renderer:
    """Renders a model's state (qpos, qvel) from its ``track`` camera into RGB arrays."""

    def __init__(self, model: Any, width: int = PANEL_W, height: int = PANEL_H, camera: str = "track"):
        import mujoco

        self.mujoco = mujoco
        model = copy.copy(model)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self.ctx, self.backend = _gl_context(width, height)
        self.model, self.data = model, mujoco.MjData(model)
        self.mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.mjr)
        self.scene = mujoco.MjvScene(model, maxgeom=2000)
        self.opt, self.pert, self.cam = mujoco.MjvOption(), mujoco.MjvPerturb(), mujoco.MjvCamera()
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id >= 0:
            self.cam.type, self.cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, cam_id
        else:
            mujoco.mjv_defaultFreeCamera(model, self.cam)
        self.rect = mujoco.MjrRect(0, 0, width, height)
        self.rgb = np.empty((height, width, 3), dtype=np.uint8)

    def render(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        mj = self.mujoco
        self.ctx.make_current()
        self.data.qpos[:], self.data.qvel[:] = qpos, qvel
        mj.mj_forward(self.model, self.data)
        mj.mjv_updateScene(self.model, self.data, self.opt, self.pert, self.cam, mj.mjtCatBit.mjCAT_ALL, self.scene)
        mj.mjr_render(self.rect, self.scene, self.mjr)
        mj.mjr_readPixels(self.rgb, None, self.rect, self.mjr)
        return np.flipud(self.rgb).copy()

    def close(self) -> None:
        self.ctx.make_current()
        self.mjr.free()
        self.ctx.free()


def _caption(lines: Sequence[str], width: int, height: int = CAPTION_H) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    for k, line in enumerate(lines):
        draw.text((6, 4 + k * (height - 8) // len(lines)), line, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def video_frames(run: LoadedRun, records: list[StepRecord], task: int, tasks: np.ndarray) -> np.ndarray:
    """``[frames, H, W, 3]`` uint8: one panel per record, the task's first episode, captioned.

    Frames = the longest episode's steps + 1 (the reset state first); shorter ones hold their last frame.
    """
    renderer = _Renderer(run.distribution.model)
    try:
        panels = []
        for rec in records:
            ret = float(rec.episodes.episode_returns()[task, 0])
            steps_taken = int(rec.episodes.mask[:, task, 0].sum())
            frames = [renderer.render(rec.qpos[t, task], rec.qvel[t, task]) for t in range(steps_taken + 1)]
            cap = _caption([_task_label(run, tasks[task]), f"step {rec.step}   episode return {ret:.1f}"], PANEL_W)
            panels.append([np.concatenate([cap, f], 0) for f in frames])
    finally:
        renderer.close()
    length = max(len(p) for p in panels)
    panels = [p + [p[-1]] * (length - len(p)) for p in panels]
    sep = np.full((PANEL_H + CAPTION_H, 4, 3), 255, np.uint8)
    return np.stack([np.concatenate(sum(([p[t], sep] for p in panels), [])[:-1], 1) for t in range(length)])


def _write_video(frames: np.ndarray, out: Path, fmt: str, fps: int, notify: Callable[[str], None]) -> Path:
    import imageio.v2 as imageio

    if fmt == "mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        notify("mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); writing gif instead")
        fmt = "gif"
    out = out.with_suffix(f".{fmt}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":  # H.264 wants sizes divisible by 16: pad white
        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, -h % 16), (0, -w % 16), (0, 0)), constant_values=255)
        imageio.mimwrite(out, frames, fps=fps, codec="libx264", quality=7, macro_block_size=16)
    elif fmt == "gif":
        imageio.mimwrite(out, frames, duration=1000.0 / fps, loop=0)
    else:
        raise ValueError(f"--format {fmt!r} is not supported; allowed: mp4, gif")
    return out


def plot_velocity(run: LoadedRun, records: list[StepRecord], task: int, tasks: np.ndarray, out: str | Path) -> Path:
    """Forward velocity over time after each step (mean over the task's episodes, ±1 std) vs the goal."""
    fig = _figure(9, 4.8)
    ax = fig.subplots()
    dt = float(run.distribution.dt)
    for rec, color in zip(records, _step_colors([r.step for r in records]), strict=True):
        v, m = rec.velocity[:, task], rec.episodes.mask[: len(rec.velocity), task].numpy()
        count = m.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):  # no episode left alive: NaN, not drawn
            mean = (v * m).sum(1) / count
            std = np.sqrt((((v - mean[:, None]) * m) ** 2).sum(1) / count)
        t = dt * np.arange(1, len(mean) + 1)
        ax.plot(
            t,
            mean,
            color=color,
            label=f"step {rec.step} (mean return {float(rec.episodes.task_returns()[task]):.1f})",
        )
        ax.fill_between(t, mean - std, mean + std, color=color, alpha=0.15)
    names, row = run.distribution.task_names, tasks[task]
    if names[0] == "goal_velocity":
        ax.axhline(row[0], color="tab:red", ls="--", label=f"goal velocity {row[0]:.2f} m/s")
    elif names[0] == "direction":
        ax.axhline(0.0, color="0.3", ls=":", lw=1)
        ax.plot([], [], " ", label=f"desired direction: {'forward (+x)' if row[0] > 0 else 'backward (-x)'}")
    ax.set(
        xlabel="time (s)",
        ylabel="forward velocity (m/s)",
        title=f"Forward velocity after each inner step, {_task_label(run, row)} "
        f"[{run.config.env.name}, iteration {run.iteration}; mean ± std over episodes]",
    )
    ax.title.set_fontsize("medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, Path(out))


def render_video(
    run: LoadedRun | str | Path,
    task: Sequence[float],
    steps: Sequence[int] = (0, 1, 2, 3),
    out: str | Path = "video.mp4",
    fmt: str = "mp4",
    *,
    episodes: int | None = None,
    seed: int | None = None,
    notify: Callable[[str], None] = notice,
) -> Path:
    """A video of one episode after each of ``steps`` (panels side by side) for one MuJoCo task.

    Raises ``RenderError`` when no OpenGL backend works. Returns the path written (``.gif`` if mp4
    was asked for but imageio-ffmpeg is missing).
    """
    run = _as_run(run)
    if not _is_mujoco(run):
        raise ValueError(f"env {run.config.env.name!r} is not a MuJoCo env; render_video needs one")
    tasks = np.asarray(task, dtype=np.float64).reshape(1, -1)
    records, _ = rollout_adaptation(run, tasks, sorted(set(steps)), episodes=episodes, seed=seed)
    frames = video_frames(run, records, 0, tasks)
    return _write_video(frames, Path(out), fmt, max(1, round(1.0 / run.distribution.dt)), notify)


# ========================================================================= driver
def visualize(
    run_dir: LoadedRun | str | Path,
    *,
    tasks: int = 4,
    task: Sequence[float] | None = None,
    steps: Sequence[int] = (0, 1, 2, 3),
    out: str | Path | None = None,
    fmt: str = "mp4",
    seed: int | None = None,
    episodes: int | None = None,
    notify: Callable[[str], None] = notice,
) -> list[Path]:
    """Every figure that fits the run's env; returns the paths written (default ``RUN_DIR/visualize``)."""
    run = _as_run(run_dir)
    out = Path(out) if out else run.run_dir / "visualize"
    steps = sorted(set(int(s) for s in steps))
    written: list[Path] = []
    if (run.run_dir / "progress.csv").is_file():
        written.append(plot_learning_curves(run.run_dir, out / "learning_curves.png", run.config.trpo.max_kl))
    else:
        notify(f"no learning curves: {str(run.run_dir / 'progress.csv')!r} does not exist")
    pool = sample_eval_tasks(run, max(tasks, EMBEDDING_TASKS), seed)
    chosen = pool[:tasks] if task is None else np.asarray(task, dtype=np.float64).reshape(1, -1)
    if _is_mujoco(run):
        records, _ = rollout_adaptation(run, chosen, steps, episodes=episodes, seed=seed)
        fps = max(1, round(1.0 / run.distribution.dt))
        for i in range(len(chosen)):
            written.append(plot_velocity(run, records, i, chosen, out / f"task{i:02d}_velocity.png"))
            try:
                written.append(
                    _write_video(video_frames(run, records, i, chosen), out / f"task{i:02d}_video", fmt, fps, notify)
                )
            except RenderError as exc:
                notify(f"no video: {exc}")
    elif _is_navigation(run):
        written += plot_navigation(run, chosen, steps, out, episodes=episodes, seed=seed)
    else:
        notify(f"no per-task figures for env {run.config.env.name!r} (only 2D navigation and MuJoCo have them)")
    emb_tasks = pool if task is None else np.concatenate([pool, chosen])
    highlight = [] if task is None else [len(pool)]
    path = plot_context_embedding(
        run,
        emb_tasks,
        out / "context_embedding.png",
        episodes=episodes,
        seed=seed,
        highlight=highlight,
        notify=notify,
    )
    if path is not None:
        written.append(path)
    return written


# ====================================================================== command line
def add_visualize_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("visualize", help="figures and videos of the adapted policy after each inner step")
    p.add_argument("run_dir")
    p.add_argument("--tasks", type=int, help="number of test tasks to show (default 4; evaluation's seed stream)")
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one given task instead, e.g. --task goal_x=0.3 --task goal_y=-0.2 (every key of the env)",
    )
    p.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 3], help="inner steps to show (default 0 1 2 3)")
    p.add_argument("--episodes", type=int, help="episodes per task and step (default: evaluation.episodes)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/visualize)")
    p.add_argument("--format", dest="fmt", choices=["mp4", "gif"], default="mp4", help="video format (MuJoCo envs)")
    p.add_argument("--seed", type=int, help="seed of the test tasks and episodes (default: the run's seed)")
    p.add_argument("--checkpoint", help="a specific checkpoint file (default: the newest)")
    return p


def parse_task(items: Sequence[str], names: Sequence[str], env: str) -> list[float]:
    """``["goal_x=0.3", "goal_y=-0.2"]`` -> ``[0.3, -0.2]`` in ``names`` order.

    Raises a one-line ValueError naming the bad item and the allowed keys.
    """
    allowed = ", ".join(names)
    values: dict[str, float] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--task {item!r} is not KEY=VALUE; allowed keys for env {env!r}: {allowed}")
        if key not in names:
            raise ValueError(f"--task key {key!r} is unknown for env {env!r}; allowed: {allowed}")
        if key in values:
            raise ValueError(f"--task key {key!r} is given twice; give each of {allowed} once")
        try:
            values[key] = float(text)
        except ValueError:
            raise ValueError(f"--task {key}={text!r} is not a number") from None
        if not math.isfinite(values[key]):
            raise ValueError(f"--task {key}={text!r} is not finite")
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"--task lacks {', '.join(missing)} for env {env!r}; give every one of: {allowed}")
    return [values[n] for n in names]


def cmd_visualize(args: argparse.Namespace) -> list[Path]:
    if sys.platform.startswith("linux"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first import of mujoco
    if args.task and args.tasks is not None:
        raise ValueError("give either --tasks N or --task KEY=VALUE ..., not both")
    for key, low in (("tasks", 1), ("episodes", 1)):
        value = getattr(args, key)
        if value is not None and value < low:
            raise ValueError(f"--{key} {value} is out of range; allowed: >= {low}")
    bad = [s for s in args.steps if not 0 <= s <= 50]
    if bad:
        raise ValueError(f"--steps {bad[0]} is out of range; allowed: integers from 0 to 50")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed {args.seed} is out of range; allowed: an integer >= 0")
    if args.out:
        check_out_path(args.out, "--out", folder=True)
    run = load_run(args.run_dir, args.checkpoint)
    task = parse_task(args.task, run.distribution.task_names, run.config.env.name) if args.task else None
    paths = visualize(
        run,
        tasks=args.tasks or 4,
        task=task,
        steps=args.steps,
        out=args.out,
        fmt=args.fmt,
        seed=args.seed,
        episodes=args.episodes,
    )
    for path in paths:
        print(f"wrote {path}")
    return paths
