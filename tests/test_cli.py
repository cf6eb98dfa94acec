import json
import subprocess
import sys

import pytest

from caml_rl.cli import main

SMALL = [
    "--set",
    "meta_batch_size=3",
    "--set",
    "episodes_per_task=2",
    "--set",
    "env.settings.horizon=10",
    "--set",
    "policy.hidden_sizes=[8]",
    "--set",
    "evaluation.tasks=2",
    "--set",
    "evaluation.episodes=2",
    "--set",
    "evaluation.steps=1",
    "--device",
    "cpu",
]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "caml_rl", *args], capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_evaluate_resume(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", *SMALL, "--iterations", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert "iter    2/2" in text and "mean return" in text and "episodes seen" in text  # the evaluation table
    assert (out / "checkpoints" / "iter_000002.pt").is_file()
    assert (out / "progress.csv").is_file() and (out / "config.yaml").is_file()
    main(["train", "--resume", str(out), "--iterations", "3", "--no-eval"])
    assert "iter    3/3" in capsys.readouterr().out
    training_eval = (out / "eval.json").read_bytes()
    flags = ["--tasks", "3", "--steps", "2", "--episodes", "2", "--seed", "5"]
    main(["evaluate", str(out), *flags, "--out", str(out / "eval_seed5.json")])
    assert (out / "eval.json").read_bytes() == training_eval  # the training-time evaluation is kept (not rewritten)
    result = json.loads((out / "eval_seed5.json").read_text())
    assert len(result["returns"]) == 3 and len(result["ci95"]) == 3
    assert result["num_tasks"] == 3 and result["episodes_per_task"] == 2
    assert result["adapt"] == "context" and result["iteration"] == 3 and result["env"] == "navigation2d"


def test_evaluate_on_changed_task_settings(tmp_path, capsys):
    """``evaluate --set env.settings.KEY=VALUE`` evaluates the trained policy on other tasks (here goals
    four times farther out), records the change, and is never compared with the run's own eval.json."""
    out = tmp_path / "run"
    main(["train", *SMALL, "--iterations", "1", "--out", str(out)])
    wider = ["--set", "env.settings.goal_low=-2", "--set", "env.settings.goal_high=2"]
    capsys.readouterr()
    main(["evaluate", str(out), "--tasks", "4", *wider, "--out", str(out / "eval_wide.json")])
    text = capsys.readouterr().out
    assert "task settings changed: {'goal_low': -2, 'goal_high': 2}" in text
    assert "not compared with" in text and "task_settings" in text
    wide, trained = (json.loads((out / name).read_text()) for name in ("eval_wide.json", "eval.json"))
    assert wide["task_settings"] == {"goal_low": -2, "goal_high": 2} and trained["task_settings"] == {}
    assert max(abs(x) for task in wide["tasks"] for x in task) > 0.5  # goals outside the trained range
    assert max(abs(x) for task in trained["tasks"] for x in task) <= 0.5


def test_evaluate_changes_task_settings_only(tmp_path):
    out = tmp_path / "run"
    main(["train", *SMALL, "--iterations", "1", "--out", str(out), "--no-eval"])
    for item, fragment in (
        ("policy.hidden_sizes=[4]", "changed task settings only"),
        ("env.settings=3", "changed task settings only"),
        ("env.settings.goal_radius=-1", "goal_radius"),
        ("env.settings.no_such_setting=1", "no_such_setting"),
    ):
        assert_one_line_error(run_cli("evaluate", str(out), "--set", item, "--out", str(tmp_path / "x.json")), fragment)
    assert not (tmp_path / "x.json").exists()


def test_a_task_setting_that_changes_the_observation_is_refused(tmp_path):
    from caml_rl.config import ConfigError
    from caml_rl.runs import load_run

    out = tmp_path / "run"
    cheetah = ["--set", "env.name=halfcheetah_vel", "--set", "env.settings.observe_torso_com=false"]
    main(["train", *SMALL, *cheetah, "--iterations", "1", "--out", str(out), "--no-eval"])
    with pytest.raises(ConfigError, match="changes the observation size from 17 to 20; the trained policy needs 17"):
        load_run(out, task_settings=["env.settings.observe_torso_com=true"])


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", *SMALL, "--iterations", "1", "--out", str(out), "--no-eval"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", *SMALL, "--iterations", "1", "--out", str(out)])
    assert exc.value.code == 2
    assert f"run directory '{out}' already has checkpoints; use --resume {out}" in capsys.readouterr().err


def test_user_errors_are_one_line(tmp_path):
    assert_one_line_error(run_cli("train", "--set", "adaptation.inner_lr=abc"), "adaptation.inner_lr", "float")
    assert_one_line_error(run_cli("train", "--set", "trpo.max_kl=0"), "trpo.max_kl", "> 0")
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "missing")), "does not exist")
    assert_one_line_error(run_cli("train", "--resume", str(tmp_path / "missing")), "does not exist")
    assert_one_line_error(run_cli("train", str(tmp_path / "none.yaml")), "none.yaml", "does not exist")
    run = tmp_path / "broken" / "checkpoints"
    run.mkdir(parents=True)
    (run / "iter_000001.pt").write_bytes(b"\x80\x02garbage")
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "broken")), "iter_000001.pt", "damaged")


def test_envs_lists_navigation(capsys):
    main(["envs"])
    out = capsys.readouterr().out
    assert "navigation2d" in out and "goal_low=-0.5" in out


def test_only_caml_rl_errors_are_one_line(monkeypatch, capsys):
    """A bug elsewhere (here a ValueError no caml-rl check raised) keeps its traceback and asks
    for a report; caml-rl's own errors are one line, with the traceback only under --debug."""
    from caml_rl import cli
    from caml_rl.config import ConfigError

    def bug(args):
        raise ValueError("an internal bug")

    def user_error(args):
        raise ConfigError("config key x=1 is out of range")

    monkeypatch.setitem(cli.COMMANDS, "envs", bug)
    with pytest.raises(SystemExit) as exc:
        main(["envs"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" in err and "ValueError: an internal bug" in err
    assert "please report it" in err

    monkeypatch.setitem(cli.COMMANDS, "envs", user_error)
    with pytest.raises(SystemExit) as exc:
        main(["envs"])
    assert exc.value.code == 2 and capsys.readouterr().err == "caml-rl: error: config key x=1 is out of range\n"
    with pytest.raises(SystemExit):
        main(["envs", "--debug"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("caml-rl: error: config key x=1 is out of range\n")


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`caml-rl envs | head -1`: no traceback and no "internal error" once head has read enough."""
    proc = subprocess.Popen([sys.executable, "-m", "caml_rl", "envs"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has imported torch, let alone written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
