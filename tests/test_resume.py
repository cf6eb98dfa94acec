import csv
from pathlib import Path

import pytest
import torch

from caml_rl import Config, Trainer, load_run
from caml_rl.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from caml_rl.config import load_config
from caml_rl.run_directory import RunDirectory

SMALL = [
    "meta_batch_size=4",
    "episodes_per_task=3",
    "env.settings.horizon=15",
    "policy.hidden_sizes=[16, 16]",
    "checkpoint_every=2",
    "device=cpu",
    "evaluation.tasks=3",
    "evaluation.episodes=2",
    "evaluation.steps=1",
]


def small_config(*extra: str) -> Config:
    return load_config(None, SMALL + list(extra))


@pytest.mark.parametrize("partition", ["context", "all"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, partition):
    extra = [f"adaptation.partition={partition}", "iterations=4"]
    full = Trainer(small_config(*extra), tmp_path / "full")
    full.train(evaluate_at_end=False, quiet=True)

    part = Trainer(small_config(*extra[:1], "iterations=2"), tmp_path / "part")
    part.train(evaluate_at_end=False, quiet=True)
    resumed = Trainer.resume(tmp_path / "part", iterations=4)
    assert resumed.iteration == 2
    resumed.train(evaluate_at_end=False, quiet=True)

    # exact: both runs in this process, at the same thread count, run the same operations on the same numbers
    # (on another machine both differ from these, alike)
    for (name, a), b in zip(full.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), name
    rows = lambda d: list(csv.DictReader(open(d / "progress.csv")))  # noqa: E731
    full_rows, resumed_rows = rows(tmp_path / "full"), rows(tmp_path / "part")
    assert [r["iteration"] for r in resumed_rows] == ["1", "2", "3", "4"]
    key = "return/after_adaptation"
    assert [r[key] for r in full_rows] == [r[key] for r in resumed_rows]


def test_checkpoint_roundtrip_with_weights_only(tmp_path):
    trainer = Trainer(small_config("iterations=1"), tmp_path / "run")
    result = trainer.train(quiet=True)
    path = latest_checkpoint(tmp_path / "run")
    payload = torch.load(path, weights_only=True)
    assert payload["iteration"] == 1
    run = load_run(tmp_path / "run")
    for a, b in zip(trainer.policy.state_dict().values(), run.policy.state_dict().values()):
        assert torch.equal(a, b)  # exact: saved and loaded, not recomputed
    assert (tmp_path / "run" / "eval.json").is_file() and len(result.returns) == 2
    # the run record names every setting and library version
    import json

    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["env_settings"]["goal_low"] == -0.5 and "torch" in record["versions"]
    import importlib.util

    if importlib.util.find_spec("mujoco_warp") is not None:  # optional extras are recorded when installed
        assert "mujoco_warp" in record["versions"] and "warp_lang" in record["versions"]


def test_damaged_checkpoints_are_reported_by_name(tmp_path):
    trainer = Trainer(small_config("iterations=2"), tmp_path / "run")
    trainer.train(evaluate_at_end=False, quiet=True)
    path = latest_checkpoint(tmp_path / "run")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="iter_000002.pt.*damaged"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged"):
        Trainer.resume(tmp_path / "run")
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="lacks .*not a caml-rl checkpoint"):
        load_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_checkpoint_keep_prunes_old_checkpoints_but_keeps_final_and_evaluated_ones(tmp_path):
    """keep=1 leaves the newest (resume needs it), the final one and any an eval*.json names."""
    names = lambda run: sorted(p.name for p in (run / "checkpoints").iterdir())  # noqa: E731
    every, kept = tmp_path / "every", tmp_path / "kept"
    Trainer(small_config("iterations=4", "checkpoint_every=1"), every).train(evaluate_at_end=False, quiet=True)
    assert names(every) == [f"iter_00000{i}.pt" for i in range(1, 5)]  # the default 0 keeps every one
    Trainer(small_config("iterations=3", "checkpoint_every=1", "checkpoint_keep=1"), kept).train(
        evaluate_at_end=False, quiet=True
    )
    assert names(kept) == ["iter_000003.pt"]
    resumed = Trainer.resume(kept, iterations=5)  # from the newest kept one
    assert resumed.iteration == 3
    resumed.train(evaluate_at_end=False, quiet=True)
    assert names(kept) == ["iter_000005.pt"]

    files = RunDirectory(every)
    (every / "eval_iter2.json").write_text("{damaged")  # it might name a checkpoint: nothing is deleted
    assert files.prune_checkpoints(1, 4) == [] and len(names(every)) == 4
    (every / "eval_iter2.json").write_text('{"iteration": 2}')
    assert [p.name for p in files.prune_checkpoints(1, 4)] == ["iter_000001.pt", "iter_000003.pt"]
    assert names(every) == ["iter_000002.pt", "iter_000004.pt"]


# ------------------------------------------------------------------ resuming on another device
def _with_action_stream(run, state: torch.Tensor, device: str | None) -> None:
    """Rewrite the run's newest checkpoint as if its action stream had been saved as ``state`` on ``device``
    (None: a checkpoint from before the device was recorded)."""
    path = latest_checkpoint(run)
    payload = load_checkpoint(path)
    payload["rng"]["actions"] = state
    payload["rng"].pop("actions_device", None)
    if device is not None:
        payload["rng"]["actions_device"] = device
    save_checkpoint(path, payload)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "inferred from its size"])
