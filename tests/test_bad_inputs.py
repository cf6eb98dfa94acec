"""Issue 13: nothing a user types or a file contains damages a run or runs code.

Each family runs the command as a user would (``main([...])``) and asserts exit status 2, one
line on stderr naming the culprit, and that every file that existed before is byte-identical
(nothing new appears either).
"""

import dataclasses
import io
import json
import os
import pickle
import shutil
import stat
import zipfile

import pytest
import torch
from caml_rl.envs.navigation import Navigation2D, NavigationVecEnv

from caml_rl import envs
from caml_rl.checkpoint import (
    RunDirectoryWarning,
    first_line,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from caml_rl.cli import main
from caml_rl.config import load_config
from caml_rl.trainer import Trainer

SMALL = [
    "meta_batch_size=3",
    "episodes_per_task=2",
    "env.settings.horizon=5",
    "policy.hidden_sizes=[8]",
    "evaluation.tasks=2",
    "evaluation.episodes=2",
    "evaluation.steps=1",
    "device=cpu",
    "checkpoint_every=1",
]
SETS = [a for s in SMALL for a in ("--set", s)]


def snapshot(root):
    """Every path under ``root`` with its bytes and mode (the run must come out identical)."""
    if not root.exists():
        return None
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>", stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
    }


def fails(capsys, argv, *fragments):
    """Run the CLI; it must exit 2 with one stderr line that holds every fragment."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exc.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("caml-rl: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-iteration run (checkpoints at 1 and 2, eval.json) to copy per test."""
    out = tmp_path_factory.mktemp("trained") / "run"
    Trainer(load_config(None, SMALL + ["iterations=2"]), out).train(quiet=True)
    return out


@pytest.fixture
def run(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


# ------------------------------------------------------------------ config values and files
@pytest.mark.parametrize(
    "override, fragment",
    [
        ("adaptation.inner_lr=.inf", "adaptation.inner_lr=inf is not a finite number"),
        ("policy.init_std=.inf", "policy.init_std=inf is not a finite number"),
        ("evaluation.inner_lr=.nan", "evaluation.inner_lr=nan is not a finite number"),
        ("trpo.max_kl=.inf", "trpo.max_kl=inf is not a finite number"),
        ("trpo.cg_damping=.inf", "trpo.cg_damping=inf is not a finite number"),
        ("env.settings.max_action=.inf", "env.settings.max_action=inf is not a finite number"),
        ("env.settings.goal_high=.inf", "env.settings.goal_high=inf is not a finite number"),
        ("env.settings.max_action=fast", "env.settings.max_action='fast' has the wrong type; expected float"),
        ("seed=-1", "seed=-1 is out of range"),
        ("device=cuda:abc", "device='cuda:abc'"),
        ("seed=100000000000000000000000", "seed=100000000000000000000000 is out of range"),
        ("env.settings.horizon=1000000000", "one meta-iteration needs about"),
        ("policy.hidden_sizes=[100000000000]", "one meta-iteration needs about"),
        ("evaluation.tasks=1000000000", "the evaluation needs about"),
    ],
)
def test_bad_config_values_name_the_key_and_write_nothing(tmp_path, capsys, override, fragment):
    out = tmp_path / "new_run"
    fails(capsys, ["train", *SETS, "--set", override, "--out", str(out)], fragment)
    assert not out.exists()


@pytest.mark.parametrize("spelling", ["1e-05", "1E-5", "0.00001", "1e-5"])
def test_every_float_spelling_is_a_float(spelling, tmp_path):
    # exact: parsing a decimal rounds correctly to the nearest float, the same one for every spelling
    assert load_config(None, [f"trpo.cg_damping={spelling}"]).trpo.cg_damping == 1e-5
    path = tmp_path / "c.yaml"
    path.write_text(f"policy:\n  min_std: {spelling}\n")
    assert load_config(path).policy.min_std == 1e-5


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"- a\n- b\n", "holds a list"),
        (b"42\n", "holds a int"),
        (b"\x00\xff\xfe\x01binary", "is not UTF-8 text"),
        ("iterations: 3\n".encode("utf-16"), "is not UTF-8 text"),
        (b"adaptation: [unclosed\n", "is not valid YAML"),
        (
            b"iterations: 1\nseed: 0\niterations: 2\n",
            "key 'iterations' is given twice in one mapping (again on line 3)",
        ),
    ],
)
def test_bad_config_files_name_the_file(tmp_path, capsys, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    out = tmp_path / "new_run"
    fails(capsys, ["train", str(path), "--set", "iterations=1", "--out", str(out)], "bad.yaml", fragment)
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_names_the_file(tmp_path, capsys):
    path = tmp_path / "secret.yaml"
    path.write_text("iterations: 1\n")
    path.chmod(0)
    fails(capsys, ["train", str(path)], "secret.yaml", "cannot be read")


# ------------------------------------------------------------------ output paths
@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", *SETS, "--iterations", "1", "--out", "{file}"], "is a file"),
        (["train", *SETS, "--iterations", "1", "--out", "{file}/run"], "which is a file"),
        (["baseline", "--timesteps", "64", "--out", "{file}"], "is a file"),
        (["evaluate", "{run}", "--out", "{file}/eval.json"], "which is a file"),
        (["evaluate", "{run}", "--out", "{run}"], "is a folder; expected a file"),
        (["report", "{run}", "--out", "{file}"], "is a file"),
        (["visualize", "{run}", "--tasks", "1", "--steps", "0", "--out", "{file}/figs"], "which is a file"),
    ],
)
def test_out_paths_that_cannot_be_written(run, tmp_path, capsys, argv, fragment):
    (tmp_path / "afile").write_text("keep me\n")
    before = snapshot(tmp_path)
    names = {"file": str(tmp_path / "afile"), "run": str(run)}
    fails(capsys, [a.format(**names) for a in argv], "--out", fragment)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ existing runs stay byte-identical
