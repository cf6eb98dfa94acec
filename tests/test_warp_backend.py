"""The MuJoCo Warp backend against the C simulator, on Warp's CPU device (and on CUDA when present).

Run with ``pytest -m warp`` (``-s`` prints the measured errors). Kernels compile on first use,
about three minutes on 2 CPU cores, then come from Warp's kernel cache.

What agreement to expect: MuJoCo Warp computes in float32 and builds some contact frames
differently (capsule-on-plane friction pyramids), so trajectories agree to float32 rounding
(1e-5) until the first event, a foot touching the floor or a joint reaching its limit, and drift
apart after it: by O(1) within a few steps of floor contact, by about 1e-2 after a joint limit.
From the tasks' own resets Ant's feet land during its second env step and HalfCheetah's errors
stay below 3e-2 for eight; lifted 3 m into the air (joint limits only) both stay below 0.1 for
twelve env steps (60 physics steps). Each case prints its measured maxima.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from caml_rl.envs.base import TaskDistributionError, make
from caml_rl.envs.locomotion_registry import register_all

from caml_rl import Trainer
from caml_rl.cli import main
from caml_rl.config import load_config

pytest.importorskip("mujoco_warp", reason="MuJoCo Warp is not installed: pip install -e '.[warp]'")
pytestmark = pytest.mark.warp
register_all()

CPU = torch.device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# (env, settings, env steps from the task's reset, max |obs error|, max |reward error|) over 16 sims
CASES = [
    ("halfcheetah_vel", {}, 8, 3e-2, 2e-3),
    ("halfcheetah_dir", {"action_scale": 10.0, "observe_torso_com": True}, 8, 3e-2, 2e-3),
    ("halfcheetah_dynamics", {}, 8, 3e-2, 2e-3),
    ("ant_vel", {}, 1, 1e-4, 1e-5),
    ("ant_dir", {"observe_torso_com": True}, 1, 1e-4, 1e-5),
    ("ant_goal", {}, 1, 1e-4, 1e-5),
]
FIRST_OBS, FIRST_REWARD = 2e-4, 1e-5  # every task's first step: float32 rounding only
AIR_STEPS, AIR_OBS, AIR_REWARD = 12, 1e-1, 2e-3  # lifted 3 m: no floor for 12 env steps, joint limits only


def _run(dist, backend: str, device: torch.device, tasks: np.ndarray, actions: np.ndarray, lift: float = 0.0):
    """Observations, rewards, terminations (on the CPU) from the task's reset, optionally lifted."""
    env = dist.make_vec_env(len(tasks), device, backend=backend)
    out = [env.reset(tasks, np.random.default_rng(0))]
    if lift:
        rng = np.random.default_rng(0)  # the same draws as the reset's
        m, s = dist.model, dist.reset_noise_scale
        qpos = m.qpos0 + rng.uniform(-s, s, size=(len(tasks), m.nq))
        qvel = s * rng.standard_normal((len(tasks), m.nv))
        qpos[:, 1 if dist.root_qpos_skip == 1 else 2] += lift  # the root's height
        env.sim.reset(qpos, qvel)
    for a in actions:
        out.append(tuple(x.cpu() for x in env.step(torch.from_numpy(a).to(device))))
    env.close()
    return out


def _errors(c_out, w_out) -> tuple[float, float, int]:
    obs = max((x[0] - y[0]).abs().max().item() for x, y in zip(c_out[1:], w_out[1:]))
    rew = max((x[1] - y[1]).abs().max().item() for x, y in zip(c_out[1:], w_out[1:]))
    ends = sum(int((x[2] != y[2]).sum()) for x, y in zip(c_out[1:], w_out[1:]))
    return obs, rew, ends


