"""``caml-rl sweep --ray`` on a local Ray cluster and ``--slurm`` through submitit's local executor:
the real engines, tiny 2D-navigation runs. Marked ``ray`` / ``slurm`` (deselected by default); CI
runs them in .ci/ray and .ci/slurm after installing each extra."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from caml_rl.sweep import SweepError, load_suite, run_status, sweep

SMALL = """
meta_batch_size: 3
episodes_per_task: 2
env: {settings: {horizon: 10}}
policy: {hidden_sizes: [8]}
evaluation: {tasks: 3, episodes: 2, steps: 2}
device: cpu
torch_threads: 1
iterations: 2
"""
# Long enough that the run is still going when the Ctrl-C check below presses Ctrl-C a second or third time.
N = 400
LONG = SMALL.replace("iterations: 2", f"iterations: {N}\ncheckpoint_every: 1\ncheckpoint_keep: 2")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the runs' processes in /proc")


def write_suite(tmp_path: Path, names: list[str], extra: str = "") -> Path:
    (tmp_path / "small.yaml").write_text(SMALL)
    (tmp_path / "long.yaml").write_text(LONG)
    runs = "".join(
        f"  - {{name: nav/{n}, config: {tmp_path / ('long' if n == 'long' else 'small')}.yaml}}\n" for n in names
    )
    path = tmp_path / "suite.yaml"
    path.write_text(f"out_root: {tmp_path / 'results'}\n{extra}runs:\n{runs}")
    return path


def break_run(run_dir: Path) -> None:
    """A run that fails after its first iteration: a file stands where its checkpoints folder goes."""
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoints").write_text("not a folder")


def training_pid(run_dir: Path) -> int | None:
    """The ``caml_rl train`` process writing into ``run_dir``, if one runs."""
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            proc.name.isdigit()
            and b"caml_rl" in args
            and b"train" in args
            and any(str(run_dir).encode() in a for a in args)
        ):
            return int(proc.name)
    return None


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def wait_for(what, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def in_thread(fn, *args, **kwargs):
    """Run ``fn`` in a thread; the returned function joins it and gives its result or exception."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join():
        thread.join(600)
        assert not thread.is_alive()
        return box

    return join


def newest_checkpoint(run_dir: Path) -> int:
    from caml_rl.sweep import checkpoint_iteration

    return checkpoint_iteration(run_dir)