def test_train_and_baseline_refuse_an_existing_run(run, capsys):
    before = snapshot(run)
    fails(capsys, ["train", *SETS, "--iterations", "1", "--out", str(run)], "already has checkpoints")
    fails(capsys, ["baseline", "--timesteps", "64", "--out", str(run)], "already holds a run")
    assert snapshot(run) == before


def test_rank_variable_alone_does_not_skip_the_existing_run_check(run, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    before = snapshot(run)
    fails(capsys, ["train", *SETS, "--iterations", "1", "--out", str(run)], "already has checkpoints")
    assert snapshot(run) == before


def test_resume_to_fewer_iterations_than_the_checkpoint_is_refused(run, capsys):
    """It used to 'resume at iteration 2/0' and replace eval.json with a fresh evaluation."""
    before = snapshot(run)
    fails(capsys, ["train", "--resume", str(run), "--iterations", "1"], "--iterations 1", "allowed: >= 2")
    assert snapshot(run) == before


def test_train_refuses_to_overwrite_its_own_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("# my notes\niterations: 1\n")
    before = snapshot(tmp_path)
    fails(capsys, ["train", "config.yaml", *SETS, "--out", "."], "would overwrite 'config.yaml'", "another --out")
    assert snapshot(tmp_path) == before


def _nan_weight(run):
    path = latest_checkpoint(run)
    payload = torch.load(path, weights_only=True)
    next(iter(payload["policy"].values()))[0] = float("nan")
    torch.save(payload, path)
    return "non-finite values in policy weight"


def _no_rng(run):
    path = latest_checkpoint(run)
    payload = torch.load(path, weights_only=True)
    payload["rng"] = {}
    torch.save(payload, path)
    return "no random-stream state"


def _foreign(run):
    other = run.parent / "other"
    Trainer(load_config(None, SMALL + ["iterations=1", "policy.hidden_sizes=[4]"]), other).train(
        evaluate_at_end=False, quiet=True
    )
    shutil.copy(latest_checkpoint(other), run / "checkpoints" / "iter_000003.pt")
    shutil.rmtree(other)
    return "does not belong to this run ("


def _write(name, data, fragment):
    def damage(run):
        (run / name).write_bytes(data)
        return fragment

    return damage


@pytest.mark.parametrize(
    "damage",
    [
        _write("progress.csv", b"iteration,x\nabc,1\n", "progress.csv' line 2 is not a caml-rl progress row"),
        _write("progress.csv", b"\xff\xfe\x00garbage", "progress.csv' is not UTF-8 text"),
        _write("config.yaml", b"policy: [unclosed\n", "config.yaml' is not valid YAML"),
        _write(
            "config.yaml",
            b"policy: {hidden_sizes: [9]}\n",
            "it has checkpoint_every=1, the run's config.yaml has 25",
        ),
        _write("run.json", b"{not json", "run.json' is not valid JSON"),
        _nan_weight,
        _no_rng,
        _foreign,
    ],
    ids=["progress-garbage", "progress-binary", "config-yaml", "config-differs", "run-json", "nan", "rng", "foreign"],
)
def test_failing_resume_leaves_the_run_byte_identical(run, capsys, damage):
    fragment = damage(run)
    before = snapshot(run)
    fails(capsys, ["train", "--resume", str(run), "--iterations", "3"], fragment)
    assert snapshot(run) == before


def test_resume_keeps_the_original_command_and_appends_its_own(run, capsys, monkeypatch):
    command = json.loads((run / "run.json").read_text())["command"]
    argv = ["train", "--resume", str(run), "--iterations", "3", "--no-eval"]
    monkeypatch.setattr("sys.argv", ["caml-rl", *argv])
    main(argv)
    record = json.loads((run / "run.json").read_text())
    assert record["command"] == command
    assert record["resumes"][0]["iteration"] == 2 and "--resume" in record["resumes"][0]["command"]
    modes = {stat.S_IMODE((run / n).stat().st_mode) for n in ("config.yaml", "run.json", "progress.csv")}
    assert len(modes) == 1, modes  # run files all get the same (umask) mode


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--inner-lr", "nan"], "--inner-lr nan is out of range"),
        (["--inner-lr", "inf"], "--inner-lr inf is out of range"),
        (["--inner-lr", "0"], "--inner-lr 0.0 is out of range"),
        (["--inner-lr", "-1"], "--inner-lr -1.0 is out of range"),
        (["--seed", "-1"], "--seed -1 is out of range"),
        ([], "eval.json' exists (the run's training-time evaluation); give --out FILE"),
        (["--out", "{run}/eval.json"], "eval.json' exists (it exists); give --out FILE"),
    ],
)
def test_evaluate_never_replaces_eval_json_unasked(run, capsys, flags, fragment):
    before = snapshot(run)
    fails(capsys, ["evaluate", str(run), *[f.format(run=run) for f in flags]], fragment)
    assert snapshot(run) == before


