"""The meta-update as it was before issue 33, kept only as the reference the faster one is tested
against: the metric as the double backward of the KL's gradient, after re-taking the inner step on
the metric's tasks, and one more Fisher-vector product for the step's length."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from caml_rl.config import AdaptationConfig, TRPOConfig
from caml_rl.meta import MetaBatch, _subsample_episodes, _subsample_tasks, mean_kl, readapt, surrogate_loss
from caml_rl.partition import detach_offset, policy_forward
from caml_rl.policies import ContextMLPPolicy
from caml_rl.trpo import TRPOStats, conjugate_gradient


def reference_fvp(
    policy: ContextMLPPolicy,
    names: tuple[str, ...],
    batch: MetaBatch,
    adapt_cfg: AdaptationConfig,
    trpo_cfg: TRPOConfig,
    generator: torch.Generator,
    old_out: tuple[torch.Tensor, ...],
) -> Callable[[torch.Tensor], torch.Tensor]:
    params = list(policy.parameters())
    fisher, fraction = trpo_cfg.metric(adapts_weights=any(n != "context" for n in names))
    if fisher == "fixed":
        kl_ep, kl_old = _subsample_episodes(batch.post, old_out, fraction, generator)
        kl_fast = detach_offset(batch.start, batch.fast)
    else:
        batch, kl_old, _ = _subsample_tasks(batch, old_out, fraction, generator)
        kl_ep = batch.post
        kl_fast = readapt(policy, names, batch, adapt_cfg, create_graph=True)
    kl = mean_kl(policy, kl_ep, kl_old, policy_forward(policy, kl_ep.obs, kl_fast))
    kl_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, params, create_graph=True)])

    def fvp(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(kl_grad @ v, params, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).detach()

    return fvp


def reference_trpo_step(params, loss, fvp, evaluate, max_kl, cg_iters, cg_damping, ls_steps, ls_backtrack):
    old = parameters_to_vector(params).detach().clone()
    g = parameters_to_vector(torch.autograd.grad(loss, params)).detach()
    loss_before = float(loss.detach())

    def reject(reason: str, evaluations: int = 0) -> TRPOStats:
        vector_to_parameters(old, params)
        return TRPOStats(False, reason, math.nan, math.nan, loss_before, evaluations, 0.0)

    def damped(v: torch.Tensor) -> torch.Tensor:
        return fvp(v) + cg_damping * v

    direction = conjugate_gradient(damped, g, cg_iters)
    shs = 0.5 * (direction @ damped(direction))
    if not bool(torch.isfinite(shs)) or shs <= 0:
        return reject("non_finite_step")
    full_step = direction * torch.sqrt(max_kl / shs)
    reason = "no_improvement"
    with torch.no_grad():
        for i in range(ls_steps):
            fraction = ls_backtrack**i
            vector_to_parameters(old - fraction * full_step, params)
            new_loss, kl = evaluate()
            if new_loss < loss_before and kl <= max_kl:
                return TRPOStats(True, "accepted", kl, loss_before - new_loss, loss_before, i + 1, fraction)
            reason = "no_improvement" if new_loss >= loss_before else "kl_exceeded"
    return reject(reason, ls_steps)


def reference_meta_update(
    policy: ContextMLPPolicy,
    names: tuple[str, ...],
    batch: MetaBatch,
    adapt_cfg: AdaptationConfig,
    trpo_cfg: TRPOConfig,
    generator: torch.Generator,
) -> TRPOStats:
    post = batch.post
    out = policy_forward(policy, post.obs, batch.fast)
    old_out = tuple(o.detach() for o in out)
    old_logp = policy.distribution(old_out).log_prob(post.actions)
    loss = surrogate_loss(policy, batch, out, old_logp)
    fvp = reference_fvp(policy, names, batch, adapt_cfg, trpo_cfg, generator, old_out)

    def evaluate() -> tuple[float, float]:
        with torch.enable_grad():
            new_fast = readapt(policy, names, batch, adapt_cfg, create_graph=False)
        with torch.no_grad():
            new_out = policy_forward(policy, post.obs, new_fast)
            new_loss = surrogate_loss(policy, batch, new_out, old_logp)
            return float(new_loss), float(mean_kl(policy, post, old_out, new_out))

    cfg = trpo_cfg
    return reference_trpo_step(
        list(policy.parameters()),
        loss,
        fvp,
        evaluate,
        cfg.max_kl,
        cfg.cg_iters,
        cfg.cg_damping,
        cfg.ls_steps,
        cfg.ls_backtrack,
    )
