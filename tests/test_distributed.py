"""Two gloo workers on CPU take the same TRPO (and PPO) steps as one process; a dead worker stops the run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from caml_rl.checkpoint import latest_checkpoint, load_checkpoint
from caml_rl.distributed import Workers

# cg_damping 0.1: with the reference 1e-5 the tiny test problem's Fisher matrix is so badly
# conditioned that conjugate gradient amplifies float rounding (summation order differs between
# one and two workers) into visibly different steps; the maths is the same either way.
SMALL = [
    "--set",
    "meta_batch_size=4",
    "--set",
    "episodes_per_task=3",
    "--set",
    "env.settings.horizon=15",
    "--set",
    "policy.hidden_sizes=[16,16]",
    "--set",
    "trpo.cg_damping=0.1",
    "--set",
    "torch_threads=1",
    "--device",
    "cpu",
    "--no-eval",
]


def torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "caml_rl",
        *args,
    ]


def weights(run: Path) -> dict:
    return load_checkpoint(latest_checkpoint(run))["policy"]


PPO = ["--set", "optimizer=ppo", "--set", "ppo.epochs=2", "--set", "ppo.kl_target=0.01"]


@pytest.mark.parametrize("outer", [[], PPO], ids=["trpo", "ppo"])
def test_two_workers_take_the_same_steps_as_one(tmp_path, outer):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [sys.executable, "-m", "caml_rl", "train", *SMALL, *outer, "--iterations", "3", "--out", str(one)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    proc = subprocess.run(
        torchrun("train", *SMALL, *outer, "--iterations", "2", "--out", str(two)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(2 workers)" in proc.stdout and proc.stdout.count("iter    1/2") == 1  # only rank 0 prints
    proc = subprocess.run(
        torchrun("train", "--resume", str(two), "--iterations", "3"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = weights(one), weights(two)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4)
    assert load_checkpoint(latest_checkpoint(two))["iteration"] == 3


def _worker_pids(marker: str) -> dict[int, int]:
    """rank -> pid of the torchrun workers whose command line contains ``marker``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmd and "torch.distributed.run" not in cmd:
            ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
            if ranks:
                found[int(ranks[0])] = int(proc.name)
    return found


def test_a_dead_worker_stops_the_run_and_keeps_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        torchrun("train", *SMALL, "--iterations", "100000", "--set", "checkpoint_every=1", "--out", str(run)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CAML_RL_DIST_TIMEOUT": "30"},
    )
    try:
        deadline = time.time() + 120
        while not list((run / "checkpoints").glob("iter_*.pt")) and time.time() < deadline:
            time.sleep(0.2)
        pids = _worker_pids(str(run))
        assert 1 in pids, pids
        os.kill(pids[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=90)  # must not hang
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    payload = load_checkpoint(latest_checkpoint(run))  # the newest checkpoint is whole
    assert payload["iteration"] >= 1


def test_a_failed_collective_is_a_lost_worker():
    from caml_rl.distributed import WorkerLostError, Workers

    def reset_by_peer():
        raise RuntimeError("[gloo] Read error: Connection reset by peer")

    with pytest.raises(WorkerLostError, match="rank 1: all_reduce failed .*Connection reset by peer") as info:
        Workers(rank=1, world_size=2)._collective("all_reduce", reset_by_peer)
    assert isinstance(info.value.__cause__, RuntimeError)


class _TwoWorkers(Workers):
    """Two workers as far as the trainer can tell, without a process group."""

    def any(self, flag: bool) -> bool:
        return flag


def test_only_a_lost_worker_is_reported_as_one(tmp_path, monkeypatch):
    from caml_rl.config import load_config
    from caml_rl.distributed import DistributedError, WorkerLostError
    from caml_rl.trainer import Trainer

    config = load_config(None, ["meta_batch_size=2", "episodes_per_task=2", "env.settings.horizon=5", "device=cpu"])
    trainer = Trainer(config, tmp_path / "run")
    trainer.workers = _TwoWorkers(rank=0, world_size=2)

    def out_of_memory():
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(trainer, "iterate", out_of_memory)
    with pytest.raises(RuntimeError, match="CUDA out of memory") as info:
        trainer.train(quiet=True)
    assert not isinstance(info.value, DistributedError)  # this worker's own error, as itself

    def lost():
        raise WorkerLostError("rank 0: all_reduce failed (Connection reset by peer)")

    monkeypatch.setattr(trainer, "iterate", lost)
    with pytest.raises(DistributedError, match="rank 0 lost the other workers at iteration 1 .*intact"):
        trainer.train(quiet=True)
    assert not (tmp_path / "run").exists()  # nothing written
