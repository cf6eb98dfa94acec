"""A distribution registered from Python works from the command line (``--import MODULE``), and
``module:Class`` finds a module in the current directory even through the ``caml-rl`` script."""

from __future__ import annotations

import os
import sys
import textwrap

import caml_rl.envs as envs
import pytest

from caml_rl.cli import main

PLUGIN = textwrap.dedent(
    """
    import dataclasses

    from caml_rl import envs


    @dataclasses.dataclass
    class Shifted(envs.Navigation2D):
        name = "shifted_nav"
        horizon: int = 5


    envs.register("shifted_nav", Shifted, overwrite=True)
    """
)

SMALL = ["meta_batch_size=2", "episodes_per_task=2", "policy.hidden_sizes=[8]", "device=cpu", "iterations=1"]


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A module file in the current directory, which is not on sys.path (as under the script)."""
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.setenv("CAML_RL_IMPORT", "")
    monkeypatch.delitem(sys.modules, "my_plugin", raising=False)
    monkeypatch.setattr(envs.base, "_REGISTRY", dict(envs.base._REGISTRY))
    return tmp_path


def forget_plugin(monkeypatch):
    """What a new process knows: not the module, not the name it registered."""
    monkeypatch.delitem(sys.modules, "my_plugin", raising=False)
    envs.base._REGISTRY.pop("shifted_nav", None)
    envs.base._REGISTRY.pop("my_plugin:Shifted", None)
    monkeypatch.setenv("CAML_RL_IMPORT", "")


def test_import_option_lets_every_command_use_a_python_registered_env(plugin_dir, monkeypatch, capsys):
    sets = [x for kv in [*SMALL, "env.name=shifted_nav"] for x in ("--set", kv)]
    main(["train", *sets, "--no-eval", "--out", "run", "--import", "my_plugin"])
    assert os.environ["CAML_RL_IMPORT"] == "my_plugin"  # inherited by the runs sweep starts
    forget_plugin(monkeypatch)
    evaluate = ["evaluate", "run", "--tasks", "2", "--episodes", "1", "--steps", "0", "--out", "e.json"]
    with pytest.raises(SystemExit) as info:
        main(evaluate)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("caml-rl: error: ") and err.count("\n") == 1
    assert "unknown env 'shifted_nav'" in err and "--import MODULE" in err
    main([*evaluate, "--import", "my_plugin"])
    assert (plugin_dir / "e.json").is_file()
    forget_plugin(monkeypatch)
    monkeypatch.setenv("CAML_RL_IMPORT", "my_plugin")
    main(["train", "--resume", "run", "--iterations", "2", "--no-eval"])
    assert (plugin_dir / "run" / "checkpoints" / "iter_000002.pt").is_file()


def test_module_class_names_find_the_current_directory(plugin_dir):
    assert "" not in sys.path and os.getcwd() not in sys.path
    dist = envs.make("my_plugin:Shifted", horizon=3)
    assert dist.horizon == 3 and type(dist).__module__ == "my_plugin"


def test_import_failures_are_one_line(plugin_dir, capsys):
    (plugin_dir / "broken_plugin.py").write_text("import numpy\nraise RuntimeError('no licence file')\n")
    for module, problem in [
        ("no_such_plugin", "ModuleNotFoundError: No module named 'no_such_plugin'"),
        ("broken_plugin", "RuntimeError: no licence file"),
    ]:
        with pytest.raises(SystemExit):
            main(["envs", "--import", module])
        named = "(named by --import or $CAML_RL_IMPORT)"
        assert (
            capsys.readouterr().err == f"caml-rl: error: module {module!r} {named} could not be imported: {problem}\n"
        )
    with pytest.raises(envs.TaskDistributionError) as info:
        envs.make("broken_plugin:X")
    assert str(info.value) == "env 'broken_plugin:X' could not be imported: RuntimeError: no licence file"
