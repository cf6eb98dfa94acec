import gymnasium as gym
import numpy as np
import torch
from conftest import tiny_policy

from caml_rl.partition import initial_fast_weights, policy_forward, resolve_partition
from caml_rl.policies import ContextMLPPolicy


def test_context_changes_the_output_and_is_concatenated_at_input():
    p = tiny_policy(context_size=3)
    obs = torch.randn(4, 2, dtype=torch.float64)
    a = p(obs, torch.zeros(3, dtype=torch.float64))[0]
    b = p(obs, torch.ones(3, dtype=torch.float64))[0]
    assert not torch.allclose(a, b)  # a different input, not rounding: O(1) apart
    assert p.mlp[0].in_features == 2 + 3


def test_split_first_layer_is_the_concatenated_input_layer():
    """The policy applies its first layer to obs and context separately (the context's share once per
    task); values and every gradient are those of the layer on ``cat([obs, context])``."""
    p = tiny_policy(context_size=3)
    obs = torch.randn(5, 4, 6, 2, dtype=torch.float64)  # [T, tasks, episodes, obs]
    context = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    mean = p(obs, context[:, None, :])[0]
    ref_in = torch.cat([obs, context[:, None, :].expand(5, 4, 6, 3)], dim=-1)
    ref = p.mlp(ref_in)
    torch.testing.assert_close(mean, ref)  # float64: another summation order, ~1e-16 relative
    params = [context, *p.parameters()]
    grads = torch.autograd.grad(mean.square().sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad(ref.square().sum(), params, allow_unused=True)
    for g, r in zip(grads[:-1], ref_grads[:-1]):  # the last is log_std, which the mean does not use
        torch.testing.assert_close(g, r)
    assert grads[0].abs().max() > 0.1  # the context's gradient is O(1), not vanishing


def test_joint_log_prob_sums_over_action_dims():
    p = tiny_policy()
    params = p(torch.randn(5, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    act = torch.randn(5, 2, dtype=torch.float64)
    dist = p.distribution(params)
    per_dim = torch.distributions.Normal(params[0], params[1].exp()).log_prob(act).sum(-1)
    torch.testing.assert_close(dist.log_prob(act), per_dim)  # float64, another summation: ~1e-16 relative


def test_log_std_floor():
    space = gym.spaces.Box(-1, 1, (2,), np.float32)
    p = ContextMLPPolicy(2, space, (4,), "relu", 0, init_std=1.0, min_std=0.5)
    with torch.no_grad():
        p.log_std.fill_(-20.0)
    _, log_std = p(torch.zeros(1, 2), torch.zeros(0))
    assert torch.allclose(log_std.exp(), torch.tensor(0.5))  # exp(log(0.5)) in float32: an ulp at most (exact here)


def test_categorical_head_for_discrete_actions():
    p = ContextMLPPolicy(3, gym.spaces.Discrete(4), (8,), "tanh", 2)
    params = p(torch.randn(6, 3), torch.zeros(2))
    assert params[0].shape == (6, 4)
    gen = torch.Generator().manual_seed(0)
    a = p.sample(params, gen)
    assert a.shape == (6,) and a.dtype == torch.long and int(a.max()) < 4
    assert p.distribution(params).log_prob(a).shape == (6,)


def test_all_partition_with_per_task_weights_matches_shared_forward():
    p = tiny_policy(context_size=0)
    names = resolve_partition(p, "all")
    assert "context" not in names and "log_std" in names
    fast = initial_fast_weights(p, names, 3)
    obs = torch.randn(5, 3, 4, 2, dtype=torch.float64)
    mean_vmap, _ = policy_forward(p, obs, fast)
    mean_plain, _ = p(obs, torch.zeros(0, dtype=torch.float64))
    torch.testing.assert_close(mean_vmap, mean_plain)  # float64, per-task vs shared matmuls: ~1e-16 relative
