"""experiments/seed_difference.py: the over-seeds CAML-vs-MAML numbers quoted in experiments/README.md."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
DIRECTION = ROOT / "experiments" / "results" / "halfcheetah_dir_scaled"
spec = importlib.util.spec_from_file_location("seed_difference", ROOT / "experiments" / "seed_difference.py")
sd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sd)


def test_welch_matches_a_hand_computation():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 3.0])
    diff, half, df = sd.welch(a, b)
    va, vb = 1.0 / 3, 3.0 / 3  # sample variances 1 and 3, over n = 3
    assert diff == pytest.approx(1.0)
    assert df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2))
    assert df == pytest.approx(3.2)
    assert half == pytest.approx(3.1824 * np.sqrt(va + vb))  # df rounded down to 3


def test_permutation_p_counts_the_splits():
    # complete separation of 3 + 3 values: only 1 of the 20 splits is as extreme
    assert sd.permutation_p(np.array([4.0, 5.0, 6.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1 / 20)
    assert sd.permutation_p(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])) == pytest.approx(1.0)


def test_reproduces_the_quoted_direction_difference(capsys):
    sd.main([str(DIRECTION / f"{m}_seed{s}") for m in ("caml", "maml") for s in range(3)])
    out = capsys.readouterr().out
    assert "after 1 steps: +146.2 ± 144.4 (Welch df 3.2), permutation p 0.050" in out


def test_needs_two_methods(capsys):
    with pytest.raises(SystemExit):
        sd.main([str(DIRECTION / "caml_seed0"), str(DIRECTION / "caml_seed1")])
    assert "need two methods with at least 2 seeds each, got: caml (2 seeds)" in capsys.readouterr().err