def _compare(name: str, settings: dict, steps: int, tol_obs: float, tol_rew: float, device: torch.device) -> None:
    air = {"terminate_when_unhealthy": False, "healthy_z_high": 10.0} if name.startswith("ant") else {}
    cases = [
        (0.0, make(name, **settings), 1, FIRST_OBS, FIRST_REWARD),
        (0.0, make(name, **settings), steps, tol_obs, tol_rew),
        (3.0, make(name, **settings, **air), AIR_STEPS, AIR_OBS, AIR_REWARD),
    ]
    for lift, dist, horizon, t_obs, t_rew in cases[1:] if steps == 1 else cases:
        n = 16
        tasks = dist.sample_tasks(np.random.default_rng(1), n)
        act = np.random.default_rng(2).uniform(-1, 1, (horizon, n, dist.action_space.shape[0])).astype(np.float32)
        act *= dist.action_scale
        c_out = _run(dist, "batch", CPU, tasks, act, lift)
        w_out = _run(dist, "warp", device, tasks, act, lift)
        assert (c_out[0] - w_out[0]).abs().max() <= 1e-6  # the reset's observation (torso xpos: float32 maths)
        obs, rew, ends = _errors(c_out, w_out)
        where = f"lifted {lift:g} m" if lift else "from task resets"
        print(
            f"\nwarp ({device}) vs batch, {name} {settings}, {where}, {horizon} steps x {n} sims: "
            f"max |obs error| {obs:.1e}, max |reward error| {rew:.1e}"
        )
        assert obs <= t_obs and rew <= t_rew and ends == 0, (where, obs, rew, ends)


@pytest.mark.parametrize(("name", "settings", "steps", "tol_obs", "tol_rew"), CASES, ids=[c[0] for c in CASES])
def test_warp_matches_the_c_simulator(name, settings, steps, tol_obs, tol_rew):
    _compare(name, settings, steps, tol_obs, tol_rew, CPU)


def test_graph_replay_equals_launching_every_kernel():
    from caml_rl.envs.warp_sim import WarpSimulator

    dist = make("halfcheetah_vel")
    m, rng = dist.model, np.random.default_rng(0)
    qpos, qvel = m.qpos0 + rng.uniform(-0.1, 0.1, (4, m.nq)), 0.1 * rng.standard_normal((4, m.nv))
    ctrl = torch.from_numpy(rng.uniform(-1, 1, (6, 4, m.nu))).float()
    states = []
    for capture in (True, False):
        sim = WarpSimulator(m, 4, dist.frame_skip, CPU, capture=capture)
        sim.reset(qpos, qvel)
        for c in ctrl:
            sim.set_ctrl(c)
            sim.step()
        assert (sim._graph is not None) == capture
        states.append(torch.cat([sim.state_qpos, sim.state_qvel], 1).clone())
    assert torch.equal(states[0], states[1])


def test_dynamics_tasks_vary_the_model_per_world():
    import warp as wp

    dist = make("halfcheetah_dynamics", reset_noise_scale=0.0, simulator="warp")
    env = dist.make_vec_env(3, CPU)
    tasks = np.array([[1.0, 1.0], [2.0, 1.0], [1.0, 2.0]])
    act = torch.from_numpy(np.random.default_rng(6).uniform(-1, 1, (10, 1, 6)).astype(np.float32))

    def run() -> torch.Tensor:
        env.reset(tasks, np.random.default_rng(0))
        for a in act:
            obs, _, _ = env.step(a.expand(3, -1))
        return obs

    obs = run()
    assert not torch.allclose(obs[0], obs[1]) and not torch.allclose(obs[0], obs[2])
    mass = wp.to_torch(env.sim._m.body_mass)
    assert torch.allclose(mass[1], 2.0 * mass[0])
    assert torch.allclose(wp.to_torch(env.sim._m.dof_damping)[2], 2.0 * wp.to_torch(env.sim._m.dof_damping)[0])
    assert torch.equal(run(), obs)
    tasks[1] = [0.5, 1.0]
    env.reset(tasks, np.random.default_rng(0))  # scales apply to the original model, not on top of the last ones
    assert torch.allclose(wp.to_torch(env.sim._m.body_mass)[1], 0.5 * mass[0])
    with pytest.raises(
        TaskDistributionError,
        match=r"cannot give model field 'geom_type' a value per world; "
        r"it can vary: qpos0, .*body_mass",
    ):
        env.sim.set_model_fields({"geom_type": np.zeros((3, dist.model.ngeom))})
    env.close()


