"""The meta-update's maths on a tiny policy: its Fisher-vector product is the Hessian of the mean KL
(both metrics, CAML and MAML), its trust-region step lands on max_kl where the quadratic model is
exact, and its loss's second-order gradient matches finite differences."""

import math

import pytest
import torch
from conftest import random_episodes, tiny_policy

from caml_rl.adaptation import adapt
from caml_rl.config import AdaptationConfig, TRPOConfig
from caml_rl.episodes import select_tasks
from caml_rl.meta import MetaBatch, mean_kl, meta_update, readapt, surrogate_loss, trust_region_metric
from caml_rl.partition import initial_fast_weights, policy_forward, resolve_partition

PARTITIONS = ["context", "all"]
ADAPT = AdaptationConfig(inner_lr=0.5)


def make_batch(partition: str):
    policy = tiny_policy(context_size=2 if partition == "context" else 0)
    names = resolve_partition(policy, partition)
    pre, post = random_episodes(tasks=3, seed=1), random_episodes(tasks=3, seed=2)
    g = torch.Generator().manual_seed(3)
    pre_adv = torch.randn(pre.rewards.shape, generator=g, dtype=torch.float64) * pre.mask
    post_adv = torch.randn(post.rewards.shape, generator=g, dtype=torch.float64) * post.mask
    start = initial_fast_weights(policy, names, pre.num_tasks)
    fast = adapt(policy, start, pre, pre_adv, ADAPT.inner_lr, ADAPT.inner_steps, create_graph=True)
    return policy, names, MetaBatch(pre, pre_adv, post, post_adv, start, fast)


def flat_params(policy) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()])


def set_flat(policy, flat: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(flat, list(policy.parameters()))


def kl_gradient_at(policy, names, batch, fisher, theta, old_out, offset):
    """Gradient of the mean KL at parameters ``theta``, computed from scratch (no graph reuse)."""
    set_flat(policy, theta)
    if fisher == "full":
        fast = readapt(policy, names, batch, ADAPT, create_graph=True)
    else:  # the adaptation step frozen at its value at the reference parameters
        start = initial_fast_weights(policy, names, batch.pre.num_tasks)
        fast = {k: start[k] + offset[k] for k in start}
    kl = mean_kl(policy, batch.post, old_out, policy_forward(policy, batch.post.obs, fast))
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, list(policy.parameters()))])


@pytest.mark.parametrize("fisher", ["fixed", "full"])
@pytest.mark.parametrize("partition", PARTITIONS)
def test_fisher_vector_product_is_the_hessian_of_the_mean_kl(partition, fisher):
    policy, names, batch = make_batch(partition)
    old_out = tuple(o.detach() for o in policy_forward(policy, batch.post.obs, batch.fast))
    offset = {k: (batch.fast[k] - batch.start[k]).detach() for k in batch.fast}
    cfg = TRPOConfig(fisher=fisher, fvp_subsample=1.0)
    fvp = trust_region_metric(policy, names, batch, old_out, ADAPT, cfg, torch.Generator()).product
    theta0 = flat_params(policy)
    n, eps = theta0.numel(), 1e-5
    # explicit Hessian, column by column, by central differences of the KL's gradient
    hessian = torch.stack(
        [
            (
                kl_gradient_at(policy, names, batch, fisher, theta0 + eps * e, old_out, offset)
                - kl_gradient_at(policy, names, batch, fisher, theta0 - eps * e, old_out, offset)
            )
            / (2 * eps)
            for e in torch.eye(n, dtype=theta0.dtype)
        ],
        dim=1,
    )
    set_flat(policy, theta0)
    # central differences in float64 with eps 1e-5: truncation ~eps^2 = 1e-10, rounding ~1e-16 / eps = 1e-11,
    # on entries up to 13; measured below 0.4% of this tolerance in every case
    torch.testing.assert_close(hessian, hessian.T, rtol=1e-5, atol=1e-7)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        v = torch.randn(n, generator=g, dtype=theta0.dtype)
        torch.testing.assert_close(fvp(v), hessian @ v, rtol=1e-5, atol=1e-7)  # as above; measured < 0.3% of it


