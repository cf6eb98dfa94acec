"""MuJoCo locomotion task distributions: contract, exactness against gymnasium, failure messages.

Where two simulations are compared bit for bit, both run the same floating-point operations on the same
inputs (the same libmujoco mj_step, and observations, velocities and rewards by the same IEEE-rounded
arithmetic), so they agree on every machine, although a rollout itself is chaotic and its numbers are
not the same from machine to machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch
from caml_rl.envs import mujoco_batch
from caml_rl.envs.ant import AntDir, AntGoal, AntVel
from caml_rl.envs.base import TaskDistributionError, make
from caml_rl.envs.half_cheetah import HalfCheetahDir, HalfCheetahDynamics, HalfCheetahVel
from caml_rl.envs.locomotion_registry import LOCOMOTION, register_all

register_all()

CPU = torch.device("cpu")
needs_batch = pytest.mark.skipif(
    not mujoco_batch._has_batch(), reason="mujoco < 4.0 has no mujoco.batch (the rollout fallback is not bit-exact)"
)


def _actions(rng: np.random.Generator, steps: int, n: int, dim: int) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=(steps, n, dim)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(LOCOMOTION))
def test_contract_shapes_and_dtypes(name):
    dist = make(name)
    obs_dim, act_dim = dist.observation_space.shape[0], dist.action_space.shape[0]
    assert obs_dim == (17 if name.startswith("halfcheetah") else 27)
    rng = np.random.default_rng(0)
    tasks = dist.sample_tasks(rng, 3)
    assert tasks.shape == (3, len(dist.task_names)) and tasks.dtype == np.float64
    env = dist.make_vec_env(6, CPU)
    obs = env.reset(np.repeat(tasks, 2, axis=0), rng)
    assert obs.shape == (6, obs_dim) and obs.dtype == torch.float32
    for _ in range(3):
        obs, reward, terminated = env.step(torch.zeros(6, act_dim))
        assert obs.shape == (6, obs_dim) and obs.dtype == torch.float32 and obs.device == CPU
        assert reward.shape == (6,) and reward.dtype == torch.float32 and torch.isfinite(reward).all()
        assert terminated.shape == (6,) and terminated.dtype == torch.bool
    with pytest.raises(TaskDistributionError, match="actions of shape"):
        env.step(torch.zeros(5, act_dim))
    env.close()


def _gym_envs(gym_id: str, qpos: np.ndarray, qvel: np.ndarray, **kwargs) -> list[gym.Env]:
    envs = []
    for i in range(len(qpos)):
        env = gym.make(gym_id, **kwargs)
        env.reset(seed=i)
        env.unwrapped.set_state(qpos[i].copy(), qvel[i].copy())
        envs.append(env)
    return envs


@needs_batch
def test_halfcheetah_matches_gymnasium_bit_for_bit():
    n, steps = 3, 20
    dist = HalfCheetahVel()
    env = dist.make_vec_env(n, CPU)
    tasks = np.array([[0.5], [1.0], [2.0]])
    obs = env.reset(tasks, np.random.default_rng(1)).numpy()
    gyms = _gym_envs("HalfCheetah-v5", env.sim.qpos.copy(), env.sim.qvel.copy())
    for i, g in enumerate(gyms):
        assert np.array_equal(obs[i], g.unwrapped._get_obs().astype(np.float32))  # exact: see the module doc
    for a in _actions(np.random.default_rng(2), steps, n, 6):
        obs, reward, _ = env.step(torch.from_numpy(a))
        for i, g in enumerate(gyms):
            g_obs, _, g_term, _, info = g.step(a[i])
            assert np.array_equal(env.sim.qpos[i], g.unwrapped.data.qpos)  # float64 state, exact
            assert np.array_equal(env.sim.qvel[i], g.unwrapped.data.qvel)
            assert np.array_equal(obs[i].numpy(), g_obs.astype(np.float32))
            assert env.info["velocity"][i, 0] == info["x_velocity"]  # the same float64 subtraction and division
            expected = -abs(info["x_velocity"] - tasks[i, 0]) - 0.05 * np.sum(np.square(a[i].astype(np.float64)))
            # the env's float64 reward rounded to float32 (6e-8 relative); abs for rewards near 0
            assert reward[i].item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
            assert not g_term
    env.close()


@needs_batch
def test_peer_action_scale_and_torso_com():
    """pytorch-maml-rl's HalfCheetah: actions divided by 10 before the clip; torso xpos appended."""
    n = 2
    dist = HalfCheetahDir(action_scale=10.0, observe_torso_com=True)
    assert dist.observation_space.shape == (20,)
    assert dist.action_space.low.min() == -10.0 and dist.action_space.high.max() == 10.0
    env = dist.make_vec_env(n, CPU)
    tasks = np.array([[1.0], [-1.0]])
    obs = env.reset(tasks, np.random.default_rng(5))
    gyms = _gym_envs("HalfCheetah-v5", env.sim.qpos.copy(), env.sim.qvel.copy())
    for i, g in enumerate(gyms):
        assert np.allclose(obs[i, 17:].numpy(), g.unwrapped.data.body("torso").xpos)  # float32 vs float64: 6e-8
    for a in _actions(np.random.default_rng(6), 10, n, 6) * 15.0:  # some components beyond the scale
        obs, reward, _ = env.step(torch.from_numpy(a))
        for i, g in enumerate(gyms):
            applied = np.clip(a[i].astype(np.float64) / 10.0, -1.0, 1.0)
            _, _, _, _, info = g.step(applied)
            assert np.array_equal(env.sim.qpos[i], g.unwrapped.data.qpos)
            assert np.array_equal(obs[i, :17].numpy(), g.unwrapped._get_obs().astype(np.float32))
            assert np.array_equal(obs[i, 17:].numpy(), g.unwrapped.data.body("torso").xpos.astype(np.float32))
            expected = tasks[i, 0] * info["x_velocity"] - 0.05 * np.sum(np.square(applied))
            assert reward[i].item() == pytest.approx(expected, rel=1e-6, abs=1e-6)  # float32 of a float64 reward
    env.close()


