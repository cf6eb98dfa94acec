"""The worked example of docs/algorithms/index.md ("Adding an algorithm"), beyond what its run blocks
show (tests/test_docs.py runs those): the plug-in resumes bit for bit from its checkpointed Adam state,
its benchmark hooks answer, and the command line reaches it through --import."""

import sys

import torch
from test_docs import docs_block

from caml_rl import Trainer, load_config, load_run
from caml_rl.cli import main

PAGE = "algorithms/index.md"


def _register(tmp_path, monkeypatch):
    """The example saved as my_algorithm.py (as the page says) and importable from tmp_path."""
    (tmp_path / "my_algorithm.py").write_text(docs_block(PAGE, "class MultitaskPG"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_algorithm", raising=False)
    monkeypatch.setenv("CAML_RL_IMPORT", "")  # --import exports the module here for sweeps: undone after the test
    monkeypatch.chdir(tmp_path)


def _config(iterations):
    return load_config(
        None,
        [
            "algorithm=multitask_pg",
            "env.name=navigation2d",
            "env.settings.horizon=10",
            "meta_batch_size=2",
            "episodes_per_task=2",
            f"iterations={iterations}",
            "checkpoint_every=2",
            "device=cpu",
            "policy.hidden_sizes=[8]",
            "evaluation.tasks=2",
            "evaluation.episodes=2",
            "evaluation.steps=1",
        ],
    )


def test_plugin_resumes_bit_for_bit_and_benchmarks(tmp_path, monkeypatch):
    _register(tmp_path, monkeypatch)
    import my_algorithm  # noqa: F401 (registers multitask_pg)

    Trainer(_config(4), "straight").train(evaluate_at_end=False, quiet=True)
    Trainer(_config(2), "resumed").train(evaluate_at_end=False, quiet=True)
    Trainer.resume("resumed", iterations=4).train(evaluate_at_end=False, quiet=True)
    a, b = load_run("straight").policy.state_dict(), load_run("resumed").policy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    trainer = Trainer(_config(1), "bench")
    trainer.algorithm.open()
    try:
        tasks = trainer.distribution.sample_tasks(trainer.streams.tasks, 2)
        assert trainer.algorithm.sample_once(tasks) > 0
        assert trainer.algorithm.fwdbwd_seconds(tasks, repeats=2) > 0
    finally:
        trainer.algorithm.close()


def test_plugin_through_the_command_line(tmp_path, monkeypatch, capsys):
    _register(tmp_path, monkeypatch)
    main(["train", "--import", "my_algorithm", "--out", "runs/multitask", "--set", "algorithm=multitask_pg",
          "--set", "env.settings.horizon=10", "--set", "meta_batch_size=2", "--set", "episodes_per_task=2",
          "--set", "iterations=1", "--set", "device=cpu", "--set", "evaluation.tasks=2",
          "--set", "evaluation.episodes=2", "--set", "evaluation.steps=1"])  # fmt: skip
    main(["evaluate", "runs/multitask", "--import", "my_algorithm", "--tasks", "2", "--episodes", "2",
          "--seed", "1", "--out", "runs/multitask/eval_seed1.json"])  # fmt: skip
    main(["report", "runs/multitask", "--out", "results"])  # eval.json only: no --import
    assert "multitask_pg" in (tmp_path / "results" / "results.md").read_text()


def test_plugin_config_section(tmp_path, monkeypatch):
    """plugins.<name> is the plug-in's typed section: defaults when absent, types and limits checked in
    one line, recorded in config.yaml and read back on resume; an unregistered section is refused."""
    import pytest

    from caml_rl.config import ConfigError

    with pytest.raises(ConfigError, match=r"^unknown config section plugins.multitask_pg; registered plug-in"):
        load_config(None, ["plugins.multitask_pg.lr=0.5"])  # before its module is imported
    _register(tmp_path, monkeypatch)
    import my_algorithm

    assert _config(1).plugins["multitask_pg"] == my_algorithm.MultitaskPGConfig()  # the defaults
    assert load_config(None, ["plugins.multitask_pg.lr=0.5"]).plugins["multitask_pg"].lr == 0.5
    with pytest.raises(ConfigError, match=r"^config key plugins.multitask_pg.lr=0.0 is out of range; allowed: > 0$"):
        load_config(None, ["algorithm=multitask_pg", "plugins.multitask_pg.lr=0"])
    with pytest.raises(ConfigError, match=r"^config key plugins.multitask_pg.lr='fast' has the wrong type"):
        load_config(None, ["plugins.multitask_pg.lr=fast"])
    with pytest.raises(ConfigError, match=r"^unknown config key plugins.multitask_pg.gamma; allowed in this"):
        load_config(None, ["plugins.multitask_pg.gamma=0.5"])

    config = _config(2)
    config.plugins["multitask_pg"].lr = 0.5
    trainer = Trainer(config, "run")
    assert trainer.algorithm.adam.param_groups[0]["lr"] == 0.5
    trainer.train(evaluate_at_end=False, quiet=True)
    assert "plugins:\n  multitask_pg:\n    lr: 0.5\n" in (tmp_path / "run" / "config.yaml").read_text()
    resumed = Trainer.resume("run", iterations=3)
    assert resumed.config.plugins["multitask_pg"] == my_algorithm.MultitaskPGConfig(lr=0.5)
