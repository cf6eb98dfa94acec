"""The committed results can be re-evaluated from their checkpoints by anyone, on any machine.

What "reproduces" means (caml_rl.reproduction): the evaluated weights are the committed ones
(``policy_sha256``); on the machine and library versions that wrote an eval.json every number is
bit-identical; elsewhere each step's mean lies within the statistical tolerance of the committed
row. The committed files predate the machine record, so here they are held to the tolerance.
"""

import json
import shutil
from pathlib import Path

import pytest

from caml_rl import load_run
from caml_rl.cli import main
from caml_rl.reproduction import NUMERICS, disagreements, machine_difference, machine_record

RESULTS = Path(__file__).parents[1] / "experiments" / "results"


def committed(run: str) -> dict:
    return json.loads((RESULTS / run / "eval.json").read_text())


@pytest.mark.parametrize(
    "run",
    [
        "navigation/caml_seed0",
        "navigation/maml_seed0",
        "halfcheetah_vel/caml_seed0",
        "halfcheetah_vel/ppo_seed0",
        "halfcheetah_dir_scaled/caml_seed0",
        "halfcheetah_dir_scaled/maml_seed0",
        "halfcheetah_dir_scaled/caml_seed1",
        "halfcheetah_dir_scaled/maml_seed1",
        "halfcheetah_dir_scaled/maml_seed2",
        "halfcheetah_dir_scaled/caml_seed2",
        "halfcheetah_vel_scaled/caml_seed0",
        "halfcheetah_vel_scaled/maml_seed0",
        "halfcheetah_vel_scaled/caml_seed1",
        "halfcheetah_vel_scaled/maml_seed1",
        "halfcheetah_vel_scaled/maml_seed2",
        "halfcheetah_vel_scaled/caml_seed2",
        "halfcheetah_vel_scaled/caml_promp_seed0",
        "halfcheetah_vel_scaled/caml_lr10_seed0",
        "halfcheetah_vel_scaled/caml_lr10_seed1",
        "halfcheetah_dir_peer/peer_seed1",
        "navigation_outer/ppo_seed0",
        "navigation_outer/promp_seed0",
        "halfcheetah_dir_sweep/caml_lr30_full_seed0",
        "halfcheetah_dir_sweep/maml_lr1_seed0",
        "navigation/rl2_seed0",
        "navigation/rl2_seed1",
        "navigation/rl2_seed2",
        "halfcheetah_vel_scaled/rl2_seed0",
        "halfcheetah_vel_scaled/rl2_seed1",
        "halfcheetah_vel_scaled/rl2_seed2",
        "halfcheetah_dir_scaled/rl2_seed0",
        "navigation/pearl_seed0",
        "navigation/pearl_seed1",
        "navigation/pearl_seed2",
        "ant_dir_sweep/caml_lr30_seed0",
        # Paper-scale Ant and HalfCheetah-dynamics rows: each re-evaluation is 0.6M env steps plus fine-tuning
        # (2-5 minutes on one core), so they run with -m slow and keep the default suite within CI's 20 minutes.
        pytest.param("ant_dir/caml_seed0", marks=pytest.mark.slow),
        pytest.param("ant_dir/maml_seed0", marks=pytest.mark.slow),
        pytest.param("halfcheetah_dynamics/caml_seed0", marks=pytest.mark.slow),
        pytest.param("halfcheetah_dynamics/maml_seed0", marks=pytest.mark.slow),
        pytest.param("halfcheetah_dynamics/caml_noadapt_seed0", marks=pytest.mark.slow),
        pytest.param("ant_dir/ppo_seed0", marks=pytest.mark.slow),
        pytest.param("ant_dir/ppo_oracle_seed0", marks=pytest.mark.slow),
        pytest.param("halfcheetah_dynamics/ppo_seed0", marks=pytest.mark.slow),
        pytest.param("halfcheetah_dynamics/ppo_oracle_seed0", marks=pytest.mark.slow),
        pytest.param("ant_goal/ppo_seed0", marks=pytest.mark.slow),
        pytest.param("ant_goal/ppo_oracle_seed0", marks=pytest.mark.slow),
    ],
)
def test_evaluate_reproduces_the_committed_table_row(run):
    result = load_run(RESULTS / run).evaluate().to_dict()
    assert disagreements(committed(run), result) == []