def test_evaluate_overwrite_replaces_on_request(run, capsys):
    main(["evaluate", str(run), "--seed", "3", "--overwrite"])
    assert json.loads((run / "eval.json").read_text())["seed"] == 3


def test_evaluate_checkpoint_from_another_run_is_refused(run, tmp_path, capsys):
    """A given --checkpoint must agree with the run's config.yaml, or its numbers would be filed
    (eval.json) under the wrong run; a file that is not a checkpoint gets no advice to delete it."""
    other = tmp_path / "other"
    Trainer(load_config(None, SMALL + ["iterations=1", "policy.hidden_sizes=[4]"]), other).train(
        evaluate_at_end=False, quiet=True
    )
    before = snapshot(run)
    foreign = str(latest_checkpoint(other))
    argv = ["evaluate", str(run), "--checkpoint", foreign, "--overwrite"]
    fails(capsys, argv, "does not belong to this run", "policy.hidden_sizes=[4]", "copied from another run")
    line = fails(capsys, ["evaluate", str(run), "--checkpoint", str(run / "config.yaml"), "--overwrite"], "config.yaml")
    assert "delete it" not in line
    assert snapshot(run) == before
    main(
        [
            "evaluate",
            str(run),
            "--checkpoint",
            str(run / "checkpoints" / "iter_000001.pt"),
            "--out",
            str(tmp_path / "e.json"),
        ]
    )
    assert json.loads((tmp_path / "e.json").read_text())["iteration"] == 1  # its own older checkpoint is fine
    shutil.copy(foreign, run / "checkpoints" / "iter_000009.pt")  # now the newest, found without --checkpoint
    fails(capsys, ["evaluate", str(run), "--out", str(tmp_path / "f.json")], "does not belong to this run")
    assert not (tmp_path / "f.json").exists()