def test_the_two_metrics_differ_for_maml():
    """Holding the inner step fixed drops its curvature: a real approximation, not a relabel."""
    policy, names, batch = make_batch("all")
    old_out = tuple(o.detach() for o in policy_forward(policy, batch.post.obs, batch.fast))
    v = torch.randn(flat_params(policy).numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    products = [
        trust_region_metric(
            policy, names, batch, old_out, ADAPT, TRPOConfig(fisher=f, fvp_subsample=1.0), None
        ).product(v)
        for f in ("fixed", "full")
    ]
    assert not torch.allclose(products[0], products[1], rtol=1e-3)  # a difference of the maths, not rounding


@pytest.mark.parametrize("partition", PARTITIONS)
def test_full_metric_subsamples_whole_tasks(partition):
    """``fvp_subsample`` < 1 under the full metric keeps whole tasks (their inner step needs all their
    pre-adaptation episodes): the product is the exact metric of the chosen tasks' own batch."""
    policy, names, batch = make_batch(partition)
    old_out = tuple(o.detach() for o in policy_forward(policy, batch.post.obs, batch.fast))
    v = torch.randn(flat_params(policy).numel(), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sub_cfg, all_cfg = TRPOConfig(fisher="full", fvp_subsample=0.34), TRPOConfig(fisher="full", fvp_subsample=1.0)
    sampled = trust_region_metric(
        policy, names, batch, old_out, ADAPT, sub_cfg, torch.Generator().manual_seed(7)
    ).product(v)
    picked = torch.randperm(3, generator=torch.Generator().manual_seed(7))[:1]  # round(3 * 0.34) = 1 task
    one = MetaBatch(
        select_tasks(batch.pre, picked),
        batch.pre_adv[:, picked],
        select_tasks(batch.post, picked),
        batch.post_adv[:, picked],
        {k: x[picked] for k, x in batch.start.items()},
        {k: x[picked] for k, x in batch.fast.items()},
    )
    alone = trust_region_metric(policy, names, one, tuple(o[:, picked] for o in old_out), ADAPT, all_cfg, None).product(
        v
    )
    # float64, the same task's terms in a batch of 3 or of 1: reordered sums, ~1e-16 relative
    torch.testing.assert_close(sampled, alone, rtol=1e-10, atol=1e-12)
    everything = trust_region_metric(policy, names, batch, old_out, ADAPT, all_cfg, None).product(v)
    assert not torch.allclose(sampled, everything, rtol=1e-3)  # another task set: O(1) apart


# The tiny CAML problem's KL Hessian has an exact null direction, where undamped CG diverges: damp it
# a little (which lowers the first candidate's KL slightly below max_kl).
@pytest.mark.parametrize("partition, damping, tol", [("all", 0.0, 0.02), ("context", 1e-4, 0.05)])
def test_first_line_search_candidate_lands_on_max_kl(partition, damping, tol):
    """With the exact metric, a converged CG and a tiny trust region (where the KL is quadratic),
    the full step is accepted at KL = max_kl."""
    policy, names, batch = make_batch(partition)
    n = flat_params(policy).numel()
    cfg = TRPOConfig(max_kl=1e-8, fisher="full", fvp_subsample=1.0, cg_iters=4 * n, cg_damping=damping)
    before = flat_params(policy)
    stats = meta_update(policy, names, batch, ADAPT, cfg, torch.Generator())
    assert stats.accepted and stats.step_fraction == 1.0 and stats.line_search_evaluations == 1
    # maths, not rounding: the KL lands 0.1% (all) and 2.9% (context, the damping) below max_kl; weights
    # perturbed by 1e-13 move that by 4e-9 and 3e-7 (relative)
    assert stats.kl == pytest.approx(1e-8, rel=tol)
    assert stats.improvement > 0 and not torch.equal(flat_params(policy), before)


@pytest.mark.parametrize("partition", PARTITIONS)
def test_meta_gradient_of_the_surrogate_matches_finite_differences(partition):
    """The loss meta_update differentiates: second order through the trainer's inner step."""
    policy, names, batch = make_batch(partition)
    out = policy_forward(policy, batch.post.obs, batch.fast)
    old_logp = policy.distribution(tuple(o.detach() for o in out)).log_prob(batch.post.actions)
    grad = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(surrogate_loss(policy, batch, out, old_logp), policy.parameters())]
    )

    def loss_at(theta: torch.Tensor) -> float:
        set_flat(policy, theta)
        fast = readapt(policy, names, batch, ADAPT, create_graph=False)
        with torch.no_grad():
            return float(surrogate_loss(policy, batch, policy_forward(policy, batch.post.obs, fast), old_logp))

    theta0, eps = flat_params(policy), 1e-6
    for i in range(theta0.numel()):
        e = torch.zeros_like(theta0)
        e[i] = eps
        fd = (loss_at(theta0 + e) - loss_at(theta0 - e)) / (2 * eps)
        # central difference in float64 (eps 1e-6): ~1e-10 error; measured below 0.05% of this tolerance
        assert grad[i].item() == pytest.approx(fd, rel=1e-4, abs=1e-8)
    set_flat(policy, theta0)


