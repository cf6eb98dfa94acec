import contextlib
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

from caml_rl.checkpoint import CheckpointError
from caml_rl.cli import main
from caml_rl.config import ConfigError, load_config
from caml_rl.report import report
from caml_rl.sweep import Launcher, SweepError, load_suite, sweep

SMALL = """
meta_batch_size: 3
episodes_per_task: 2
env: {settings: {horizon: 10}}
policy: {hidden_sizes: [8]}
evaluation: {tasks: 3, episodes: 2, steps: 2}
device: cpu
iterations: 2
"""


@pytest.fixture
def suite(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    path = tmp_path / "suite.yaml"
    path.write_text(f"""
out_root: {tmp_path / "results"}
runs:
  - name: nav/caml
    config: {tmp_path / "small.yaml"}
    seeds: [0, 1]
  - name: nav/maml
    config: {tmp_path / "small.yaml"}
    set: ["adaptation.partition=all", "policy.context_size=0"]
""")
    return path


def test_sweep_runs_skips_and_resumes_then_report_pools_seeds(suite, tmp_path, capsys):
    root, runs = load_suite(suite)
    assert [r.name for r in runs] == ["nav/caml_seed0", "nav/caml_seed1", "nav/maml"]
    assert sweep(suite, jobs=2) == {"nav/caml_seed0": "done", "nav/caml_seed1": "done", "nav/maml": "done"}
    # a second call finds everything finished and starts nothing
    assert set(sweep(suite, dry_run=True).values()) == {"done"}
    # extending one run's iterations makes it resumable, not restarted
    (tmp_path / "small.yaml").write_text(SMALL.replace("iterations: 2", "iterations: 3"))
    capsys.readouterr()
    assert sweep(suite, dry_run=True, only="nav/maml") == {"nav/maml": "partial"}
    assert capsys.readouterr().out == " partial  nav/maml  (checkpoint 2/3)\n"
    sweep(suite, only="nav/maml")
    assert json.loads((root / "nav/maml/eval.json").read_text())["iteration"] == 3
    # two side by side on a machine of 2 or more CPUs: new and resumed runs alike keep to their own
    # CPUs, torch threads included (config.yaml keeps torch_threads 0)
    assert json.loads((root / "nav/caml_seed0/run.json").read_text())["torch_threads"] == 1
    (tmp_path / "small.yaml").write_text(SMALL.replace("iterations: 2", "iterations: 4"))
    sweep(suite, jobs=2, only="nav/caml_seed*")
    for seed in (0, 1):
        record = json.loads((root / f"nav/caml_seed{seed}/run.json").read_text())
        assert record["resumes"][-1]["iteration"] == 2 and record["torch_threads"] == 1 and record["cpus"] == 1
        assert load_config(root / f"nav/caml_seed{seed}/config.yaml").torch_threads == 0

    out = tmp_path / "report"
    paths = report(
        [root / "nav/caml_seed0", root / "nav/caml_seed1", root / "nav/maml"], out, steps=2, x_key="policy.context_size"
    )
    assert paths[-1].name == "sensitivity_policy_context_size.png"
    assert all(p.stat().st_size > 0 for p in paths)
    names = {p.name for p in paths}  # learning curves against iterations, env steps and wall time
    assert {"learning_curves_env_steps.png", "learning_curves_wall_time.png", "adaptation_curves.png"} <= names
    rows = json.loads((out / "results.json").read_text())
    caml = next(r for r in rows if r["label"] == "nav/caml")
    assert caml["seeds"] == 2 and caml["tasks"] == 6 and len(caml["returns"]) == 3
    assert caml["update_seconds"] > 0 and "update s/it" in (out / "results.md").read_text()
    per_seed = (out / "results.md").read_text().split("Per seed")[1]  # each seed on its own row too
    assert "| nav/caml_seed0 |" in per_seed and "| nav/caml_seed1 |" in per_seed and "3 test tasks" in per_seed
    # the pooled interval is over the 2 x 3 tasks; the bracket is over the two seeds' means (t with 1 df).
    # The report and numpy compute these from the same eval.json numbers in float64 (~1e-15 apart; approx's
    # default rel 1e-6), with the t quantiles of the report's own 4-decimal table
    evals = [json.loads((root / f"nav/caml_seed{i}/eval.json").read_text())["task_returns"] for i in (0, 1)]
    for k in range(3):
        pooled = np.array(evals[0][k] + evals[1][k])
        assert caml["returns"][k] == pytest.approx(pooled.mean())
        assert caml["ci95"][k] == pytest.approx(2.5706 * pooled.std(ddof=1) / np.sqrt(6))  # t(5)
        means = np.array([np.mean(evals[0][k]), np.mean(evals[1][k])])
        assert caml["seed_returns"][k] == pytest.approx(means.tolist())
        assert caml["ci95_over_seeds"][k] == pytest.approx(12.7062 * means.std(ddof=1) / np.sqrt(2))  # t(1)
    assert f"[± {caml['ci95_over_seeds'][1]:.2f}]" in (out / "results.md").read_text()  # exact: the same number
    assert "| nav/maml | navigation2d | all | 1 |" in (out / "results.md").read_text()

    # a run evaluated at an earlier checkpoint reports that iteration's env steps, not the last row's
    evaluated = json.loads((root / "nav/maml/eval.json").read_text())
    (root / "nav/maml/eval.json").write_text(json.dumps({**evaluated, "iteration": 2}))
    report([root / "nav/maml"], out, steps=2)
    (maml,) = json.loads((out / "results.json").read_text())
    # each iteration samples 3 tasks x 2 episodes x 10 steps before and again after adaptation
    assert maml["iterations"] == [2] and maml["env_steps"] == 2 * (2 * 3 * 2 * 10)


def test_report_rows_average_only_runs_that_differ_in_their_seed(suite, tmp_path):
    root, _ = load_suite(suite)
    sweep(suite, only="nav/caml*")
    out = tmp_path / "report"
    with pytest.raises(ConfigError, match="is given twice"):  # one run under two spellings is not two seeds
        report([root / "nav/caml_seed0", f"{root}/nav/../nav/caml_seed0"], out)
    shutil.copytree(root / "nav/caml_seed1", root / "nav/caml_seed2")
    with pytest.raises(ConfigError, match="both trained with seed 1"):
        report([root / "nav/caml_seed1", root / "nav/caml_seed2"], out)
    config = root / "nav/caml_seed2/config.yaml"
    config.write_text(config.read_text().replace("seed: 1", "seed: 2").replace("inner_lr: 1.0", "inner_lr: 0.5"))
    with pytest.raises(ConfigError, match=r"differ in config key adaptation.inner_lr \(0.5 vs 1.0\)"):
        report([root / "nav/caml_seed0", root / "nav/caml_seed2"], out)
    evaluated = json.loads((root / "nav/caml_seed1/eval.json").read_text())
    (root / "nav/caml_seed1/eval.json").write_text(json.dumps({**evaluated, "iteration": 1}))
    with pytest.raises(ConfigError, match="differ in their evaluation's iteration"):
        report([root / "nav/caml_seed0", root / "nav/caml_seed1"], out)
    assert not out.exists()
    # --eval picks another evaluation file of each run, e.g. one taken half-way
    for seed in (0, 1):
        (root / f"nav/caml_seed{seed}/eval_iter1.json").write_text((root / "nav/caml_seed1/eval.json").read_text())
    report([root / "nav/caml_seed0", root / "nav/caml_seed1"], out, eval_name="eval_iter1.json")
    assert json.loads((out / "results.json").read_text())[0]["iterations"] == [1]
    # a run recorded before a setting existed (no `plugins:` line) pools with one that recorded its default
    config = root / "nav/caml_seed0/config.yaml"
    assert "plugins: {}\n" in config.read_text()
    config.write_text(config.read_text().replace("plugins: {}\n", ""))
    report([root / "nav/caml_seed0", root / "nav/caml_seed1"], out, eval_name="eval_iter1.json")
    assert json.loads((out / "results.json").read_text())[0]["seeds"] == 2
    with pytest.raises(ConfigError, match="--eval '../x.json' must be a .json file name"):
        report([root / "nav/caml_seed0"], out, eval_name="../x.json")
    # evaluations on changed task settings (evaluate --set env.settings...) pool only with the same change,
    # and the table names it; a file from before task_settings was recorded pools with an unchanged one
    wide = {**evaluated, "task_settings": {"goal_high": 2}}
    (root / "nav/caml_seed0/eval_wide.json").write_text(json.dumps(wide))
    (root / "nav/caml_seed1/eval_wide.json").write_text(json.dumps({**wide, "task_settings": {}}))
    with pytest.raises(ConfigError, match=r"different task settings \(\{'goal_high': 2\} vs \{\}\)"):
        report([root / "nav/caml_seed1", root / "nav/caml_seed0"], out, eval_name="eval_wide.json")
    (root / "nav/caml_seed1/eval_wide.json").write_text(json.dumps(wide))
    report([root / "nav/caml_seed0", root / "nav/caml_seed1"], out, eval_name="eval_wide.json")
    assert json.loads((out / "results.json").read_text())[0]["env"] == "navigation2d goal_high=2"
    unrecorded = {k: v for k, v in evaluated.items() if k != "task_settings"}
    (root / "nav/caml_seed1/eval_old.json").write_text(json.dumps(unrecorded))
    (root / "nav/caml_seed0/eval_old.json").write_text(json.dumps({**unrecorded, "task_settings": {}}))
    report([root / "nav/caml_seed0", root / "nav/caml_seed1"], out, eval_name="eval_old.json")


def test_bad_suites_and_report_inputs(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs:\n  - name: x\n")
    with pytest.raises(ConfigError, match="needs name and config"):
        load_suite(bad)
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert "has no eval.json" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--x adaptation.inner_lr needs --steps >= 1"):  # checked before writing
        report([tmp_path / "missing"], tmp_path / "o", steps=0, x_key="adaptation.inner_lr")
    assert not (tmp_path / "o").exists()


def test_only_that_matches_nothing_names_the_runs(suite):
    """A glob without the seed suffix used to start nothing, silently."""
    with pytest.raises(
        SweepError, match=r"--only 'nav/caml' matches no run .*its runs: nav/caml_seed0, nav/caml_seed1, nav/maml"
    ):
        sweep(suite, only="nav/caml")
    assert sweep(suite, only="nav/caml*", dry_run=True) == {"nav/caml_seed0": "new", "nav/caml_seed1": "new"}


def test_suite_problems_fail_before_anything_starts(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    suite = tmp_path / "suite.yaml"

    def write(runs: str) -> None:
        suite.write_text(f"out_root: {tmp_path / 'results'}\nruns:\n{runs}")

    write(
        f"  - {{name: x/, config: {tmp_path / 'small.yaml'}}}\n  - {{name: ./x, config: {tmp_path / 'small.yaml'}}}\n"
    )
    with pytest.raises(ConfigError, match="names run 'x' twice"):  # one directory, two spellings
        load_suite(suite)
    write(f"  - {{name: a, config: {tmp_path / 'small.yaml'}, set: [env.name=bogus]}}\n")
    with pytest.raises(ConfigError, match="run 'a'.*bogus"):  # the env is checked, not only the keys
        load_suite(suite)
    assert not (tmp_path / "results").exists()


def test_damaged_newest_checkpoint_is_named_not_restarted(suite, tmp_path):
    root, _ = load_suite(suite)
    sweep(suite, only="nav/maml")
    (root / "nav/maml/checkpoints/iter_000002.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="iter_000002.pt' is damaged"):
        sweep(suite, only="nav/maml", dry_run=True)


def test_intervals_use_students_t():
    """With few tasks or seeds the normal quantile (1.96) makes intervals too narrow: t(2) is 4.30."""
    from caml_rl.evaluation import mean_ci95, t975

    # reference values of Student's t 0.975 quantile (table below 31 df, the series above): to 4 decimals where
    # the library's table holds the same 4-decimal values, to 5 above, where the series is within 2e-6 of the
    # exact quantile; so 2e-5 covers their rounding. Plain float64 arithmetic: no machine dependence
    for df, q in ((1, 12.7062), (2, 4.3027), (30, 2.0423), (31, 2.03951), (39, 2.02269), (60, 2.00030), (119, 1.98010)):
        assert t975(df) == pytest.approx(q, abs=2e-5)
    mean, half = mean_ci95(np.array([1.0, 2.0, 6.0]))
    # the mean of 1, 2 and 6 is exact in float64; the half-width is the same float64 formula (~1e-16 apart)
    assert mean == 3.0 and half == pytest.approx(4.3027 * np.std([1.0, 2.0, 6.0], ddof=1) / np.sqrt(3))


def test_cpu_slots_deal_the_cpus_into_disjoint_sets(monkeypatch):
    import os

    from caml_rl.sweep import cpu_slots

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 5, 7}, raising=False)
    assert cpu_slots(1) == [[2, 3, 5, 7]]
    assert cpu_slots(2) == [[2, 5], [3, 7]]
    assert cpu_slots(4) == [[2], [3], [5], [7]]
    assert cpu_slots(6) == [[2], [3], [5], [7], [2], [3]]  # more jobs than CPUs: shared round-robin


@pytest.mark.parametrize(
    "flags, modules, fragment",
    [
        (["--ray", "--jobs", "2"], {}, "--jobs 2 is for the local sweep; with --ray the cluster decides"),
        (["--slurm", "--jobs", "1"], {}, "--jobs 1 is for the local sweep; with --slurm"),
        (["--ray", "--slurm"], {}, "--ray and --slurm exclude each other"),
        (["--partition", "gpu"], {}, "--partition 'gpu' needs --slurm"),
        (["--time", "60", "--ray"], {}, "--time 60 needs --slurm"),
        (["--cpus", "2"], {}, "--cpus 2.0 needs --ray or --slurm"),
        (["--ray", "--cpus", "0"], {}, "--cpus 0.0 is out of range; allowed: > 0"),
        (["--slurm", "--time", "0"], {}, "--time 0 is out of range; allowed: >= 1"),
        (["--ray"], {"ray": None}, "--ray needs the 'ray' package; install it with: pip install 'caml-rl[ray]'"),
        (
            ["--slurm"],
            {"submitit": None},
            "--slurm needs the 'submitit' package; install it with: pip install 'caml-rl[slurm]'",
        ),
    ],
)
def test_cluster_flags_are_checked_in_one_line_before_anything_starts(
    suite, tmp_path, capsys, monkeypatch, flags, modules, fragment
):
    import sys

    for name, module in modules.items():  # the extra not installed: its import fails
        monkeypatch.setitem(sys.modules, name, module)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(suite), *flags])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"caml-rl: error: {fragment}")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "head, fragment",
    [
        ("workers: 4\n", "unknown suite key 'workers' in {path}; allowed: out_root, runs, resources, slurm"),
        ("resources: {memory: 4}\n", "unknown suite resources key 'memory' in {path}; allowed: cpus, gpus"),
        ("resources: {cpus: 0}\n", "suite {path} resources.cpus must be a number > 0; got 0"),
        ("resources: [2]\n", "suite {path} resources must be a mapping of cpus, gpus; got [2]"),
        ("slurm: {partition: 3}\n", "suite {path} slurm.partition must be a name; got 3"),
        ("slurm: {nodes: 2}\n", "unknown suite slurm key 'nodes' in {path}; allowed: partition, time, cpus, gpus"),
    ],
)
def test_bad_cluster_entries_of_a_suite_name_the_value(suite, head, fragment):
    suite.write_text(head + suite.read_text())
    with pytest.raises(ConfigError) as exc:
        load_suite(suite)
    assert fragment.format(path=repr(str(suite))) in str(exc.value)


