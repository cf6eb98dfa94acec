"""Videos of the adapted policy: one episode after each inner step, panels side by side.

Filmed with the task distribution's own renderer: :meth:`TaskDistribution.render_env` gives one
task as a Gymnasium env whose ``render()`` returns frames (the built-in MuJoCo tasks, and any
plug-in whose env renders ``rgb_array``), and the adapted policy acts in it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from caml_rl.envs.base import TaskDistribution

from ..checkpoint import first_line
from ..config import ConfigError
from ..partition import FastWeights
from ..runs import AdaptedPolicy, LoadedRun
from .plotting import notice, task_label
from .recording import StepRecord, as_run, rollout_adaptation

CAPTION_H = 48
DEFAULT_FPS = 20


class RenderError(RuntimeError):
    """The task distribution cannot draw itself, or its renderer failed (e.g. no OpenGL backend)."""


@dataclass
class Film:
    """One filmed episode: the reset state's frame first, then one per step."""

    frames: list[np.ndarray]
    episode_return: float
    fps: int


def can_render(dist: TaskDistribution, task: np.ndarray) -> bool:
    """Whether the task distribution offers a rendering env (``render_env`` is not None)."""
    env = dist.render_env(task)
    if env is not None:
        env.close()
    return env is not None


def film_episode(run: LoadedRun, fast: FastWeights, task: np.ndarray, seed: int) -> Film:
    """One episode of the policy with ``fast`` (one task's fast values) on ``task``, in the env
    ``render_env`` gives; its reset and the actions are drawn from ``seed``."""
    dist, name = run.distribution, run.config.env.name
    env = dist.render_env(task)
    if env is None:
        raise RenderError(f"env {name!r} cannot render: its task distribution's render_env() returns None")
    policy = AdaptedPolicy(run.policy, fast, task, [], dist.action_space)
    total = 0.0
    try:
        obs, _ = env.reset(seed=seed)
        try:
            frames = [env.render()]
        except Exception as exc:  # no display, no GL library, no EGL device, ...
            raise RenderError(f"env {name!r} could not render a frame ({first_line(exc, 200)})") from exc
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(dist.horizon):
                action, _ = policy.predict(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                frames.append(env.render())
                if terminated or truncated:
                    break
        fps = int(env.metadata.get("render_fps") or DEFAULT_FPS)
    finally:
        env.close()
    return Film(frames, total, fps)


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


def video_frames(
    run: LoadedRun, records: list[StepRecord], task: int, tasks: np.ndarray, seed: int
) -> tuple[np.ndarray, int]:
    """``([frames, H, W, 3] uint8, fps)``: one captioned panel per record, each an episode filmed
    with that step's fast values; a panel whose episode ended early holds its last frame."""
    panels, fps = [], DEFAULT_FPS
    for record in records:
        fast = {key: value[task : task + 1] for key, value in record.fast.items()}
        episode_seed = int(np.random.SeedSequence([seed, task, record.step]).generate_state(1)[0])
        film = film_episode(run, fast, tasks[task], episode_seed)
        width = film.frames[0].shape[1]
        label = task_label(run.distribution.task_names, tasks[task])
        caption = _caption([label, f"step {record.step}   episode return {film.episode_return:.1f}"], width)
        panels.append([np.concatenate([caption, frame], 0) for frame in film.frames])
        fps = film.fps
    length = max(len(p) for p in panels)
    panels = [p + [p[-1]] * (length - len(p)) for p in panels]
    separator = np.full((panels[0][0].shape[0], 4, 3), 255, np.uint8)
    frames = [np.concatenate(sum(([p[t], separator] for p in panels), [])[:-1], 1) for t in range(length)]
    return np.stack(frames), fps


def write_video(frames: np.ndarray, out: Path, fmt: str, fps: int, notify: Callable[[str], None]) -> Path:
    """Write ``frames`` as mp4 (gif, with a notice, when imageio-ffmpeg is missing) or gif."""
    import imageio.v2 as imageio

    if fmt not in ("mp4", "gif"):
        raise ConfigError(f"--format {fmt!r} is not supported; allowed: mp4, gif")
    if fmt == "mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        notify("mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); writing gif instead")
        fmt = "gif"
    out = out.with_suffix(f".{fmt}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":  # H.264 wants sizes divisible by 16: pad white
        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, -h % 16), (0, -w % 16), (0, 0)), constant_values=255)
        imageio.mimwrite(out, frames, fps=fps, codec="libx264", quality=7, macro_block_size=16)
    else:
        imageio.mimwrite(out, frames, duration=1000.0 / fps, loop=0)
    return out


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
    """A video of one episode after each of ``steps`` (panels side by side) for one task.

    Raises ``RenderError`` when the task distribution cannot render. Returns the path written
    (``.gif`` if mp4 was asked for but imageio-ffmpeg is missing).
    """
    run = as_run(run)
    tasks = np.asarray(task, dtype=np.float64).reshape(1, -1)
    records, _ = rollout_adaptation(run, tasks, sorted(set(steps)), episodes=episodes, seed=seed)
    frames, fps = video_frames(run, records, 0, tasks, run.config.seed if seed is None else seed)
    return write_video(frames, Path(out), fmt, fps, notify)
