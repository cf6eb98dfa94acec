"""experiments/training_curve.py: the training-curve numbers quoted in experiments/README.md."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
DIRECTION = ROOT / "experiments" / "results" / "halfcheetah_dir_scaled"
spec = importlib.util.spec_from_file_location("training_curve", ROOT / "experiments" / "training_curve.py")
tc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tc)


def test_window_means_and_leader_segments():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    b = np.array([3.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    assert tc.window_mean(a, 4, 2) == 3.5
    assert np.isnan(tc.window_mean(a, 7, 1))
    assert tc.segments(a, b, 2, ("a", "b")) == [("b", 1, (2, 1.5, 3.0)), ("a", 3, (6, 5.5, 3.0))]
    assert tc.method_of(Path("x/caml_seed12")) == "caml" and tc.method_of(Path("x/caml_promp")) == "caml_promp"


def test_seed_mean_is_cut_to_the_shortest_seed():
    curves = {Path("caml_seed0"): np.array([1.0, 2.0, 3.0]), Path("caml_seed1"): np.array([3.0, 4.0])}
    assert tc.seed_mean_curves(curves)["caml"].tolist() == [2.0, 3.0]


def test_reproduces_the_quoted_direction_curve(capsys):
    tc.main([str(DIRECTION / "caml_seed0"), str(DIRECTION / "maml_seed1"), "--at", "10", "300"])
    out = capsys.readouterr().out
    assert "| halfcheetah_dir_scaled/caml_seed0 (300 it) | +4.6 | +673.4 | +691.3 (its 251–300) |" in out
    assert "| halfcheetah_dir_scaled/maml_seed1 (300 it) | +85.7 | +471.0 | +450.5 (its 251–300) |" in out
    assert "maml ahead over iterations 1–" in out


def test_rejects_a_directory_without_progress(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tc.main([str(tmp_path)])
    assert "no progress.csv there" in capsys.readouterr().err