def test_suite_resources_reach_every_run_and_progress_lines_extrapolate(tmp_path, suite):
    import time

    from caml_rl.sweep import progress_line

    suite.write_text("resources: {cpus: 2, gpus: 0.5}\nslurm: {partition: cpu, time: 90}\n" + suite.read_text())
    root, runs = load_suite(suite)
    assert all(r.resources == {"cpus": 2, "gpus": 0.5} and r.slurm == {"partition": "cpu", "time": 90} for r in runs)
    run_dir = root / "nav/maml"
    assert progress_line("nav/maml", run_dir, 10, 0, time.monotonic()).endswith(
        "nav/maml  iteration 0/10  ETA unknown (no new checkpoint yet)"
    )
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints/iter_000004.pt").write_bytes(b"")  # names are all it reads
    # 2 iterations (2 -> 4) in ~120 s: 6 left take ~6 min
    assert (
        progress_line("nav/maml", run_dir, 10, 2, time.monotonic() - 120)
        == " running  nav/maml  iteration 4/10  ETA 6 min"
    )


def test_a_dry_run_with_a_cluster_flag_needs_neither_the_extra_nor_the_cluster(suite, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "submitit", None)
    for flag in ("--ray", "--slurm"):
        main(["sweep", str(suite), flag, "--dry-run", "--only", "nav/caml*"])
        assert capsys.readouterr().out == "     new  nav/caml_seed0\n     new  nav/caml_seed1\n"


class SwallowingLauncher(Launcher):
    """An engine whose blocking wait swallows a KeyboardInterrupt raised inside it, as a Ray driver
    can; its runs would finish after 40 waits. Ctrl-C comes during the first wait."""

    def __init__(self):
        self.waits, self.cancelled = 0, []

    def submit(self, run, run_dir, status):
        return run.name

    def wait(self, handles, timeout):
        self.waits += 1
        with contextlib.suppress(KeyboardInterrupt):  # swallowed: Python runs the handler here, in the main thread
            if self.waits == 1:
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return [(h, 0) for h in handles] if self.waits >= 40 else []

    def cancel(self, handles):
        self.cancelled += handles


def test_one_ctrl_c_stops_a_sweep_even_where_the_engine_swallows_it(suite):
    launcher = SwallowingLauncher()
    earlier = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh process (the CLI's)
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep(suite, launcher=launcher)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back
    finally:
        if earlier is not None:
            signal.signal(signal.SIGINT, earlier)
    assert launcher.waits == 1  # the next turn of the loop, not the end of the runs
    assert launcher.cancelled == ["nav/caml_seed0", "nav/caml_seed1", "nav/maml"]