def test_single_env_reset_matches_gymnasium_seeding():
    ours = gym.make("caml/HalfCheetahDir-v0", task=[1.0])
    theirs = gym.make("HalfCheetah-v5")
    o1, info = ours.reset(seed=7)
    o2, _ = theirs.reset(seed=7)
    assert info["task"].tolist() == [1.0]
    assert np.array_equal(o1, o2.astype(np.float32))  # exact: the same seeded draws and mj_step (module doc)
    a = np.full(6, 0.3, dtype=np.float32)
    o1, r1, *_ = ours.step(a)
    o2, r2, *_ = theirs.step(a)  # HalfCheetahDir with direction +1 is HalfCheetah-v5 with ctrl cost 0.05
    assert np.array_equal(o1, o2.astype(np.float32))
    ours.close()
    theirs.close()


@needs_batch
def test_ant_matches_gymnasium_bit_for_bit():
    n, steps = 2, 12
    dist = AntVel()
    env = dist.make_vec_env(n, CPU)
    tasks = np.array([[1.0], [2.0]])
    env.reset(tasks, np.random.default_rng(3))
    gyms = _gym_envs(
        "Ant-v5",
        env.sim.qpos.copy(),
        env.sim.qvel.copy(),
        include_cfrc_ext_in_observation=False,
        contact_cost_weight=0.0,
    )
    for a in _actions(np.random.default_rng(4), steps, n, 8) * 0.3:
        obs, reward, terminated = env.step(torch.from_numpy(a))
        for i, g in enumerate(gyms):
            g_obs, g_rew, g_term, _, info = g.step(a[i])
            assert np.array_equal(obs[i].numpy(), g_obs.astype(np.float32))
            assert env.info["velocity"][i, 0] == info["x_velocity"]
            assert env.info["velocity"][i, 1] == info["y_velocity"]
            assert bool(terminated[i]) == g_term
            expected = -abs(info["x_velocity"] - tasks[i, 0]) + info["reward_survive"] + info["reward_ctrl"]
            assert reward[i].item() == pytest.approx(expected, rel=1e-6, abs=1e-6)  # float32 of a float64 reward
    env.close()


