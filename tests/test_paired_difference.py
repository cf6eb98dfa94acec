"""experiments/paired_difference.py: the paired TRPO-vs-ProMP numbers quoted in experiments/README.md."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RUNS = ROOT / "experiments" / "results" / "halfcheetah_vel_scaled"
spec = importlib.util.spec_from_file_location("paired_difference", ROOT / "experiments" / "paired_difference.py")
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def test_reproduces_the_quoted_paired_differences():
    rows = paired.paired_difference(RUNS / "caml_seed0", RUNS / "caml_promp_seed0")
    assert [round(m, 1) for m, _ in rows] == [22.3, 22.1, -6.2, 27.3]
    assert [round(c, 1) for _, c in rows] == [1.3, 14.5, 14.5, 14.2]
    summary = paired.training_summary(RUNS / "caml_promp_seed0", 50)
    assert round(summary["return/after_adaptation"], 1) == -82.0


def test_refuses_evaluations_on_different_tasks(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((RUNS / "caml_promp_seed0" / "eval.json").read_text())
    data["tasks"] = list(reversed(data["tasks"]))
    (other / "eval.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="different tasks"):
        paired.paired_difference(RUNS / "caml_seed0", other)


def test_rejects_a_bad_last_count(capsys):
    with pytest.raises(SystemExit):
        paired.main([str(RUNS / "caml_seed0"), str(RUNS / "caml_promp_seed0"), "--last", "0"])
    assert "--last 0: must be at least 1" in capsys.readouterr().err