# ------------------------------------------------------------------ checkpoint names
def test_only_iter_numbered_files_are_checkpoints(run):
    newest = latest_checkpoint(run)
    shutil.copy(run / "checkpoints" / "iter_000001.pt", run / "checkpoints" / "iter_backup.pt")
    (run / "checkpoints" / "notes.txt").write_text("junk")
    (run / "checkpoints" / ".iter_000003.pt.x.tmp").write_bytes(b"half")  # an interrupted write: silent
    with pytest.warns(RunDirectoryWarning, match=r"ignoring iter_backup\.pt, notes\.txt in") as record:
        assert latest_checkpoint(run) == newest
    assert len(record) == 1


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda p: p.write_bytes(b""), "iter_000002.pt' is damaged"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "iter_000002.pt' is damaged"),
        (lambda p: (p.unlink(), p.mkdir()), "iter_000002.pt' is not a file"),
    ],
    ids=["empty", "truncated", "folder"],
)
def test_damaged_newest_checkpoint_is_named_not_skipped(run, capsys, damage, fragment):
    damage(run / "checkpoints" / "iter_000002.pt")
    before = snapshot(run)
    for argv in (["train", "--resume", str(run)], ["evaluate", str(run), "--out", str(run / "e.json")]):
        fails(capsys, argv, fragment)
    assert snapshot(run) == before


def test_damaged_checkpoint_message_is_not_cut_mid_word():
    exc = ValueError("word " * 60)
    line = first_line(exc)
    assert line.endswith("word ...") and len(line) <= 164


# ------------------------------------------------------------------ distributed environment
@pytest.mark.parametrize(
    "variables, fragment",
    [
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}, "LOCAL_RANK"),
        ({"WORLD_SIZE": "abc"}, "environment variable WORLD_SIZE='abc'"),
        (
            {
                "WORLD_SIZE": "2",
                "RANK": "5",
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29999",
            },
            "environment variable RANK=5 is not allowed",
        ),
        (
            {
                "WORLD_SIZE": "2",
                "RANK": "0",
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29999",
                "CAML_RL_DIST_TIMEOUT": "abc",
            },
            "environment variable CAML_RL_DIST_TIMEOUT='abc'",
        ),
    ],
)
def test_bad_launcher_environment_is_refused_at_once(tmp_path, capsys, monkeypatch, variables, fragment):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "new_run"
    fails(capsys, ["train", *SETS, "--iterations", "1", "--out", str(out)], fragment)
    assert not out.exists()


def test_bad_timeout_variable_does_not_break_other_commands(monkeypatch, capsys):
    monkeypatch.setenv("CAML_RL_DIST_TIMEOUT", "abc")
    main(["envs"])
    assert "navigation2d" in capsys.readouterr().out


# ------------------------------------------------------------------ report, visualize, sweep
@pytest.mark.parametrize(
    "argv, damage, fragment",
    [
        (["report", "{run}", "--steps", "-1"], None, "--steps -1 is out of range"),
        (["report", "{run}", "--x", "env.name"], None, "--x 'env.name'"),
        (["report", "{run}", "--x", "nope.key"], None, "has no such config key"),
        (["report", "{run}"], ("eval.json", b'{"returns": [NaN]}'), "eval.json' is not valid JSON"),
        (["report", "{run}"], ("eval.json", b'{"env": "x"}'), "eval.json' has adapt=None"),
        (["report", "{run}"], ("progress.csv", b"a,b\n1,2\n"), "progress.csv' line 2"),
        (["report", "{run}", "--x", "seed"], ("config.yaml", b"[1, 2]\n"), "config.yaml' must hold a mapping"),
        (["visualize", "{run}", "--tasks", "1", "--steps", "0"], ("progress.csv", b"\xff\x00"), "progress.csv"),
    ],
)
def test_report_and_visualize_name_the_bad_file_or_flag(run, tmp_path, capsys, argv, damage, fragment):
    if damage:
        (run / damage[0]).write_bytes(damage[1])
    out = tmp_path / "out"
    argv = [a.format(run=run) for a in argv] + ["--out", str(out)]
    before = snapshot(run)
    fails(capsys, argv, fragment)
    assert snapshot(run) == before and not out.exists()


