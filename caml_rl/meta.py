"""The meta-update: TRPO on the shared parameters, differentiated through the inner step.

The outer loss is the importance-weighted surrogate of the *adapted* policy on the
post-adaptation episodes, averaged over tasks; the trust region is the mean KL over tasks
between the policy that sampled those episodes and the candidate, re-adapted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.distributions import kl_divergence

from .adaptation import adapt, masked_task_mean
from .config import AdaptationConfig, TRPOConfig
from .episodes import Episodes, select_tasks
from .partition import FastWeights, detach_offset, initial_fast_weights, policy_forward
from .policies import ContextMLPPolicy
from .timing import section
from .trpo import TRPOStats, trpo_step


@dataclass
class MetaBatch:
    """Everything one meta-update needs, per task: episodes and advantages before and after,
    and the adaptation that produced the post-adaptation policy, still differentiable in the
    shared parameters (computed once, before sampling, and reused for the meta-gradient)."""

    pre: Episodes
    pre_adv: torch.Tensor
    post: Episodes
    post_adv: torch.Tensor
    start: FastWeights  # each task's starting values
    fast: (
        FastWeights  # the adapted values; for TRPO with their graph (second order unless first_order), for PPO detached
    )
    pre_logp: torch.Tensor | None = None  # log-probs of the pre-episodes' actions when sampled (lvc's pi_old)


def _subsample_episodes(
    ep: Episodes, params: tuple[torch.Tensor, ...], fraction: float, gen: torch.Generator
) -> tuple[Episodes, tuple[torch.Tensor, ...]]:
    """The same random subset of episode slots for every task (keeps the batch layout)."""
    n = ep.rewards.shape[2]
    k = max(1, round(n * fraction))
    if k >= n:
        return ep, params
    idx = torch.randperm(n, generator=gen, device=gen.device)[:k].to(ep.obs.device)
    sub = Episodes(ep.obs[:, :, idx], ep.actions[:, :, idx], ep.rewards[:, :, idx], ep.mask[:, :, idx])
    return sub, tuple(p[:, :, idx] for p in params)


def _subsample_tasks(
    batch: MetaBatch,
    params: tuple[torch.Tensor, ...],
    fraction: float,
    gen: torch.Generator,
    shard: tuple[int, int] | None = None,
) -> tuple[MetaBatch, tuple[torch.Tensor, ...], float]:
    """A random subset of whole tasks: what the full metric needs, since re-taking a task's inner
    step needs all its pre-adaptation episodes. The mean KL over tasks is a mean of per-task terms,
    so its Hessian on the subset estimates the whole batch's without bias.

    ``shard = (first_task, total_tasks)`` (distributed training): the subset is drawn over the whole
    meta-batch, as one process draws it, and this worker keeps the chosen tasks of its rows; the
    returned weight scales its mean KL so that the workers' average is the mean over the whole subset
    (0 when none of its tasks was chosen)."""
    n = batch.pre.num_tasks
    first, total = shard or (0, n)
    k = max(1, round(total * fraction))
    if k >= total:
        return batch, params, 1.0
    chosen = torch.randperm(total, generator=gen, device=gen.device)[:k]
    if shard is not None:
        chosen = chosen[(chosen >= first) & (chosen < first + n)] - first
    idx = chosen.to(batch.pre.obs.device)
    weight = 1.0 if shard is None else len(idx) * (total / n) / k
    sub = MetaBatch(
        pre=select_tasks(batch.pre, idx),
        pre_adv=batch.pre_adv[:, idx],
        post=select_tasks(batch.post, idx),
        post_adv=batch.post_adv[:, idx],
        start={name: v[idx] for name, v in batch.start.items()},
        fast={name: v[idx] for name, v in batch.fast.items()},
        pre_logp=None if batch.pre_logp is None else batch.pre_logp[:, idx],
    )
    return sub, tuple(p[:, idx] for p in params), weight


def surrogate_loss(
    policy: ContextMLPPolicy, batch: MetaBatch, params_out: tuple[torch.Tensor, ...], old_logp: torch.Tensor
) -> torch.Tensor:
    """The outer loss: ``-mean over tasks of mean(ratio * A)`` on the post-adaptation episodes."""
    logp = policy.distribution(params_out).log_prob(batch.post.actions)
    ratio = torch.exp(logp - old_logp)
    return -masked_task_mean(ratio * batch.post_adv, batch.post.mask).mean()


def mean_kl(
    policy: ContextMLPPolicy, ep: Episodes, old: tuple[torch.Tensor, ...], new: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """KL(old || new) averaged over each task's valid steps, then over tasks."""
    kl = kl_divergence(policy.distribution(old), policy.distribution(new))
    return masked_task_mean(kl, ep.mask).mean()


