"""Issue 33: the trust-region metric as J^T F J (a Jacobian-vector product and a backward, on the
graph the surrogate already built where the metric covers the whole batch) takes the same TRPO
steps as the double backward of the KL's gradient it replaced (tests/reference_trpo.py)."""

import copy

import pytest
import torch
from conftest import random_episodes, tiny_policy
from reference_trpo import reference_fvp, reference_meta_update

import caml_rl.meta_gradient as meta_gradient
from caml_rl.adaptation import adapt
from caml_rl.config import AdaptationConfig, TRPOConfig, load_config
from caml_rl.meta import MetaBatch, surrogate_loss, trust_region_metric
from caml_rl.partition import initial_fast_weights, policy_forward, resolve_partition
from caml_rl.trainer import Trainer

ADAPT = AdaptationConfig(inner_lr=0.5)


def tiny_batch(partition: str):
    policy = tiny_policy(context_size=2 if partition == "context" else 0)
    names = resolve_partition(policy, partition)
    pre, post = random_episodes(tasks=3, seed=1), random_episodes(tasks=3, seed=2)
    g = torch.Generator().manual_seed(3)
    pre_adv = torch.randn(pre.rewards.shape, generator=g, dtype=torch.float64) * pre.mask
    post_adv = torch.randn(post.rewards.shape, generator=g, dtype=torch.float64) * post.mask
    start = initial_fast_weights(policy, names, pre.num_tasks)
    fast = adapt(policy, start, pre, pre_adv, ADAPT.inner_lr, ADAPT.inner_steps, create_graph=True)
    return policy, names, MetaBatch(pre, pre_adv, post, post_adv, start, fast)


@pytest.mark.parametrize("fisher, subsample", [("full", 1.0), ("full", 0.67), ("fixed", 0.5)])
@pytest.mark.parametrize("partition", ["context", "all"])
def test_meta_gradient_and_product_equal_the_reference(partition, fisher, subsample):
    """On a tiny float64 problem: the meta-gradient (computed with the metric's graph where it covers
    the whole batch under ``full``) and Fisher-vector products equal the double-backward reference."""
    policy, names, batch = tiny_batch(partition)
    params = list(policy.parameters())
    out = policy_forward(policy, batch.post.obs, batch.fast)
    old_out = tuple(o.detach() for o in out)
    loss = surrogate_loss(policy, batch, out, policy.distribution(old_out).log_prob(batch.post.actions))
    cfg = TRPOConfig(fisher=fisher, fvp_subsample=subsample)
    metric = trust_region_metric(
        policy, names, batch, old_out, ADAPT, cfg, torch.Generator().manual_seed(8), None, out, loss
    )
    reference = reference_fvp(policy, names, batch, ADAPT, cfg, torch.Generator().manual_seed(8), old_out)
    assert (metric.gradient is not None) == (fisher == "full" and subsample == 1.0)  # shared graph only then
    if metric.gradient is not None:
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
        # float64, the same backward started from the loss's gradient in the outputs: equal bit for bit here
        torch.testing.assert_close(metric.gradient, expected, rtol=1e-12, atol=1e-14)
    g = torch.Generator().manual_seed(9)
    for _ in range(3):
        v = torch.randn(sum(p.numel() for p in params), generator=g, dtype=torch.float64)
        # float64: J^T F J v against the Hessian's double backward, the same maths (the reference's extra
        # terms are products with the KL's exactly-zero gradient in the outputs); equal bit for bit here
        torch.testing.assert_close(metric.product(v), reference(v), rtol=1e-10, atol=1e-12)


HEADLINES = {
    "caml": "experiments/configs/halfcheetah_vel_caml.yaml",
    "maml": "experiments/configs/halfcheetah_vel_maml.yaml",
}
SMALL = ["meta_batch_size=10", "episodes_per_task=4", "env.settings.horizon=50", "seed=3"]


@pytest.mark.parametrize("method", sorted(HEADLINES))
def test_headline_steps_equal_the_reference_over_five_iterations(method, tmp_path, monkeypatch):
    """Each of 5 iterations of a headline config (its network, inner step, metric and fvp_subsample;
    fewer tasks, episodes and steps): the reference takes its step on a copy of the policy with the
    same batch and random stream, then the new code on the policy itself, which training goes on with."""
    config = load_config(HEADLINES[method], SMALL)
    trainer = Trainer(config, tmp_path)
    trainer.algorithm.open()
    records = []
    new_update = meta_gradient.meta_update

    def both(policy, names, batch, adapt_cfg, trpo_cfg, generator, *args, **kwargs):
        twin = copy.deepcopy(policy)
        start = initial_fast_weights(twin, names, batch.pre.num_tasks)
        fast = adapt(
            twin,
            start,
            batch.pre,
            batch.pre_adv,
            adapt_cfg.inner_lr,
            adapt_cfg.inner_steps,
            True,
            adapt_cfg.inner_objective,
            batch.pre_logp,
        )
        assert all(torch.equal(fast[k], batch.fast[k]) for k in fast)  # the same inner step, same process
        twin_batch = MetaBatch(batch.pre, batch.pre_adv, batch.post, batch.post_adv, start, fast, batch.pre_logp)
        twin_generator = torch.Generator().set_state(generator.get_state())
        before = torch.nn.utils.parameters_to_vector(policy.parameters()).detach().clone()
        ref = reference_meta_update(twin, names, twin_batch, adapt_cfg, trpo_cfg, twin_generator)
        new = new_update(policy, names, batch, adapt_cfg, trpo_cfg, generator, *args, **kwargs)
        steps = [torch.nn.utils.parameters_to_vector(p.parameters()).detach() - before for p in (twin, policy)]
        records.append((ref, new, *steps))
        return new

    monkeypatch.setattr(meta_gradient, "meta_update", both)
    try:
        for _ in range(5):
            trainer.iterate()
    finally:
        trainer.algorithm.close()
    assert len(records) == 5
    accepted = 0
    for ref, new, ref_step, new_step in records:
        assert (new.accepted, new.reason, new.line_search_evaluations) == (
            ref.accepted,
            ref.reason,
            ref.line_search_evaluations,
        )
        assert new.step_fraction == ref.step_fraction
        # the same forward and backward (for MAML from the loss's gradient in the outputs): equal here
        assert new.loss_before == pytest.approx(ref.loss_before, rel=1e-6, abs=1e-12)
        if ref.accepted:
            accepted += 1
            # float32: the products differ in their last bits (~1e-7) and 10 CG iterations carry that into
            # the direction, by an amount that depends on the CPU's kernels. Measured at most (KL, improvement,
            # the step's relative change): 5.3e-7, 7.7e-7, 9.6e-7 on an Intel Xeon; 2.2e-5, 3.8e-6, 1.0e-4 on
            # an AMD EPYC (MAML's fourth iteration). The bounds leave 45x, 260x and 100x of the latter.
            assert new.kl == pytest.approx(ref.kl, rel=1e-3)
            assert new.improvement == pytest.approx(ref.improvement, rel=1e-3)
            assert float((new_step - ref_step).norm() / ref_step.norm()) < 1e-2
    assert accepted >= 3  # the comparison covers real steps