def test_contract_and_failures_name_the_sim_and_task():
    dist = make("halfcheetah_vel", simulator="warp")
    env = dist.make_vec_env(4, CPU)
    tasks = np.array([[0.5], [0.5], [1.5], [1.5]])
    obs = env.reset(tasks, np.random.default_rng(0))
    assert obs.shape == (4, 17) and obs.dtype == torch.float32
    obs, reward, terminated = env.step(torch.zeros(4, 6))
    assert reward.dtype == torch.float32 and terminated.dtype == torch.bool and env.info["velocity"].shape == (4, 1)
    env.sim.qvel[3, 2] = 1e30  # a view of the Warp state on its CPU device
    with pytest.raises(
        TaskDistributionError,
        match=r"HalfCheetahVel sim 3 \(task row 1: goal_velocity=1.5\) "
        r"became unstable at step 2: .*qvel not finite",
    ):
        env.step(torch.zeros(4, 6))
    env.reset(tasks, np.random.default_rng(0))
    bad = torch.zeros(4, 6)
    bad[1, 0] = float("nan")
    with pytest.raises(TaskDistributionError, match=r"sim 1 \(task row 0: .*non-finite action at step 1"):
        env.step(bad)
    with pytest.raises(TaskDistributionError, match="actions of shape"):
        env.step(torch.zeros(5, 6))
    env.close()


def test_deferred_faults_are_reported_by_the_rollout_they_happen_in():
    """The GPU's fault path on Warp's CPU device: with the checks deferred (nothing read per step), a world
    whose constraint buffer overflows in the last step of a rollout (its numbers stay finite, and wrong)
    makes that rollout raise at its end, from the sampler's one end-of-rollout read; the next reset used to
    be the first to say so, and a sampler's final rollout has none. Without the sampler, reset still does."""
    import warp as wp
    from mujoco_warp import OverflowType

    from caml_rl.config import PolicyConfig
    from caml_rl.partition import initial_fast_weights
    from caml_rl.policies import make_policy
    from caml_rl.sampler import Sampler

    horizon = 4
    dist = make("halfcheetah_vel", simulator="warp", horizon=horizon)
    sampler = Sampler(dist, 2, 2, CPU)
    env = sampler.env
    env._eager = False  # as on a GPU: faults are recorded on the device, not read at each step

    class Overflow:
        """After step ``at``, flag world 3's constraint buffer as overflowed (as MuJoCo Warp does)."""

        def __init__(self, at: int):
            self.at = at

        def on_reset(self, env, obs) -> None:
            pass

        def on_step(self, env, obs) -> None:
            if env._t == self.at:
                wp.to_torch(env.sim._d.overflow)[3] |= int(OverflowType.NEFC)

    torch.manual_seed(0)
    policy = make_policy(PolicyConfig(hidden_sizes=[8]), dist.observation_space, dist.action_space)
    tasks = dist.sample_tasks(np.random.default_rng(0), 2)
    fast = initial_fast_weights(policy, ("context",), 2)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    episodes = sampler.sample(policy, tasks, fast, rng, gen)  # no fault: nothing raised
    assert torch.isfinite(episodes.obs).all()
    sampler.hook = Overflow(at=horizon - 1)  # seen by the last step's check
    with pytest.raises(TaskDistributionError, match=rf"sim 3 .*became unstable at step {horizon}: .*overflowed NEFC"):
        sampler.sample(policy, tasks, fast, rng, gen)
    sampler.hook = None
    assert torch.isfinite(sampler.sample(policy, tasks, fast, rng, gen).obs).all()  # reported once, not again

    env.reset(np.repeat(tasks, 2, axis=0), rng)  # driven directly, without the sampler's read
    env.step(torch.zeros(4, 6))
    Overflow(at=1).on_step(env, None)
    env.step(torch.zeros(4, 6))
    with pytest.raises(TaskDistributionError, match=r"sim 3 .*became unstable at step 2: .*overflowed NEFC"):
        env.reset(np.repeat(tasks, 2, axis=0), rng)
    sampler.close()


def test_ant_terminates_and_freezes_like_the_c_simulator():
    dist = make("ant_vel", healthy_z_high=0.75)  # about half the torsos start above 0.75 m: they end at once
    tasks = np.full((16, 1), 1.0)
    act = np.random.default_rng(3).uniform(-1, 1, (6, 16, 8)).astype(np.float32)
    c_out, w_out = _run(dist, "batch", CPU, tasks, act), _run(dist, "warp", CPU, tasks, act)
    ended = c_out[1][2]
    assert 0 < int(ended.sum()) < 16 and torch.equal(w_out[1][2], ended)  # step 1: no contact yet, same ends
    for (prev_obs, _, prev_end), (obs, reward, terminated) in zip(w_out[1:], w_out[2:]):
        assert terminated[prev_end].all() and (reward[prev_end] == 0).all()  # ended: no reward...
        assert torch.equal(obs[prev_end], prev_obs[prev_end])  # ...and a frozen observation
    assert not torch.equal(w_out[-1][0][~ended], w_out[1][0][~ended])  # the others moved on


