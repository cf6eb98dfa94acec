"""`caml-rl visualize`: figures of tiny trained runs, a short MuJoCo video, one-line errors."""

import dataclasses
import importlib.util

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from caml_rl import Trainer, envs, load_config, load_run
from caml_rl.checkpoint import CheckpointError
from caml_rl.cli import build_parser, cmd_visualize
from caml_rl.visualize import (
    plot_context_embedding,
    plot_learning_curves,
    plot_navigation,
    render_video,
    sample_eval_tasks,
    visualize,
)
from caml_rl.visualize.embedding import principal_correlations

NAV = [
    "meta_batch_size=4",
    "episodes_per_task=3",
    "env.settings.horizon=15",
    "policy.hidden_sizes=[16, 16]",
    "device=cpu",
    "iterations=2",
]
CHEETAH = [
    "env.name=halfcheetah_vel",
    "meta_batch_size=2",
    "episodes_per_task=2",
    "env.settings.horizon=10",
    "policy.hidden_sizes=[8]",
    "device=cpu",
    "iterations=1",
]


def train(path, settings):
    Trainer(load_config(None, settings), path).train(evaluate_at_end=False, quiet=True)
    return path


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("nav") / "run", NAV)


def parse(*argv):
    return build_parser().parse_args(["visualize", *argv])


def assert_png(path, min_width=800):
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= min_width, (path, im.size)


def test_learning_curves(nav_run, tmp_path):
    assert_png(plot_learning_curves(nav_run, tmp_path / "curves.png"))


def test_navigation_and_embedding(nav_run, tmp_path):
    run = load_run(nav_run)
    tasks = sample_eval_tasks(run, 3)
    paths = plot_navigation(run, tasks, steps=[0, 1], out=tmp_path, episodes=3)
    assert [p.name for p in paths] == [
        "task00_navigation.png",
        "task01_navigation.png",
        "task02_navigation.png",
        "navigation_grid.png",
    ]
    for path in paths:
        assert_png(path)
    emb = plot_context_embedding(run, out=tmp_path / "emb.png", num_tasks=6, episodes=3)
    assert_png(emb, min_width=1500)  # one panel per task parameter: goal_x and goal_y side by side


def test_principal_correlations_by_hand():
    pcs = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    tasks = np.array([[10.0, 5.0], [20.0, 5.0], [30.0, 5.0]])  # the second parameter is fixed
    corr = principal_correlations(pcs, tasks)
    assert corr[0, 0] == pytest.approx(1.0)
    assert corr[0, 1] == pytest.approx(0.0, abs=1e-12)  # (1, 2, 3) against (0, 1, 0)
    assert np.isnan(corr[1]).all()


def test_cli_with_a_given_task(nav_run, tmp_path, capsys):
    args = parse(str(nav_run), "--task", "goal_x=0.3", "--task", "goal_y=-0.2", "--steps", "0", "1")
    args.episodes, args.out = 2, str(tmp_path / "out")
    paths = cmd_visualize(args)
    names = sorted(p.name for p in paths)
    assert names == [
        "context_embedding.png",
        "learning_curves.png",
        "navigation_grid.png",
        "task00_navigation.png",
    ]
    assert all(p.parent == tmp_path / "out" for p in paths)
    assert capsys.readouterr().out.count("wrote ") == 4


def test_cli_on_changed_task_settings(nav_run, tmp_path, monkeypatch):
    """--set env.settings.KEY=VALUE shows the trained policy on other tasks: goals outside the trained range."""
    import caml_rl.visualize

    shown = []

    def recording(run, **kwargs):
        shown.append(run)
        return original(run, **kwargs)

    original = caml_rl.visualize.visualize
    monkeypatch.setattr(caml_rl.visualize, "visualize", recording)
    args = parse(str(nav_run), "--tasks", "2", "--set", "env.settings.goal_low=2", "--set", "env.settings.goal_high=3")
    args.episodes, args.steps, args.out = 2, [0], str(tmp_path / "out")
    assert "task00_navigation.png" in {p.name for p in cmd_visualize(args)}
    (run,) = shown
    assert (run.distribution.goal_low, run.distribution.goal_high) == (2, 3)
    assert run.task_settings == {"goal_low": 2, "goal_high": 3}


def test_maml_run_skips_the_embedding(tmp_path):
    run_dir = train(tmp_path / "maml", [*NAV, "iterations=1", "adaptation.partition=all", "policy.context_size=0"])
    notices = []
    paths = visualize(run_dir, tasks=2, steps=[0, 1], episodes=2, notify=notices.append)
    assert {p.name for p in paths} == {
        "learning_curves.png",
        "task00_navigation.png",
        "task01_navigation.png",
        "navigation_grid.png",
    }
    assert all(p.parent == run_dir / "visualize" for p in paths)
    assert any("no context embedding" in n and "context_size=0" in n for n in notices)