def readapt(
    policy: ContextMLPPolicy, names: tuple[str, ...], batch: MetaBatch, cfg: AdaptationConfig, create_graph: bool
) -> FastWeights:
    """The inner step again, from the shared parameters as they are now."""
    start = initial_fast_weights(policy, names, batch.pre.num_tasks)
    return adapt(
        policy,
        start,
        batch.pre,
        batch.pre_adv,
        cfg.inner_lr,
        cfg.inner_steps,
        create_graph,
        cfg.inner_objective,
        batch.pre_logp,
    )


@dataclass
class Metric:
    """The trust-region metric as a product ``v -> H v``, and the loss's gradient when the same
    backward pass computed it (the metric shares the surrogate's graph), else None."""

    product: Callable[[torch.Tensor], torch.Tensor]
    gradient: torch.Tensor | None = None


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def trust_region_metric(
    policy: ContextMLPPolicy,
    names: tuple[str, ...],
    batch: MetaBatch,
    old_out: tuple[torch.Tensor, ...],
    adapt_cfg: AdaptationConfig,
    trpo_cfg: TRPOConfig,
    generator: torch.Generator,
    shard: tuple[int, int] | None = None,
    out: tuple[torch.Tensor, ...] | None = None,
    loss: torch.Tensor | None = None,
) -> Metric:
    """H, the Hessian in the shared parameters of the mean KL from the adapted policy, as a product.

    The ``full`` metric differentiates the KL through the inner step (pytorch-maml-rl's); ``fixed``
    holds the adaptation step constant (cheaper; exact for the parameters' direct effect only).
    ``auto`` picks full when network weights adapt (MAML: the fixed metric slows its learning
    several-fold, experiments/README.md) and fixed when only the context does. ``old_out``: the
    outputs of the adapted policy that sampled ``batch.post``, detached. ``shard``: this worker's
    rows of the meta-batch, for the task subsample (see ``_subsample_tasks``).

    The KL is zero with a zero gradient in the policy's outputs where it is measured (new = old, up
    to the rounding of a re-taken inner step), so its Hessian is ``J^T F J``: J the Jacobian of the
    outputs in the shared parameters (through the inner step for ``full``), F the KL's Hessian in
    the outputs. Each product is one Jacobian-vector product (the backward of ``u -> J^T u``, built
    once) and one backward through the outputs' graph. The double backward of the KL's gradient
    that this replaces computed the same plus terms multiplied by that zero gradient, at 1.5x (CAML
    headline) and 2x (MAML headline) the cost. When the metric covers the whole batch under
    ``full``, it reuses the inner step and forward the surrogate built (``out``, with ``loss`` on
    it) instead of re-taking the inner step, and the backward that builds ``u -> J^T u`` starts at
    the loss's gradient in the outputs, so its value is the meta-gradient.
    """
    params = list(policy.parameters())
    fisher, fraction = trpo_cfg.metric(adapts_weights=any(n != "context" for n in names))
    weight = 1.0
    kl_out = None
    if fisher == "fixed":
        kl_ep, kl_old = _subsample_episodes(batch.post, old_out, fraction, generator)
        kl_fast = detach_offset(batch.start, batch.fast)
    else:
        sub, kl_old, weight = _subsample_tasks(batch, old_out, fraction, generator, shard)
        if weight == 0:  # none of this worker's tasks is in the subsample: it adds nothing to the average
            return Metric(lambda v: torch.zeros_like(v))
        kl_ep = sub.post
        if sub is batch and out is not None:
            kl_out = out  # the trainer's inner step, already differentiable: no second one
        else:
            kl_fast = readapt(policy, names, sub, adapt_cfg, create_graph=True)
    if kl_out is None:
        kl_out = policy_forward(policy, kl_ep.obs, kl_fast)
    outs = [o for o in kl_out if o.requires_grad]
    kl = mean_kl(policy, kl_ep, kl_old, kl_out)
    if weight != 1.0:
        kl = kl * weight
    kl_grad = torch.autograd.grad(kl, outs, create_graph=True)  # zero-valued; its graph gives F
    shared = kl_out is out and loss is not None
    if shared:
        with section("meta_gradient"):
            u = [g.detach().requires_grad_() for g in torch.autograd.grad(loss, outs, retain_graph=True)]
            jtu = torch.autograd.grad(outs, params, u, create_graph=True)  # J^T u, linear in u
    else:
        u = [torch.zeros_like(o, requires_grad=True) for o in outs]
        jtu = torch.autograd.grad(outs, params, u, create_graph=True)
    sizes = [p.numel() for p in params]

    def product(v: torch.Tensor) -> torch.Tensor:
        with section("fisher_vector_product"):
            vs = [x.view_as(p) for x, p in zip(v.split(sizes), params)]
            jv = torch.autograd.grad(jtu, u, vs, retain_graph=True)
            fjv = torch.autograd.grad(kl_grad, outs, jv, retain_graph=True)
            return _flat(torch.autograd.grad(outs, params, fjv, retain_graph=True)).detach()

    return Metric(product, _flat(jtu).detach() if shared else None)


