"""The simulator setting of the MuJoCo task distributions, without MuJoCo Warp installed or used."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import yaml
from caml_rl.envs import locomotion, mujoco_batch, mujoco_render
from caml_rl.envs.backend_factory import make_simulator
from caml_rl.envs.base import TaskDistributionError, make
from caml_rl.envs.locomotion_registry import register_all
from caml_rl.envs.simulator import Simulator

from caml_rl import Trainer
from caml_rl.cli import main
from caml_rl.config import load_config

register_all()


def test_simulator_setting_is_checked():
    assert make("halfcheetah_vel").simulator == "batch"  # the default is unchanged
    with pytest.raises(TaskDistributionError, match=r"simulator='bullet' is not known; allowed: batch, rollout, warp"):
        make("ant_goal", simulator="bullet")


def test_warp_without_the_extra_is_one_line_saying_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mujoco_warp", None)  # as if not installed
    with pytest.raises(TaskDistributionError, match=r"needs MuJoCo Warp.*pip install 'caml-rl\[warp\]'"):
        make("halfcheetah_dir", simulator="warp")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--set", "env.name=halfcheetah_vel", "--set", "env.settings.simulator=warp", "--out", "unused"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'caml-rl[warp]'" in err


@pytest.mark.parametrize("backend", ["batch", "rollout"])
def test_host_backends_implement_the_interface(backend):
    dist = make("halfcheetah_vel")
    sim = make_simulator(backend, dist.model, 3, dist.frame_skip)
    assert isinstance(sim, Simulator) and sim.backend == backend and not sim.on_device
    sim.reset(np.tile(dist.model.qpos0, (3, 1)), np.zeros((3, dist.model.nv)))
    sim.set_ctrl(np.full((3, dist.model.nu), 0.5))
    sim.step()
    assert sim.state_qpos is sim.qpos and sim.qpos.shape == (3, dist.model.nq) and np.isfinite(sim.qvel).all()
    assert sim.unstable()[0].size == 0
    sim.close()


def test_names_moved_out_of_mujoco_batch_still_import():
    assert mujoco_batch.MujocoTaskDistribution is locomotion.MujocoTaskDistribution
    assert mujoco_batch.MujocoSingleTaskEnv is mujoco_render.MujocoSingleTaskEnv
    assert mujoco_batch.check_interval is locomotion.check_interval


def test_the_run_records_the_simulator(tmp_path):
    cfg = load_config(
        None,
        [
            "env.name=halfcheetah_dir",
            "env.settings.horizon=5",
            "meta_batch_size=2",
            "episodes_per_task=2",
            "iterations=1",
            "policy.hidden_sizes=[8]",
            "device=cpu",
        ],
    )
    Trainer(cfg, tmp_path / "run").train(evaluate_at_end=False, quiet=True)
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["env"]["settings"]["simulator"] == "batch"
    assert '"simulator": "batch"' in (tmp_path / "run" / "run.json").read_text()


def test_rollout_cannot_observe_the_torso_position():
    with pytest.raises(TaskDistributionError, match="observe_torso_com needs simulator batch"):
        make("ant_dir", observe_torso_com=True).make_vec_env(2, torch.device("cpu"), backend="rollout")
