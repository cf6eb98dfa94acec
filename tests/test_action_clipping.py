"""Box actions reach the env clipped to the action space; the episodes (and so every log-prob and
gradient) keep the unclipped sample. In training, evaluation and ``AdaptedPolicy.predict``."""

from __future__ import annotations

import dataclasses

import caml_rl.envs as envs
import gymnasium as gym
import numpy as np
import torch
from test_env_faults import Faulty, FaultyTasks, sample

from caml_rl import Trainer, load_config, load_run
from caml_rl.policies import ContextMLPPolicy
from caml_rl.runs import AdaptedPolicy


def test_sampler_clips_what_the_env_gets_and_keeps_the_unclipped_sample():
    sampler, episodes = sample(FaultyTasks(), init_std=5.0)
    received = np.array([env.received[:20] for env in sampler.env.envs])  # [sims, steps]
    sampled = episodes.actions[..., 0].reshape(20, -1).T.numpy()  # [sims, steps]
    assert np.abs(sampled).max() > 3  # std 5: most samples leave [-1, 1]
    assert np.abs(received).max() <= 1.0
    # exact: clipping selects a value or a bound, no rounding; float32 -> float the env reads is exact too
    np.testing.assert_array_equal(received, np.clip(sampled, -1.0, 1.0))


class _Recording(Faulty):
    largest = 0.0

    def step(self, action):
        _Recording.largest = max(_Recording.largest, float(np.abs(action).max()))
        return super().step(action)


@dataclasses.dataclass
class _RecordingTasks(FaultyTasks):
    name = "recording"

    def make_env(self):
        return _Recording()


envs.register("recording", _RecordingTasks, overwrite=True)


def test_training_evaluation_and_predict_stay_in_bounds(tmp_path):
    _Recording.largest = 0.0
    config = load_config(
        None,
        ["env.name=recording", "policy.init_std=5.0", "meta_batch_size=2", "episodes_per_task=2", "iterations=1"]
        + [
            "policy.hidden_sizes=[8]",
            "device=cpu",
            "evaluation.tasks=2",
            "evaluation.episodes=2",
            "evaluation.steps=1",
        ],
    )
    Trainer(config, tmp_path / "run").train(quiet=True)  # trains, then evaluates
    # init_std 5 over hundreds of actions: P(none beyond 0.99) is below 1e-100, whatever the rounding
    assert 0.99 < _Recording.largest <= 1.0
    adapted = load_run(tmp_path / "run").adapt(task=[0.5], steps=1, episodes=2)
    actions = np.stack([adapted.predict(np.zeros(1, np.float32))[0] for _ in range(50)])
    assert actions.shape == (50, 1) and np.abs(actions).max() == 1.0  # exact: a clipped action is the bound


def test_predict_clips_deterministic_and_batched_actions():
    space = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 0.5], np.float32))
    policy = ContextMLPPolicy(3, space, (4,), context_size=0)
    with torch.no_grad():
        policy.mlp[-1].bias.copy_(torch.tensor([5.0, -5.0]))
        policy.mlp[-1].weight.zero_()
    adapted = AdaptedPolicy(policy, {}, np.zeros(1), [], space)
    single, _ = adapted.predict(np.zeros(3, np.float32), deterministic=True)
    batch, _ = adapted.predict(np.zeros((4, 3), np.float32), deterministic=True)
    # exact: with zero last-layer weights the mean is the bias bit for bit, and clipping selects the bound
    np.testing.assert_array_equal(single, [1.0, 0.0])
    np.testing.assert_array_equal(batch, np.tile([1.0, 0.0], (4, 1)))
    unclipped = AdaptedPolicy(policy, {}, np.zeros(1), [])  # no action space: as before
    np.testing.assert_array_equal(unclipped.predict(np.zeros(3, np.float32), deterministic=True)[0], [5.0, -5.0])


def test_mujoco_envs_behave_exactly_as_before_clipping():
    """They clip internally after dividing by action_scale: clipping to [-scale, scale] first
    changes nothing, bit for bit (so the committed results reproduce).

    Exact on any machine: both envs then run the same C simulator on the same inputs. A clipped action
    is float32(scale), which for these scales is not below the scale, so it divides (IEEE division rounds
    alike everywhere) to >= 1.0, which the env's own clip makes 1.0. (A scale whose float32 rounds down,
    such as 0.7, would reach the env as 1 - 6e-8.)
    """
    from caml_rl.envs.actions import action_clipper

    for scale in (1.0, 10.0, 0.3):
        dist = envs.make("halfcheetah_vel", action_scale=scale)
        clip = action_clipper(dist.action_space, torch.device("cpu"))
        raw, clipped = dist.make_vec_env(3, torch.device("cpu")), dist.make_vec_env(3, torch.device("cpu"))
        tasks = np.ones((3, 1))
        raw.reset(tasks, np.random.default_rng(1))
        clipped.reset(tasks, np.random.default_rng(1))
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            a = torch.randn(3, 6, generator=gen) * 3 * scale
            out_raw, out_clipped = raw.step(a), clipped.step(clip(a))
            for x, y in zip(out_raw, out_clipped):
                assert torch.equal(x, y)
        raw.close()
        clipped.close()


def test_navigation_is_unchanged_by_clipping():
    from caml_rl.envs.actions import action_clipper

    dist = envs.make("navigation2d")
    clip = action_clipper(dist.action_space, torch.device("cpu"))
    raw, clipped = dist.make_vec_env(4, torch.device("cpu")), dist.make_vec_env(4, torch.device("cpu"))
    tasks = np.full((4, 2), 0.3)
    raw.reset(tasks, None)
    clipped.reset(tasks, None)
    a = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    for x, y in zip(raw.step(a), clipped.step(clip(a))):
        assert torch.equal(x, y)  # exact: the env clips to the same bounds, so it sees the same floats
