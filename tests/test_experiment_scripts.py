"""The experiments/ scripts behind numbers quoted in experiments/README.md: paired_difference.py (TRPO vs
ProMP paired over tasks), training_curve.py (training-curve tables), seed_difference.py (methods over
seed means), rl2_memory.py (RL²'s reward at the start of each episode of a trial), pearl_encoder.py and
navigation_goal_observed.py (what limits PEARL on 2D navigation)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
VELOCITY = ROOT / "experiments" / "results" / "halfcheetah_vel_scaled"
DIRECTION = ROOT / "experiments" / "results" / "halfcheetah_dir_scaled"


def load(name: str):
    """experiments/<name>.py as a module (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


paired, tc, sd = load("paired_difference"), load("training_curve"), load("seed_difference")

# The quoted numbers below are computed from committed files (eval.json, progress.csv), not re-simulated: a
# machine changes them only by float64 rounding of means and variances (~1e-13), while each unrounded value
# lies at least 0.009 from the boundary where its printed rounding would flip. So exact text is safe.


def test_reproduces_the_quoted_paired_differences():
    rows = paired.paired_difference(VELOCITY / "caml_seed0", VELOCITY / "caml_promp_seed0")
    assert [round(m, 1) for m, _ in rows] == [22.3, 22.1, -6.2, 27.3]  # unrounded >= 0.008 from a flip
    assert [round(c, 1) for _, c in rows] == [1.3, 14.5, 14.5, 14.2]
    summary = paired.training_summary(VELOCITY / "caml_promp_seed0", 50)
    assert round(summary["return/after_adaptation"], 1) == -82.0  # -81.968


def test_refuses_evaluations_on_different_tasks(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((VELOCITY / "caml_promp_seed0" / "eval.json").read_text())
    data["tasks"] = list(reversed(data["tasks"]))
    (other / "eval.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="different tasks"):
        paired.paired_difference(VELOCITY / "caml_seed0", other)


def test_rejects_a_bad_last_count(capsys):
    with pytest.raises(SystemExit):
        paired.main([str(VELOCITY / "caml_seed0"), str(VELOCITY / "caml_promp_seed0"), "--last", "0"])
    assert "--last 0: must be at least 1" in capsys.readouterr().err


def test_window_means_and_leader_segments():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    b = np.array([3.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    assert tc.window_mean(a, 4, 2) == 3.5  # exact (as the segments' means): means of small integers
    assert np.isnan(tc.window_mean(a, 7, 1))
    assert tc.segments(a, b, 2, ("a", "b")) == [("b", 1, (2, 1.5, 3.0)), ("a", 3, (6, 5.5, 3.0))]
    assert tc.method_of(Path("x/caml_seed12")) == "caml" and tc.method_of(Path("x/caml_promp")) == "caml_promp"


def test_seed_mean_is_cut_to_the_shortest_seed():
    curves = {Path("caml_seed0"): np.array([1.0, 2.0, 3.0]), Path("caml_seed1"): np.array([3.0, 4.0])}
    assert tc.seed_mean_curves(curves)["caml"].tolist() == [2.0, 3.0]  # exact: means of small integers


def test_reproduces_the_quoted_direction_curve(capsys):
    tc.main([str(DIRECTION / "caml_seed0"), str(DIRECTION / "maml_seed1"), "--at", "10", "300"])
    out = capsys.readouterr().out
    # unrounded 4.625, 673.391, 691.333, 85.724, 470.994, 450.537: >= 0.012 from a flip
    assert "| halfcheetah_dir_scaled/caml_seed0 (300 it) | +4.6 | +673.4 | +691.3 (its 251–300) |" in out
    assert "| halfcheetah_dir_scaled/maml_seed1 (300 it) | +85.7 | +471.0 | +450.5 (its 251–300) |" in out
    assert "maml ahead over iterations 1–" in out


def test_rejects_a_directory_without_progress(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tc.main([str(tmp_path)])
    assert "no progress.csv there" in capsys.readouterr().err


def test_welch_matches_a_hand_computation():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 3.0])
    diff, half, df = sd.welch(a, b)
    va, vb = 1.0 / 3, 3.0 / 3  # sample variances 1 and 3, over n = 3
    # hand computation in float64 (df is 3.2 exactly, ~1e-16 off after rounding): approx's rel 1e-6 is ample
    assert diff == pytest.approx(1.0)
    assert df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2))
    assert df == pytest.approx(3.2)
    assert half == pytest.approx(3.1824 * np.sqrt(va + vb))  # df rounded down to 3


def test_permutation_p_counts_the_splits():
    # complete separation of 3 + 3 values: only 1 of the 20 splits is as extreme (a count: 1/20 to 1 ulp)
    assert sd.permutation_p(np.array([4.0, 5.0, 6.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1 / 20)
    assert sd.permutation_p(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])) == pytest.approx(1.0)


def test_reproduces_the_quoted_direction_difference(capsys):
    sd.main([str(DIRECTION / f"{m}_seed{s}") for m in ("caml", "maml") for s in range(3)])
    out = capsys.readouterr().out
    # unrounded +146.191 ± 144.359, df 3.189, p 1/20 (a count): >= 0.009 from a flip
    assert "after 1 steps: +146.2 ± 144.4 (Welch df 3.2), permutation p 0.050" in out


def test_needs_two_methods(capsys):
    with pytest.raises(SystemExit):
        sd.main([str(DIRECTION / "caml_seed0"), str(DIRECTION / "caml_seed1")])
    assert "need two methods with at least 2 seeds each, got: caml (2 seeds)" in capsys.readouterr().err


def test_training_curve_names_an_unknown_column(capsys):
    with pytest.raises(SystemExit):
        tc.main([str(DIRECTION / "caml_seed0"), "--column", "return/nope"])
    assert "no column 'return/nope' in progress.csv" in capsys.readouterr().err


def test_methods_of_different_tasks_are_not_pooled():
    curves = {DIRECTION / "maml_seed0": np.array([1.0]), VELOCITY / "maml_seed0": np.array([2.0])}
    means = tc.seed_mean_curves(curves)
    assert means.keys() == {"halfcheetah_dir_scaled/maml", "halfcheetah_vel_scaled/maml"}
    runs = [DIRECTION / "caml_seed0", DIRECTION / "caml_seed1", DIRECTION / "maml_seed0", VELOCITY / "maml_seed0"]
    assert sd.seed_means(runs).keys() == {
        "halfcheetah_dir_scaled/caml",
        "halfcheetah_dir_scaled/maml",
        "halfcheetah_vel_scaled/maml",
    }


def test_seed_difference_names_a_run_without_evaluation(tmp_path, capsys):
    (tmp_path / "caml_seed0").mkdir()
    with pytest.raises(SystemExit):
        sd.main([str(tmp_path / "caml_seed0"), str(DIRECTION / "maml_seed0")])
    assert "has no eval.json" in capsys.readouterr().err


def test_paired_difference_names_a_damaged_evaluation(tmp_path, capsys):
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(SystemExit):
        paired.main([str(VELOCITY / "caml_seed0"), str(tmp_path)])
    assert "eval.json" in capsys.readouterr().err


def test_rl2_memory_windows_add_up_to_the_evaluated_returns():
    """rl2_memory samples trials on `evaluate`'s tasks and streams: its whole-episode mean reward per
    step times the horizon is each episode's evaluated return, and a window's mean is over its steps."""
    from caml_rl import load_run

    run_dir = ROOT / "experiments" / "results" / "navigation" / "rl2_seed0"
    result = load("rl2_memory").memory(str(run_dir), tasks=4, episodes=2, seed=3, windows=[5])
    evaluated = load_run(run_dir).evaluate(tasks=4, episodes=2, steps=1, seed=3)
    whole = result["mean_reward_per_step"]["100"]["episodes"]
    assert [m * 100 for m, _ in whole] == pytest.approx(evaluated.returns, rel=1e-9)
    first = result["mean_reward_per_step"]["5"]
    assert first["episode2_minus_episode1"][0] == pytest.approx(first["episodes"][1][0] - first["episodes"][0][0])
    assert set(result["mean_reward_per_step"]) == {"5", "100"}


def test_held_out_r2_is_one_for_a_linear_code_and_near_zero_for_noise():
    r2 = load("pearl_encoder").held_out_r2
    rng = np.random.default_rng(0)
    goals = rng.uniform(-0.5, 0.5, size=(200, 2))
    code = np.c_[goals @ np.array([[2.0, -1.0], [0.5, 3.0]]) + 1.0, rng.normal(size=(200, 3))]
    assert r2(code, goals) == pytest.approx([1.0, 1.0], abs=1e-3)
    assert max(r2(rng.normal(size=(200, 5)), goals)) < 0.2


def test_pearl_encoder_reads_the_goal_from_informative_contexts_but_not_from_the_exploration_episode():
    """The finding quoted in experiments/README.md on the committed seed-0 checkpoint: the prior-z episode
    barely moves and its posterior carries little of the goal; hand-made contexts near the goal carry
    nearly all of it. The margins are wide (measured: 0.24 / -0.05 against 0.98 / 0.97 on 200 tasks)."""
    run_dir = ROOT / "experiments" / "results" / "navigation" / "pearl_seed0"
    result = load("pearl_encoder").diagnose(str(run_dir), tasks=100, seed=0)
    assert result["exploration"]["mean_abs_action"] < 0.1
    assert max(result["exploration"]["r2"]) < 0.6
    assert min(result["near_goal"]["r2"]) > 0.85
    assert result["near_goal"]["return_under_posterior_mean"] > result["exploration"]["return"] + 15


def test_navigation_goal_observed_adds_the_goal_to_the_observation_and_keeps_the_reward():
    import torch
    from caml_rl.envs.navigation import Navigation2D

    module = load("navigation_goal_observed")
    tasks = np.array([[0.3, -0.2], [-0.1, 0.4]])
    plain, observed = Navigation2D().make_vec_env(2, "cpu"), module.NavigationGoalObserved().make_vec_env(2, "cpu")
    obs = observed.reset(tasks, np.random.default_rng(0))
    plain.reset(tasks, np.random.default_rng(0))
    assert obs.flatten().tolist() == pytest.approx([0, 0, 0.3, -0.2, 0, 0, -0.1, 0.4])
    action = torch.tensor([[0.05, -0.2], [0.1, 0.1]])
    (o1, r1, d1), (o2, r2, d2) = plain.step(action), observed.step(action)
    assert torch.equal(o2[:, :2], o1) and torch.equal(r2, r1) and torch.equal(d2, d1)
    assert module.NavigationGoalObserved().observation_space.shape == (4,)


def test_video_panel_keeps_every_nth_frame_scaled(tmp_path):
    import imageio.v3 as iio
    from PIL import Image

    frames = np.zeros((6, 40, 80, 3), dtype=np.uint8)
    for i in range(6):
        frames[i, :, i * 10 : i * 10 + 10] = 255  # a white bar that moves right
    iio.imwrite(tmp_path / "in.gif", frames)
    n, size = load("video_panel").panel(str(tmp_path / "in.gif"), str(tmp_path / "out.gif"), every=2, scale=0.5, fps=5)
    assert (n, size) == (3, (40, 20))
    with Image.open(tmp_path / "out.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (40, 20)
        gif.seek(2)
        bright = np.flatnonzero(np.asarray(gif.convert("L"))[10] > 128)
        assert bright.min() >= 18 and bright.max() <= 27  # frame 4's bar, columns 40-49 halved