@pytest.mark.parametrize(
    ("argv", "exc", "fragments"),
    [
        (["--task", "goal_z=1", "--task", "goal_y=0"], ValueError, ["'goal_z'", "allowed: goal_x, goal_y"]),
        (["--task", "goal_x=1"], ValueError, ["lacks goal_y", "goal_x, goal_y"]),
        (["--task", "goal_x"], ValueError, ["not KEY=VALUE", "goal_x, goal_y"]),
        (["--task", "goal_x=a", "--task", "goal_y=0"], ValueError, ["goal_x='a' is not a number"]),
        (["--tasks", "0"], ValueError, ["--tasks 0", ">= 1"]),
        (["--steps", "0", "-1"], ValueError, ["--steps -1", "from 0 to 50"]),
        (["--tasks", "2", "--task", "goal_x=1"], ValueError, ["either --tasks", "not both"]),
        (["--set", "policy.hidden_sizes=[4]"], ValueError, ["changed task settings only", "checkpoint's"]),
    ],
)
def test_user_errors_are_one_line(nav_run, tmp_path, argv, exc, fragments):
    with pytest.raises(exc) as info:
        cmd_visualize(parse(str(nav_run), "--out", str(tmp_path), *argv))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_batch_too_big_for_memory_is_refused_before_anything_is_written(nav_run, tmp_path):
    out = tmp_path / "v"
    with pytest.raises(ValueError, match=r"this visualization needs about .* TB .*lower --tasks or --episodes"):
        cmd_visualize(parse(str(nav_run), "--out", str(out), "--tasks", "1", "--episodes", "100000000"))
    assert not out.exists()  # the learning curves used to be drawn first, then memory ran out


def test_missing_run_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"run directory '.*missing' does not exist$"):
        cmd_visualize(parse(str(tmp_path / "missing")))
    with pytest.raises(CheckpointError, match="does not exist"):
        plot_learning_curves(tmp_path / "missing")


def _read_frames(path):
    import imageio.v3 as iio

    return np.stack(list(iio.imiter(path)))


def test_mujoco_video_and_velocity_plot(tmp_path, monkeypatch):
    from caml_rl.envs.locomotion_registry import register_all

    register_all()
    run_dir = train(tmp_path / "cheetah", CHEETAH)
    fmt = "mp4" if importlib.util.find_spec("imageio_ffmpeg") else "gif"
    notices = []
    paths = visualize(run_dir, tasks=1, steps=[0, 1], episodes=2, fmt=fmt, out=tmp_path / "out", notify=notices.append)
    names = {p.name for p in paths}
    assert {"learning_curves.png", "task00_velocity.png", "context_embedding.png"} <= names
    for path in paths:
        if path.suffix == ".png":
            assert_png(path)
    if f"task00_video.{fmt}" not in names:
        gl = [n for n in notices if "could not render a frame" in n]
        if gl:
            pytest.skip(gl[0])  # the env's renderer found no OpenGL backend
        pytest.fail(f"no video written; notices: {notices}")
    frames = _read_frames(tmp_path / "out" / f"task00_video.{fmt}")
    assert len(frames) == 10 + 1  # the reset state, then one frame per env step
    assert frames.shape[2] >= 2 * 320  # two panels side by side
    assert len({f.tobytes() for f in frames}) > 1
    assert frames.std() > 10  # an image, not a blank (0-255 pixel values; whatever the GL driver renders)

    # without imageio-ffmpeg an mp4 request falls back to gif, with a notice
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "imageio_ffmpeg" else real_find_spec(name, *a),
    )
    gif = render_video(run_dir, [1.5], steps=[2], out=tmp_path / "one.mp4", episodes=2, notify=notices.append)
    assert gif.name == "one.gif" and "writing gif instead" in notices[-1]
    frames = _read_frames(gif)
    assert len(frames) == 11 and frames.shape[2] == 320 and len({f.tobytes() for f in frames}) > 1


class _PendulumToTarget(gym.Wrapper):
    """Gymnasium's InvertedPendulum with a task: keep the cart near ``target``."""

    def set_task(self, task):
        self.target = float(task[0])

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        return obs, -abs(float(obs[0]) - self.target), terminated, truncated, info


@dataclasses.dataclass
class _PendulumTargets(envs.GymTaskDistribution):
    name = "test_pendulum_targets"
    task_names = ("target",)
    horizon: int = 6

    def make_env(self):
        return _PendulumToTarget(gym.make("InvertedPendulum-v5", render_mode="rgb_array"))

    def sample_tasks(self, rng, num_tasks):
        return rng.uniform(-0.5, 0.5, size=(num_tasks, 1))


def test_a_plugin_env_that_renders_gets_a_video(tmp_path):
    envs.register(_PendulumTargets.name, _PendulumTargets, overwrite=True)
    settings = [f"env.name={_PendulumTargets.name}", *NAV[:2], "policy.hidden_sizes=[8]", "device=cpu", "iterations=1"]
    run_dir = train(tmp_path / "pendulum", settings)
    notices = []
    out = tmp_path / "out"
    paths = visualize(run_dir, tasks=1, steps=[0, 1], episodes=2, fmt="gif", out=out, notify=notices.append)
    names = {p.name for p in paths}
    if "task00_video.gif" not in names:
        gl = [n for n in notices if "could not render a frame" in n]
        if gl:
            pytest.skip(gl[0])
        pytest.fail(f"no video written; notices: {notices}")
    frames = _read_frames(tmp_path / "out" / "task00_video.gif")
    assert 2 <= len(frames) <= 6 + 1 and frames.std() > 10  # any episode length (1 to 6 steps) passes
    assert "task00_velocity.png" not in names  # the env measures no velocity