def test_an_earlier_checkpoint_fails_the_comparison():
    """Iteration 150 of a 300-iteration run, under the final one's name: its one-step return is
    4 of the committed 95% half-widths away (+492 vs +565), far outside what rounding moves."""
    run = "halfcheetah_dir_scaled/maml_seed0"
    earlier = load_run(RESULTS / run, RESULTS / run / "checkpoints" / "iter_000150.pt").evaluate().to_dict()
    renamed = {**earlier, "iteration": 300}
    assert any("another checkpoint" in p for p in disagreements(committed(run), renamed))
    problems = disagreements(committed(run), {**renamed, "policy_sha256": committed(run)["policy_sha256"]})
    assert "step 1" in [p.split(":")[0] for p in problems]  # the numbers alone show it too


def test_a_different_runs_checkpoint_fails_the_comparison():
    """Seed 1's final weights evaluated on seed 0's test tasks: the weights' digest shows the swap
    on any machine; the numbers show it too (one step +473 vs +565, 5 half-widths away). Two
    equally good seeds would agree statistically, which is why the digest is recorded."""
    run, other = "halfcheetah_dir_scaled/maml_seed0", "halfcheetah_dir_scaled/maml_seed1"
    swapped = load_run(RESULTS / other).evaluate(seed=0).to_dict()
    assert any("another checkpoint" in p for p in disagreements(committed(run), swapped))
    problems = disagreements(committed(run), {**swapped, "policy_sha256": committed(run)["policy_sha256"]})
    assert "step 1" in [p.split(":")[0] for p in problems]


def test_same_machine_means_bit_identical(tmp_path):
    """An eval.json that records this machine must be reproduced exactly: one changed task return fails."""
    run = load_run(RESULTS / "navigation/caml_seed0")
    first = run.evaluate(tasks=4, episodes=2, steps=1).to_dict()
    assert first["machine"] == machine_record() and machine_difference(first["machine"], machine_record()) is None
    again = run.evaluate(tasks=4, episodes=2, steps=1).to_dict()
    assert disagreements(first, again) == []
    nudged = json.loads(json.dumps(first))
    nudged["task_returns"][1][0] += 1e-9  # far inside any statistical tolerance, but not the same bits
    assert "not bit-identical" in disagreements(nudged, again)[0]
    elsewhere = {**nudged, "machine": {**first["machine"], "cpu_id": "family 0 model 0 stepping 0"}}
    assert disagreements(elsewhere, again) == []  # another CPU: held to the tolerance instead
    newer = {**first, "machine": {**first["machine"], "versions": {**first["machine"]["versions"], "torch": "0.1"}}}
    assert (
        machine_difference(newer["machine"], machine_record())
        == f"torch 0.1 -> {first['machine']['versions']['torch']}"
    )
    # a file from before caml-rl's last change of rounding (no or another numerics revision): the tolerance
    older = {**first, "machine": {**first["machine"], "versions": {**first["machine"]["versions"]}}}
    del older["machine"]["versions"]["caml_rl_numerics"]
    assert machine_difference(older["machine"], machine_record()) == f"caml_rl_numerics ? -> {NUMERICS}"
    assert disagreements({**nudged, "machine": older["machine"]}, again) == []
    # an evaluation on changed task settings is never held to a file of the trained ones, nor the reverse, even
    # one written before task_settings was recorded (no key: no change)
    changed = {**again, "task_settings": {"goal_high": 2}}
    unrecorded = {k: v for k, v in first.items() if k != "task_settings"}
    for committed, result in ((first, changed), (unrecorded, changed), (changed, again)):
        assert disagreements(committed, result)[0].startswith("evaluated with task_settings=")
    assert disagreements(unrecorded, again) == []


def test_evaluate_says_when_the_committed_file_comes_from_another_machine(tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(RESULTS / "navigation/caml_seed0", run_dir)
    main(["evaluate", str(run_dir), "--out", str(tmp_path / "again.json")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("note: ") and "records no machine" in out[0] and "statistically" in out[0]
    assert out[-1].startswith("reproduces ") and "within the statistical tolerance" in out[-1]
    # the new file records this machine: evaluating again reproduces it bit for bit, with no note
    shutil.copy(tmp_path / "again.json", run_dir / "eval.json")
    main(["evaluate", str(run_dir), "--out", str(tmp_path / "third.json")])
    out = capsys.readouterr().out.splitlines()
    assert not out[0].startswith("note: ") and out[-1] == f"reproduces {run_dir / 'eval.json'} bit for bit"