def test_caml_learns_on_warp(tmp_path):
    cfg = load_config(
        None,
        [
            "env.name=halfcheetah_vel",
            "env.settings.simulator=warp",
            "env.settings.horizon=25",
            "meta_batch_size=10",
            "episodes_per_task=10",
            "iterations=8",
            "trpo.max_kl=0.05",
            "policy.hidden_sizes=[32, 32]",
            "device=cpu",
            "evaluation.tasks=10",
            "evaluation.episodes=10",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    before = trainer.evaluate(steps=0).returns[0]
    trainer.train(evaluate_at_end=False, quiet=True)
    after = trainer.evaluate(steps=1).returns
    print(
        f"\nCAML on warp, halfcheetah_vel, 8 iterations: 0-step return {before:.2f} -> {after[0]:.2f}, "
        f"after one inner step {after[1]:.2f}"
    )
    # What 8 iterations must show on any CPU: the adapted policy well above the untrained one (+3.0 on an
    # Intel Xeon, +2.5 on an AMD EPYC) and the shared weights alone no worse. How far the zero-step return
    # moves depends on the machine's rounding in a chaotic rollout (+2.3 and +0.85 on those two CPUs).
    assert after[1] > before + 1.0 and after[0] > before - 0.5, (before, after)
    assert "simulator: warp" in (tmp_path / "run" / "config.yaml").read_text()


def test_benchmark_times_the_warp_backend(capsys):
    args = ["benchmark", "--simulator", "warp", "--tasks", "2", "--episodes", "2", "--horizon", "10"]
    main([*args, "--iterations", "1", "--worlds", "4", "--json", "--set", "policy.hidden_sizes=[16]"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["simulator"] == "warp" and result["env"] == "halfcheetah_vel"
    assert result["physics_steps_per_s_by_worlds"]["4"] > 0 and result["physics_warmup_seconds"] > 0
    assert result["sampler_steps_per_s"] > 0 and result["device_name"]


# ------------------------------------------------------------------------------------------ CUDA
@cuda
@pytest.mark.gpu
@pytest.mark.parametrize(("name", "settings", "steps", "tol_obs", "tol_rew"), CASES, ids=[c[0] for c in CASES])
def test_warp_on_cuda_matches_the_c_simulator(name, settings, steps, tol_obs, tol_rew):
    _compare(name, settings, steps, tol_obs, tol_rew, torch.device("cuda"))


@cuda
@pytest.mark.gpu
def test_warp_on_cuda_steps_without_waiting_for_the_device():
    dist = make("ant_goal", simulator="warp")
    env = dist.make_vec_env(64, torch.device("cuda"))
    env.reset(dist.sample_tasks(np.random.default_rng(0), 64), np.random.default_rng(0))
    actions = torch.rand(20, 64, 8, device="cuda") * 2 - 1
    env.step(actions[0])
    env.step(actions[1])  # the second step captures the CUDA graph
    assert env.sim._graph is not None
    torch.cuda.set_sync_debug_mode("error")  # any synchronising torch call in the loop raises
    try:
        for a in actions[2:]:
            obs, reward, terminated = env.step(a)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert obs.is_cuda and reward.is_cuda and terminated.is_cuda and torch.isfinite(obs).all()
    env.sim.state_qvel[5, 0] = float("inf")  # reported at the next reset, not mid-rollout
    env.step(actions[0])
    with pytest.raises(TaskDistributionError, match=r"AntGoal sim 5 .* became unstable at step 21"):
        env.reset(dist.sample_tasks(np.random.default_rng(0), 64), np.random.default_rng(0))
    env.close()


@cuda
@pytest.mark.gpu
def test_a_caml_iteration_stays_on_the_gpu_with_warp(tmp_path):
    cfg = load_config(
        None,
        [
            "env.name=halfcheetah_vel",
            "env.settings.simulator=warp",
            "env.settings.horizon=20",
            "meta_batch_size=4",
            "episodes_per_task=4",
            "iterations=2",
            "policy.hidden_sizes=[32]",
            "device=cuda",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.algorithm.open()
    assert trainer.algorithm.sampler.env.sim.device.type == "cuda"
    metrics = [trainer.iterate() for _ in range(2)]
    assert all(np.isfinite(m["return/after_adaptation"]) for m in metrics)
    assert all(p.is_cuda for p in trainer.policy.parameters())
    trainer.algorithm.close()