# ------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_sweep_fails_one_loses_a_worker_resumes_it_and_cancels_on_ctrl_c(ray_cluster, tmp_path, capsys):
    from caml_rl.launchers import RayLauncher

    suite = write_suite(tmp_path, ["ok", "bad", "long"])
    root, _ = load_suite(suite)
    break_run(root / "nav/bad")
    join = in_thread(sweep, suite, launcher=RayLauncher())
    # the long run's Ray worker dies once it has written a checkpoint (as when a node goes away)
    wait_for(lambda: newest_checkpoint(root / "nav/long") >= 1)
    pid = training_pid(root / "nav/long")
    worker = parent_of(pid)
    os.kill(worker, signal.SIGKILL)
    box = join()
    wait_for(lambda: gone(pid), 60)  # its training does not go on unwatched
    assert isinstance(box.get("error"), SweepError), box
    assert "2 run(s) failed: nav/bad, nav/long" in str(box["error"])
    out = capsys.readouterr().out
    assert "starting nav/ok: -m caml_rl train" in out and "[ray: 1 CPU]" in out
    assert "    done  nav/ok\n" in out
    # a failed run is reported with its log's last line; the others went on
    assert "failed (2)  nav/bad: caml-rl: error: cannot use" in out and "checkpoints': File exists" in out
    assert "failed (ray: " in out
    assert json.loads((root / "nav/ok/eval.json").read_text())["iteration"] == 2
    status, first = run_status(root / "nav/long", N)
    assert status == "partial" and first >= 1

    # Ctrl-C on a sweep connected to the cluster cancels its task; the checkpoints stay
    address = ray_cluster.get_runtime_context().gcs_address
    cli = subprocess.Popen(
        [sys.executable, "-m", "caml_rl", "sweep", str(suite), "--ray", address, "--only", "nav/long"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # as from a terminal: a shell's background job (CI started with &) ignores SIGINT, and its children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(lambda: newest_checkpoint(root / "nav/long") > first)
    pid = training_pid(root / "nav/long")
    # On a loaded CI machine one SIGINT twice went unseen here (not reproduced locally: 45 presses on a plain
    # Ray driver loop, idle and loaded, all seen). The sweep now remembers a Ctrl-C that an engine swallows
    # (test_sweep_report checks one press suffices there); this check still presses again as a user would.
    for _ in range(3):
        cli.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cli.wait(5)
        if cli.poll() is not None:
            break
    output = cli.communicate(timeout=120)[0]
    assert cli.returncode == 130, output
    wait_for(lambda: pid is None or gone(pid), 60)
    status, at = run_status(root / "nav/long", N)
    assert status == "partial" and at > first  # the newest checkpoint loads

    # the next sweep skips the finished run, resumes the partial one and leaves the failed one failing
    (root / "nav/bad/checkpoints").unlink()
    assert sweep(suite, launcher=RayLauncher()) == {"nav/ok": "done", "nav/bad": "done", "nav/long": "done"}
    out = capsys.readouterr().out
    assert "    done  nav/ok\n" in out and f" partial  nav/long  (checkpoint {at}/{N})" in out
    assert f"--resume {root / 'nav/long'} --iterations {N}" in out
    record = json.loads((root / "nav/long/run.json").read_text())
    assert [r["iteration"] for r in record["resumes"]] == [first, at]
    assert json.loads((root / "nav/long/eval.json").read_text())["iteration"] == N
    log = (root / "nav/long/train.log").read_text()
    assert log.count(f"iter    1/{N}") == 1 and f"iter  {N}/{N}" in log  # one log, appended across the three tries


@pytest.mark.ray
def test_ray_refuses_runs_the_cluster_cannot_hold(ray_cluster, tmp_path):
    from caml_rl.launchers import RayLauncher

    suite = write_suite(tmp_path, ["ok"], extra="resources: {cpus: 1, gpus: 1}\n")
    with pytest.raises(SweepError, match="run 'nav/ok' needs 1 GPUs; the Ray cluster has 0"):
        sweep(suite, launcher=RayLauncher())
    with pytest.raises(SweepError, match="needs 3 CPUs; the Ray cluster has 2"):
        sweep(write_suite(tmp_path, ["ok"]), launcher=RayLauncher(cpus=3))
    assert not (tmp_path / "results/nav/ok/checkpoints").exists()


# ------------------------------------------------------------------ SLURM (submitit)
@pytest.mark.slurm
def test_slurm_jobs_requeue_on_time_out_and_resume(tmp_path, capsys):
    pytest.importorskip("submitit")
    from caml_rl.launchers import SlurmLauncher

    suite = write_suite(tmp_path, ["ok", "bad", "long"], extra="slurm: {partition: debug, time: 5}\n")
    root, _ = load_suite(suite)
    break_run(root / "nav/bad")
    launcher = SlurmLauncher(tmp_path / "jobs", cluster="local")
    join = in_thread(sweep, suite, launcher=launcher)
    wait_for(lambda: newest_checkpoint(root / "nav/long") >= 1)
    pid = training_pid(root / "nav/long")
    # SLURM's warning before the time limit: USR2 to the job; submitit calls TrainJob.checkpoint,
    # which stops the training, and requeues the job, which resumes the run
    os.kill(parent_of(pid), signal.SIGUSR2)
    box = join()
    assert isinstance(box.get("error"), SweepError) and "1 run(s) failed: nav/bad" in str(box["error"]), box
    out = capsys.readouterr().out
    assert "[local: timeout_min=5, cpus_per_task=1, partition=debug, signal_delay_s=120]" in out
    assert "    done  nav/ok\n" in out and "    done  nav/long\n" in out
    assert "nav/bad: caml-rl: error: cannot use" in out
    record = json.loads((root / "nav/long/run.json").read_text())
    assert len(record["resumes"]) == 1 and record["resumes"][0]["iteration"] >= 1
    assert json.loads((root / "nav/long/eval.json").read_text())["iteration"] == N
    assert gone(pid)
    logs = "".join(p.read_text() for p in (tmp_path / "jobs").rglob("*_log.*"))
    assert "timed-out" in logs and "Requeued job" in logs  # submitit's own account of the requeue
    # the next sweep starts nothing that finished, and only the broken run is left
    (root / "nav/bad/checkpoints").unlink()
    assert sweep(suite, launcher=SlurmLauncher(tmp_path / "jobs", cluster="local", time=5)) == {
        "nav/ok": "done",
        "nav/bad": "done",
        "nav/long": "done",
    }
    out = capsys.readouterr().out
    assert "starting nav/bad" in out and "starting nav/ok" not in out and "starting nav/long" not in out


@pytest.mark.slurm
def test_slurm_ctrl_c_cancels_the_jobs_and_keeps_the_checkpoints(tmp_path):
    pytest.importorskip("submitit")
    import _thread

    from caml_rl.launchers import SlurmLauncher

    suite = write_suite(tmp_path, ["long"])
    root, _ = load_suite(suite)
    seen = {}

    def interrupt_when_training():  # Ctrl-C reaches the sweep (main thread) once the run has a checkpoint
        wait_for(lambda: newest_checkpoint(root / "nav/long") >= 1)
        seen["pid"] = training_pid(root / "nav/long")
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_training, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sweep(suite, launcher=SlurmLauncher(tmp_path / "jobs", cluster="local", time=5))
    # the job is cancelled and its training stops with it (it dies with its job process)
    wait_for(lambda: gone(seen["pid"]), 60)
    status, at = run_status(root / "nav/long", N)
    assert status == "partial" and at >= 1  # the newest checkpoint loads: the next sweep resumes it