def test_a_cuda_action_stream_on_a_machine_without_cuda_is_one_line_not_damage(tmp_path, recorded):
    """A run trained with device=auto on a GPU, resumed on a CPU machine: its CUDA (Philox) stream cannot be
    restored there, which is said in one line; before, the state was fed to a CPU generator and the
    checkpoint called damaged."""
    Trainer(small_config("iterations=2", "device=auto"), tmp_path / "run").train(evaluate_at_end=False, quiet=True)
    philox = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)  # seed 7, offset 4
    _with_action_stream(tmp_path / "run", philox, "cuda" if recorded else None)
    with pytest.raises(CheckpointError) as info:
        Trainer.resume(tmp_path / "run", iterations=3)
    message = str(info.value)
    assert "\n" not in message and "damaged" not in message
    assert "iter_000002.pt" in message and "action stream was saved on a cuda device" in message
    assert "resume it on a machine with cuda" in message


def test_the_action_stream_is_restored_on_the_device_that_saved_it(tmp_path):
    """The restore itself, on the CPU: a CPU state (recorded or told by its size) goes into the run's CPU
    generator and continues its draws exactly; a state of neither size is still reported as damage."""
    from caml_rl.seeding import restore_generator

    saved = torch.Generator().manual_seed(3)
    torch.randn(5, generator=saved)
    state, expected = saved.get_state(), torch.randn(4, generator=saved)
    for device in ("cpu", None):
        current = torch.Generator()
        gen = restore_generator(state, device, current)
        assert gen is current and torch.equal(torch.randn(4, generator=gen), expected)

    Trainer(small_config("iterations=2"), tmp_path / "run").train(evaluate_at_end=False, quiet=True)
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["rng"]["actions_device"] == "cpu"
    _with_action_stream(tmp_path / "run", torch.zeros(7, dtype=torch.uint8), None)
    with pytest.raises(CheckpointError, match="damaged random-stream state .*neither a CPU nor a CUDA one"):
        Trainer.resume(tmp_path / "run", iterations=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cpu_run_continues_on_a_gpu_with_its_cpu_action_stream(tmp_path, monkeypatch):
    """device=auto trained where no GPU was visible, resumed where one is: the policy moves to the GPU, the
    action stream stays the CPU generator that was saved (its noise copied over), and later checkpoints
    keep it there."""
    with monkeypatch.context() as hidden:
        hidden.setattr(torch.cuda, "is_available", lambda: False)
        trainer = Trainer(small_config("iterations=2", "device=auto"), tmp_path / "run")
        trainer.train(evaluate_at_end=False, quiet=True)
        assert trainer.device.type == "cpu"
    resumed = Trainer.resume(tmp_path / "run", iterations=3)
    assert resumed.device.type == "cuda" and resumed.streams.actions.device.type == "cpu"
    resumed.train(evaluate_at_end=False, quiet=True)
    assert all(p.is_cuda for p in resumed.policy.parameters())
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["rng"]["actions_device"] == "cpu"


# ------------------------------------------------------------------ durable, atomic run files
def test_checkpoint_writes_sync_the_folder_after_the_rename(tmp_path, monkeypatch):
    """The file is synced before the rename and its folder after it, so the new directory entry survives
    a crash (without the folder's sync the rename may not be on disk yet)."""
    import os
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", "folder" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name, None))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "checkpoints" / "iter_000001.pt"
    save_checkpoint(path, {"iteration": 1})
    assert [e[:2] for e in events] == [("fsync", "file"), ("replace", "iter_000001.pt"), ("fsync", "folder")]
    assert events[-1][2] == path.parent.stat().st_ino and torch.load(path)["iteration"] == 1


def test_a_resume_that_dies_while_rewriting_progress_keeps_the_old_file(tmp_path, monkeypatch):
    """A resume rewrites progress.csv with the rows up to its checkpoint: through a temporary file renamed
    over it, so a failure while writing (a full disk) leaves the old file whole; before, it was truncated
    first. Done, the kept rows are followed by the new ones."""
    import csv as csv_module

    from caml_rl.logging import make_logger

    run = tmp_path / "run"
    run.mkdir()
    old = "iteration,return/after_adaptation,trpo/backtracks\n" + "".join(f"{i},{-i}.5,{i}\n" for i in (1, 2, 3, 4))
    (run / "progress.csv").write_text(old)

    def disk_full(self, rows):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as failing:
        failing.setattr(csv_module.DictWriter, "writerows", disk_full)
        with pytest.raises(OSError, match="No space left"):
            make_logger(run, keep_until=2)
    assert (run / "progress.csv").read_text() == old
    assert [p.name for p in run.iterdir()] == ["progress.csv"]  # no temporary file left behind

    logger = make_logger(run, keep_until=2)
    logger.record("iteration", 3)
    logger.record("return/after_adaptation", -9.0)
    logger.record("trpo/line_search_evaluations", 7)
    logger.dump(step=3)
    logger.close()
    rows = list(csv.DictReader(open(run / "progress.csv")))
    assert [r["iteration"] for r in rows] == ["1", "2", "3"]
    assert [r["trpo/line_search_evaluations"] for r in rows] == ["1", "2", "7"]  # the old column name renamed
    assert rows[-1]["return/after_adaptation"] == "-9.0"