def test_tasks_give_different_rewards_for_the_same_trajectory():
    for dist, tasks in [
        (HalfCheetahVel(reset_noise_scale=0.0), [[0.0], [2.0]]),
        (HalfCheetahDir(reset_noise_scale=0.0), [[-1.0], [1.0]]),
        (AntGoal(reset_noise_scale=0.0), [[3.0, 0.0], [-3.0, 0.0]]),
    ]:
        env = dist.make_vec_env(2, CPU)
        env.reset(np.array(tasks), np.random.default_rng(0))
        act = torch.from_numpy(_actions(np.random.default_rng(5), 5, 1, dist.action_space.shape[0]))
        for a in act:
            obs, reward, _ = env.step(a.expand(2, -1))
            assert torch.equal(obs[0], obs[1])  # same physics (exact: the same operations on the same state)...
        assert reward[0] != reward[1]  # ...different reward (by O(1): the tasks are far apart)
        env.close()


@needs_batch
def test_dynamics_tasks_change_the_physics():
    dist = HalfCheetahDynamics(reset_noise_scale=0.0)
    env = dist.make_vec_env(3, CPU)
    tasks = np.array([[1.0, 1.0], [2.0, 1.0], [1.0, 2.0]])
    plain = HalfCheetahDir(reset_noise_scale=0.0).make_vec_env(1, CPU)
    acts = _actions(np.random.default_rng(6), 10, 1, 6)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        env.reset(tasks, np.random.default_rng(0))
        plain.reset(np.array([[1.0]]), np.random.default_rng(0))
        for a in acts:
            obs, reward, _ = env.step(torch.from_numpy(a).expand(3, -1))
            p_obs, p_rew, _ = plain.step(torch.from_numpy(a))
        return obs, p_obs

    obs, p_obs = run()
    # exact: scale 1 multiplies the model's fields by 1.0, so the same operations run on the same numbers
    assert torch.equal(obs[0], p_obs[0])  # scale 1 is the unchanged model
    assert not torch.allclose(obs[0], obs[1])  # heavier (a difference of the physics, not of rounding)
    assert not torch.equal(obs[0], obs[2])  # more damping
    masses = env.sim._batch.expanded("body_mass")
    assert np.allclose(masses[1], 2.0 * masses[0])  # scaling by 2 and 0.5 is exact in binary; allclose is ample
    obs2, _ = run()  # scales apply to the original model, not on top of the last ones
    assert torch.equal(obs, obs2)  # exact: the same rollout twice in one process
    tasks[1] = [0.5, 1.0]
    env.reset(tasks, np.random.default_rng(0))
    assert np.allclose(env.sim._batch.expanded("body_mass")[1], 0.5 * masses[0])
    env.close()


@pytest.mark.parametrize("backend", [pytest.param("batch", marks=needs_batch), "rollout"])
def test_unstable_sim_raises_naming_sim_and_task(backend):
    dist = HalfCheetahVel()
    env = dist.make_vec_env(4, CPU, backend=backend)
    env.reset(np.array([[0.5], [0.5], [1.5], [1.5]]), np.random.default_rng(0))
    env.step(torch.zeros(4, 6))
    env.sim.qvel[3, 2] = 1e30
    with pytest.raises(
        TaskDistributionError,
        match=r"HalfCheetahVel sim 3 \(task row 1: goal_velocity=1.5\) "
        r"became unstable at step 2: .*",
    ):
        env.step(torch.zeros(4, 6))
    env.reset(np.array([[0.5], [0.5], [1.5], [1.5]]), np.random.default_rng(0))
    bad = torch.zeros(4, 6)
    bad[1, 0] = float("nan")
    with pytest.raises(TaskDistributionError, match=r"sim 1 \(task row 0: .*non-finite action at step 1"):
        env.step(bad)
    env.close()