@pytest.mark.parametrize(
    "suite, fragment",
    [
        ("runs: [unclosed\n", "is not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
        ("runs: abc\n", "runs must be a list of mappings"),
        ("runs:\n  - name: x\n    config: {cfg}\n    seeds: '012'\n", "seeds must be a list of integers"),
        ("runs:\n  - name: x\n    config: {cfg}\n    set: iterations=1\n", "set must be a list of KEY=VALUE strings"),
        ("runs:\n  - name: ../../x\n    config: {cfg}\n", "name '../../x' leaves out_root"),
        ("runs:\n  - name: /tmp/x\n    config: {cfg}\n", "leaves out_root"),
        ("runs:\n  - name: x\n    config: {cfg}\n  - name: x\n    config: {cfg}\n", "names run 'x' twice"),
        ("runs:\n  - name: x\n    config: {cfg}\n    set: ['trpo.max_kl=.inf']\n", "run 'x': config key trpo.max_kl"),
    ],
)
def test_malformed_suites_are_one_line(tmp_path, capsys, suite, fragment):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("iterations: 1\n")
    path = tmp_path / "suite.yaml"
    path.write_text(f"out_root: {tmp_path / 'results'}\n" if suite.startswith("runs") else "")
    path.write_text(path.read_text() + suite.format(cfg=cfg))
    fails(capsys, ["sweep", str(path), "--dry-run"], fragment)
    assert not (tmp_path / "results").exists() and not (tmp_path.parent / "x").exists()


# ------------------------------------------------------------------ no half-written runs
@dataclasses.dataclass
class FlakyNavigation(Navigation2D):
    """2D navigation whose 6-env batches (3 tasks x 2 episodes, the tests' meta-batch) raise at
    their third step while ``FAIL`` is set; the validator's own batch is unaffected."""

    name = "test_flaky_nav"
    FAIL = False

    def make_vec_env(self, num_envs, device):
        env = NavigationVecEnv(self, num_envs, device)
        step, count = env.step, [0]

        def flaky_step(actions):
            count[0] += 1
            if FlakyNavigation.FAIL and num_envs == 6 and count[0] == 3:
                raise RuntimeError("plug-in env broke at step 3")
            return step(actions)

        env.step = flaky_step
        return env


@pytest.fixture
def flaky():
    envs.register("test_flaky_nav", FlakyNavigation, overwrite=True)
    yield
    FlakyNavigation.FAIL = False


def test_a_run_failing_in_its_first_iteration_leaves_nothing(tmp_path, flaky):
    config = lambda: load_config(None, SMALL + ["iterations=2", "env.name=test_flaky_nav"])  # noqa: E731
    envs.validate(envs.make("test_flaky_nav", horizon=5))
    FlakyNavigation.FAIL = True
    out = tmp_path / "run"
    with pytest.raises(Exception, match="step 3"):
        Trainer(config(), out).train(quiet=True)
    assert not out.exists()
    FlakyNavigation.FAIL = False  # the same command, once the env is fixed, just works
    Trainer(config(), out).train(evaluate_at_end=False, quiet=True)
    assert load_checkpoint(latest_checkpoint(out))["iteration"] == 2

    before = snapshot(out)  # a resume whose first iteration fails rewrites nothing
    FlakyNavigation.FAIL = True
    with pytest.raises(Exception, match="step 3"):
        Trainer.resume(out, iterations=3).train(quiet=True)
    assert snapshot(out) == before


# ------------------------------------------------------------------ PPO model files
class _Marker:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


PPO_SETS = ["--set", "policy.hidden_sizes=[8]", "--set", "env.settings.horizon=5"]


def _ppo_run(tmp_path):
    from caml_rl.ppo_baseline import PPOBaselineRun, PPOSettings

    settings = PPOSettings(total_timesteps=128, n_envs=2, n_steps=64, batch_size=64, n_epochs=1, save_every=1)
    config = lambda: load_config(None, ["policy.hidden_sizes=[8]", "env.settings.horizon=5"])  # noqa: E731
    out = tmp_path / "ppo"
    PPOBaselineRun(config(), out, settings).train(evaluate_at_end=False, verbose=False)
    return out, settings, config


def _rewrite_zip(path, name, data):
    entries = {}
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries[name] = data
    with zipfile.ZipFile(path, "w") as z:
        for n, blob in entries.items():
            z.writestr(n, blob)


def test_ppo_model_zip_is_loaded_without_unpickling(tmp_path, capsys):
    import base64

    from caml_rl.ppo_baseline import MODEL_FILE, PPOBaselineRun

    out, settings, config = _ppo_run(tmp_path)
    marker = tmp_path / "code_ran"
    payload = base64.b64encode(pickle.dumps(_Marker(str(marker)))).decode()
    with zipfile.ZipFile(out / MODEL_FILE) as z:
        data = json.loads(z.read("data"))
    data["policy_class"] = {":type:": "<class 'x'>", ":serialized:": payload}
    _rewrite_zip(out / MODEL_FILE, "data", json.dumps(data).encode())
    resumed = PPOBaselineRun(config(), out, settings)  # resumes: weights and counters only
    assert resumed.model.num_timesteps == 128 and not marker.exists()

    buf = io.BytesIO()
    torch.save({"w": _Marker(str(marker))}, buf)  # a policy.pth that would run code
    _rewrite_zip(out / MODEL_FILE, "policy.pth", buf.getvalue())
    before = snapshot(out)
    argv = ["baseline", *PPO_SETS, "--timesteps", "256", "--out", str(out)]
    fails(capsys, argv, "ppo_model.zip' is damaged or not a PPO model")
    assert not marker.exists() and snapshot(out) == before


def test_ppo_resume_with_other_settings_is_refused(tmp_path, capsys):
    out, _, _ = _ppo_run(tmp_path)
    before = snapshot(out)
    fails(
        capsys,
        ["baseline", *PPO_SETS, "--out", str(out)],
        "was trained with n_envs=2, not 8; resume with the same settings",
    )
    fails(capsys, ["baseline", *PPO_SETS, "--oracle", "--out", str(out)], "was trained with env.name='navigation2d'")
    assert snapshot(out) == before


def test_committed_ppo_run_still_resumes_safely(tmp_path):
    """experiments/baselines.sh's command finds a committed run's SB3 zip (the old format, kept)
    resumable: same config, and weights equal to its final caml-rl checkpoint."""
    from pathlib import Path

    from caml_rl.policies import make_policy
    from caml_rl.ppo_baseline import PPOBaselineRun, PPOSettings, copy_actor
    from caml_rl.runs import load_run

    root = Path(__file__).parents[1]
    run_dir = tmp_path / "ppo_seed0"
    shutil.copytree(root / "experiments" / "results" / "halfcheetah_vel" / "ppo_seed0", run_dir)
    before = snapshot(run_dir)
    config = load_config(root / "experiments" / "configs" / "halfcheetah_vel_ppo.yaml", ["torch_threads=1"])
    baseline = PPOBaselineRun(config, run_dir, PPOSettings())
    run = load_run(run_dir)
    assert baseline.resumed and baseline.model.num_timesteps == load_checkpoint(latest_checkpoint(run_dir))["env_steps"]
    dist = run.distribution
    actor = copy_actor(baseline.model, make_policy(run.config.policy, dist.observation_space, dist.action_space))
    for (name, a), b in zip(run.policy.state_dict().items(), actor.state_dict().values()):
        assert torch.equal(a, b), name  # exact: both are stored weights, copied, never recomputed
    assert snapshot(run_dir) == before


def test_save_checkpoint_files_follow_the_umask(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"iteration": 0})
    (tmp_path / "plain").write_text("")
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
