import csv

import pytest
import torch

from caml_rl import Config, Trainer, load_run
from caml_rl.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
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
        assert torch.equal(a, b)
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