def test_auto_metric_is_full_for_maml_and_fixed_for_the_context():
    assert TRPOConfig().metric(adapts_weights=True) == ("full", 1.0)
    assert TRPOConfig().metric(adapts_weights=False) == ("fixed", 0.2)
    assert TRPOConfig(fisher="fixed", fvp_subsample=0.5).metric(adapts_weights=True) == ("fixed", 0.5)
    assert TRPOConfig(fisher="full").metric(adapts_weights=False) == ("full", 1.0)
    policy, names, batch = make_batch("all")
    old_out = tuple(o.detach() for o in policy_forward(policy, batch.post.obs, batch.fast))
    v = torch.randn(flat_params(policy).numel(), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    auto = trust_region_metric(policy, names, batch, old_out, ADAPT, TRPOConfig(), None).product(v)
    full = trust_region_metric(policy, names, batch, old_out, ADAPT, TRPOConfig(fisher="full"), None).product(v)
    assert torch.equal(auto, full)  # exact: "auto" resolves to the same computation, in the same process


def normal_logp(a: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (-((a - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum()


def test_mean_kl_and_surrogate_equal_their_closed_forms_step_by_step():
    """Written out with loops and the diagonal-Gaussian KL formula, independent of the batched code:
    KL(old || new) per step, averaged over each task's valid steps, then over tasks; the surrogate
    is minus the same average of ratio * advantage."""
    policy, _, batch = make_batch("context")
    g = torch.Generator().manual_seed(7)
    shape = (*batch.post.rewards.shape, 2)  # [T, tasks, episodes, act_dim]
    old = (
        torch.randn(shape, generator=g, dtype=torch.float64),
        0.3 * torch.randn(shape, generator=g, dtype=torch.float64),
    )
    new = (
        torch.randn(shape, generator=g, dtype=torch.float64),
        0.3 * torch.randn(shape, generator=g, dtype=torch.float64),
    )
    ep, adv = batch.post, batch.post_adv
    T, tasks, eps = ep.rewards.shape
    kl_tasks, surr_tasks = [], []
    for b in range(tasks):
        kl_sum = surr_sum = count = 0.0
        for t in range(T):
            for e in range(eps):
                if ep.mask[t, b, e] == 0:
                    continue
                m0, s0 = old[0][t, b, e], old[1][t, b, e].exp()
                m1, s1 = new[0][t, b, e], new[1][t, b, e].exp()
                kl_sum += float((torch.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5).sum())
                a = ep.actions[t, b, e]
                logp_new = float(normal_logp(a, m1, s1))
                logp_old = float(normal_logp(a, m0, s0))
                surr_sum += math.exp(logp_new - logp_old) * float(adv[t, b, e])
                count += 1
        kl_tasks.append(kl_sum / count)
        surr_tasks.append(surr_sum / count)
    # float64 loops against the batched code: reordered sums of ~100 terms, ~1e-15 relative
    assert math.isclose(float(mean_kl(policy, ep, old, new)), sum(kl_tasks) / tasks, rel_tol=1e-9)
    old_logp = policy.distribution(old).log_prob(ep.actions)
    loss = surrogate_loss(policy, batch, new, old_logp)
    assert math.isclose(float(loss), -sum(surr_tasks) / tasks, rel_tol=1e-9)
    # the direction matters: KL(new || old) is a different number here
    assert not math.isclose(float(mean_kl(policy, ep, new, old)), sum(kl_tasks) / tasks, rel_tol=1e-3)  # maths