@needs_batch
def test_rollout_fallback_warns_and_stays_close_to_batch(monkeypatch):
    monkeypatch.setattr(mujoco_batch, "_has_batch", lambda: False)  # as on mujoco 3.3
    with pytest.warns(RuntimeWarning, match="no mujoco.batch: stepping with mujoco.rollout"):
        fallback = AntDir().make_vec_env(2, CPU)
    assert fallback.sim.backend == "rollout"
    fallback.close()
    monkeypatch.undo()
    outs = []
    for backend in ("batch", "rollout"):
        dist = AntDir()
        env = dist.make_vec_env(2, CPU, backend=backend)
        env.reset(np.array([[1.0], [-1.0]]), np.random.default_rng(0))
        for a in _actions(np.random.default_rng(1), 8, 2, 8) * 0.3:
            obs, reward, terminated = env.step(torch.from_numpy(a))
        outs.append((obs, reward, env.info["velocity"]))
        env.close()
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)  # state: only the solver warm-start differs
    # Ant-v5 measures velocity on xpos from RK4's last stage, which rollout cannot see: close, not equal.
    # How close depends on the trajectory, not on rounding: over 30 action sequences the last step's velocity
    # differed by 0.004 (median) to 0.05 (this one: 0.017), and a 1e-13 change of the start moves it by 1e-11.
    # 0.06 holds for any of them; a wrong velocity (a wrong body or dt) is off by O(0.5), its magnitude here.
    assert torch.allclose(outs[0][1], outs[1][1], atol=0.06)
    assert np.allclose(outs[0][2], outs[1][2], atol=0.06)


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        (
            "halfcheetah_vel",
            {"velocity_low": 3.0, "velocity_high": 1.0},
            "need velocity_low <= velocity_high",
        ),
        ("halfcheetah_vel", {"frame_skip": 0}, r"frame_skip=0 must be an integer in \[1, 1000\]"),
        (
            "halfcheetah_dynamics",
            {"mass_scale_low": 0.0},
            r"mass_scale_low=0.0 must be a number in \(0.0, 100.0\]",
        ),
        ("ant_goal", {"goal_norm": 3}, "goal_norm=3 must be 1 or 2"),
        ("ant_vel", {"ctrl_cost_weight": -1.0}, r"ctrl_cost_weight=-1.0 must be a number in \[0.0, inf\)"),
        ("ant_dir", {"healthy_z_low": 1.5}, "need healthy_z_low <= healthy_z_high"),
        ("halfcheetah_dir", {"action_scale": 0.0}, r"action_scale=0.0 must be a number in \(0.0, 1000000.0\]"),
        ("halfcheetah_vel", {"observe_torso_com": 1}, "observe_torso_com=1 must be true or false"),
        (
            "ant_dir",
            {"terminate_when_unhealthy": "yes"},
            "terminate_when_unhealthy='yes' must be true or false",
        ),
    ],
)
def test_settings_validation(name, settings, message):
    with pytest.raises(TaskDistributionError, match=message) as info:
        make(name, **settings)
    assert "\n" not in str(info.value)


def test_gym_make_single_env():
    env = gym.make("caml/AntGoal-v0", task=[1.0, -1.0], horizon=5)
    obs, info = env.reset(seed=0)
    assert obs.shape == (27,) and obs.dtype == np.float32 and info["task"].tolist() == [1.0, -1.0]
    for _ in range(5):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert isinstance(reward, float)
    assert truncated or terminated
    env.close()


_RENDER_SCRIPT = textwrap.dedent(
    """
    import json, gymnasium as gym, numpy as np
    from caml_rl.envs.locomotion_registry import register_all
    register_all()
    out = {}
    for gym_id in ("caml/HalfCheetahVel-v0", "caml/AntGoal-v0"):
        env = gym.make(gym_id, render_mode="rgb_array")
        env.reset(seed=0)
        env.step(env.action_space.sample())
        frame = env.render()
        out[gym_id] = [list(frame.shape), str(frame.dtype), float(frame.std())]
        env.close()
    print("RESULT" + json.dumps(out))
    """
)


def test_render_rgb_array_frame():
    failures = []
    for backend in ("egl", "osmesa"):
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        proc = subprocess.run(
            [sys.executable, "-c", _RENDER_SCRIPT], env=env, capture_output=True, text=True, timeout=120
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
        if proc.returncode == 0 and line:
            for shape, dtype, std in json.loads(line[0][6:]).values():
                # std > 1 of 0-255 pixel values: a rendered scene, not a blank frame, whatever the GL driver
                assert shape == [240, 320, 3] and dtype == "uint8" and std > 1.0
            return
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "could not create an OpenGL context" not in proc.stderr:
            pytest.fail(f"rendering with MUJOCO_GL={backend} failed: {err}")
        failures.append(f"{backend}: {err[:200]}")
    pytest.skip("no OpenGL backend could be created: " + "; ".join(failures))
