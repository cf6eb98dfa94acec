import pytest
import torch
from conftest import random_episodes, tiny_policy

from caml_rl.adaptation import adapt, inner_loss
from caml_rl.episodes import Episodes
from caml_rl.partition import PartitionError, initial_fast_weights, policy_forward, resolve_partition


def task_slice(ep: Episodes, k: int) -> Episodes:
    return Episodes(ep.obs[:, k : k + 1], ep.actions[:, k : k + 1], ep.rewards[:, k : k + 1], ep.mask[:, k : k + 1])


@pytest.mark.parametrize("partition", ["context", "all", "mlp.2.bias"])
def test_batched_adaptation_equals_each_task_alone(partition):
    p = tiny_policy(context_size=2)
    names = resolve_partition(p, partition)
    ep = random_episodes(tasks=4)
    adv = torch.randn_like(ep.rewards) * ep.mask
    batched = adapt(p, initial_fast_weights(p, names, 4), ep, adv, lr=0.7, steps=2, create_graph=False)
    for k in range(4):
        alone = adapt(p, initial_fast_weights(p, names, 1), task_slice(ep, k), adv[:, k : k + 1], 0.7, 2, False)
        for name in names:
            # float64, default rtol 1e-7: a batch of 4 and a batch of 1 may sum in another order (~1e-16)
            torch.testing.assert_close(batched[name][k : k + 1], alone[name])
    # adaptation actually moved something (by O(lr * gradient) = O(0.1), far beyond allclose's 1e-8 + 1e-5)
    assert any(not torch.allclose(batched[n], initial_fast_weights(p, names, 4)[n]) for n in names)


def test_context_gradient_is_the_per_task_loss_gradient():
    p = tiny_policy(context_size=3)
    ep = random_episodes(tasks=3)
    adv = torch.randn_like(ep.rewards) * ep.mask
    names = ("context",)
    fast = initial_fast_weights(p, names, 3)
    adapted = adapt(p, fast, ep, adv, lr=1.0, steps=1, create_graph=False)
    for k in range(3):
        ctx = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
        loss = inner_loss(p, {"context": ctx}, task_slice(ep, k), adv[:, k : k + 1]).sum()
        (g,) = torch.autograd.grad(loss, ctx)
        torch.testing.assert_close(adapted["context"][k], -g[0])  # float64, one task vs a batch: ~1e-16 relative


def meta_objective(p, names, pre, pre_adv, post, post_adv, lr, create_graph):
    fast = adapt(p, initial_fast_weights(p, names, pre.num_tasks), pre, pre_adv, lr, 1, create_graph)
    logp = p.distribution(policy_forward(p, post.obs, fast)).log_prob(post.actions)
    return -((logp.exp() * post_adv * post.mask).sum() / post.mask.sum())


@pytest.mark.parametrize("partition", ["context", "all"])
def test_second_order_meta_gradient_matches_finite_differences(partition):
    p = tiny_policy(context_size=2 if partition == "context" else 0)
    names = resolve_partition(p, partition)
    pre, post = random_episodes(tasks=2, seed=1), random_episodes(tasks=2, seed=2)
    pre_adv, post_adv = torch.randn_like(pre.rewards), torch.randn_like(post.rewards)
    params = list(p.parameters())
    loss = meta_objective(p, names, pre, pre_adv, post, post_adv, 0.5, True)
    grads = torch.autograd.grad(loss, params)
    eps = 1e-6
    for param, grad in zip(params, grads):
        flat = param.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 4)):
            orig = flat[i].item()
            flat[i] = orig + eps
            up = meta_objective(p, names, pre, pre_adv, post, post_adv, 0.5, False).item()
            flat[i] = orig - eps
            down = meta_objective(p, names, pre, pre_adv, post, post_adv, 0.5, False).item()
            flat[i] = orig
            # central difference in float64 with eps 1e-6: truncation ~eps^2 = 1e-12, rounding ~1e-16 / eps =
            # 1e-10; measured at most 1.4e-11 (relative 6e-9) against gradients of 3e-4 and more
            assert grad.view(-1)[i].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7)


def test_first_order_drops_the_second_order_term():
    p = tiny_policy(context_size=2)
    names = ("context",)
    pre, post = random_episodes(tasks=2, seed=1), random_episodes(tasks=2, seed=2)
    pre_adv, post_adv = torch.randn_like(pre.rewards), torch.randn_like(post.rewards)
    w = p.mlp[0].weight
    g2 = torch.autograd.grad(meta_objective(p, names, pre, pre_adv, post, post_adv, 0.5, True), w)[0]
    g1 = torch.autograd.grad(meta_objective(p, names, pre, pre_adv, post, post_adv, 0.5, False), w)[0]
    assert not torch.allclose(g1, g2)  # the second-order term is ~40% of the gradient here, not rounding
    # first order = the outer loss's gradient with the adapted context held constant
    fast = adapt(p, initial_fast_weights(p, names, pre.num_tasks), pre, pre_adv, 0.5, 1, create_graph=False)
    held = {k: v.detach() for k, v in fast.items()}
    logp = p.distribution(policy_forward(p, post.obs, held)).log_prob(post.actions)
    expected = torch.autograd.grad(-((logp.exp() * post_adv * post.mask).sum() / post.mask.sum()), w)[0]
    # float64, the same operations in another graph (bit-identical here); 1e-12 would still cover a reordered sum
    torch.testing.assert_close(g1, expected, rtol=1e-12, atol=1e-14)


def test_unknown_partition_name_is_a_clear_error():
    p = tiny_policy()
    with pytest.raises(PartitionError, match="mlp.9.bias.*allowed"):
        resolve_partition(p, "mlp.9.bias")
    with pytest.raises(PartitionError, match="combines 'all' with other names; use 'all' alone"):
        resolve_partition(p, "all,context")  # was: "names 'all', which this policy lacks; allowed: 'all' or ..."