def meta_update(
    policy: ContextMLPPolicy,
    names: tuple[str, ...],
    batch: MetaBatch,
    adapt_cfg: AdaptationConfig,
    trpo_cfg: TRPOConfig,
    generator: torch.Generator,
    average: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    shard: tuple[int, int] | None = None,
) -> TRPOStats:
    """One TRPO step on ``policy``'s parameters (in place), or none if the step is rejected.

    ``average`` is the mean over distributed workers (each holding a share of the tasks);
    ``shard = (first_task, total_tasks)`` names this worker's share."""
    post = batch.post
    # Meta-gradient: through the inner step the trainer already took (second order unless first_order).
    with section("surrogate"):
        out = policy_forward(policy, post.obs, batch.fast)
        old_out = tuple(o.detach() for o in out)
        old_logp = policy.distribution(old_out).log_prob(post.actions)
        loss = surrogate_loss(policy, batch, out, old_logp)
    with section("metric_build"):
        metric = trust_region_metric(policy, names, batch, old_out, adapt_cfg, trpo_cfg, generator, shard, out, loss)

    def evaluate() -> tuple[float, float]:
        with torch.enable_grad():  # the inner step needs gradients even inside the line search
            new_fast = readapt(policy, names, batch, adapt_cfg, create_graph=False)
        with torch.no_grad():
            new_out = policy_forward(policy, post.obs, new_fast)
            new_loss = surrogate_loss(policy, batch, new_out, old_logp)
            return float(new_loss), float(mean_kl(policy, post, old_out, new_out))

    return trpo_step(
        list(policy.parameters()),
        loss,
        metric.product,
        evaluate,
        max_kl=trpo_cfg.max_kl,
        cg_iters=trpo_cfg.cg_iters,
        cg_damping=trpo_cfg.cg_damping,
        ls_steps=trpo_cfg.ls_steps,
        ls_backtrack=trpo_cfg.ls_backtrack,
        average=average,
        gradient=metric.gradient,
    )
