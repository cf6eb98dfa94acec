"""The PPO/ProMP outer loop: epochs of Adam steps on a clipped surrogate of the adapted policy.

ProMP (Rothfuss et al. 2019), for CAML and MAML alike: at every gradient step the inner step is
re-taken, differentiably, from the shared parameters as they are now (on the pre-adaptation
episodes of the step's tasks); the loss is PPO's clipped surrogate of that adapted policy on the
post-adaptation episodes, importance-weighted against the adapted policy that sampled them,
plus ``kl_coef`` times the KL from the pre-update policy that sampled to the current one. Each
sample is used ``epochs`` times and no conjugate gradient or line search is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .adaptation import adapt, log_probs, masked_task_mean
from .config import AdaptationConfig, PPOConfig
from .episodes import select_tasks
from .meta import MetaBatch, mean_kl, readapt
from .partition import FastWeights, initial_fast_weights, policy_forward
from .policies import ContextMLPPolicy


@dataclass
class PPOStats:
    loss: float  # mean loss (clipped surrogate + KL penalty) over the Adam steps taken
    kl: float  # KL(adapted policy that sampled || adapted policy now) on the post episodes, after the update
    kl_pre: float  # KL(pre-update policy that sampled || pre-update policy now) on the pre episodes, after
    clip_fraction: float  # fraction of post-adaptation steps whose ratio lay outside the clip range (per
    # minibatch: its clipped steps over its valid steps, summed over workers; then averaged over the Adam steps)
    kl_coef: float  # the penalty weight this iteration used
    steps: int  # Adam steps taken
    skipped: int  # gradient steps skipped because the loss or a gradient was not finite


class MetaPPO:
    """The outer loop's state: Adam on the shared parameters and ProMP's KL-penalty weight.
    Saved with every checkpoint, so a resumed run continues exactly."""

    def __init__(self, policy: torch.nn.Module, cfg: PPOConfig):
        self.cfg = cfg
        self.adam = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        self.kl_coef = float(cfg.kl_coef)

    def state_dict(self) -> dict[str, Any]:
        return {"adam": self.adam.state_dict(), "kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adam.load_state_dict(state["adam"])
        self.kl_coef = float(state["kl_coef"])


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's loss ``-mean over tasks of mean(min(r A, clip(r) A))`` and the clipped fraction of steps."""
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = -masked_task_mean(torch.minimum(ratio * adv, clipped * adv), mask).mean()
    outside, valid = clipped_steps(ratio, mask, clip_range)
    return loss, outside / valid.clamp(min=1)


def clipped_steps(ratio: torch.Tensor, mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(steps whose ratio lies outside the clip range, valid steps)``: counts, so that workers
    holding different numbers of steps add up to the whole minibatch's fraction."""
    outside = ((ratio - 1.0).abs() > clip_range).to(mask.dtype)
    return (outside * mask).sum(), mask.sum()


def adapted_kl_coef(coef: float, kl: float, target: float) -> float:
    """ProMP's rule: halve the penalty when the KL stayed below target/1.5, double it above 1.5 x target."""
    if kl < target / 1.5:
        return coef / 2
    if kl > target * 1.5:
        return coef * 2
    return coef


def _detached(fast: FastWeights) -> FastWeights:
    return {k: v.detach() for k, v in fast.items()}


def _step(
    state: MetaPPO, params: list[torch.Tensor], flat: torch.Tensor, losses: list, fractions: list, skipped: int
) -> tuple[list, list, int]:
    """One Adam step from ``flat`` = (gradient, loss, clipped steps, valid steps), averaged over
    workers; skipped (weights and moments untouched) when anything in it is not finite."""
    if not bool(torch.isfinite(flat).all()):
        return losses, fractions, skipped + 1
    grad = flat[:-3]
    if state.cfg.max_grad_norm is not None:
        grad = grad * torch.clamp(state.cfg.max_grad_norm / (grad.norm() + 1e-12), max=1.0)
    offset = 0
    for p in params:
        p.grad = grad[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    state.adam.step()
    state.adam.zero_grad(set_to_none=True)
    fraction = float(flat[-2] / flat[-1]) if float(flat[-1]) > 0 else 0.0  # a ratio of sums over workers
    return [*losses, float(flat[-3])], [*fractions, fraction], skipped


def ppo_update(
    policy: ContextMLPPolicy,
    names: tuple[str, ...],
    batch: MetaBatch,
    adapt_cfg: AdaptationConfig,
    state: MetaPPO,
    generator: torch.Generator,
    average: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    shard: tuple[int, int] | None = None,
) -> PPOStats:
    """``epochs x minibatches`` Adam steps on ``policy``'s parameters (in place).

    Minibatches are drawn over the whole meta-batch. Under distributed workers ``shard`` is
    ``(first task, meta-batch size)``: each worker holds an equal slice of the tasks, computes its
    part of each minibatch's loss, and ``average`` (the mean over workers) makes every gradient the
    whole minibatch's, so all workers take the steps one process would. A step whose loss or
    gradient is not finite on any worker is skipped by all of them, leaving the weights and Adam's
    moments untouched.
    """
    cfg, pre, post = state.cfg, batch.pre, batch.post
    params = list(policy.parameters())
    with torch.no_grad():  # the policies that sampled, before any step changes the shared weights
        old_post_out = tuple(o.detach() for o in policy_forward(policy, post.obs, _detached(batch.fast)))
        old_post_logp = policy.distribution(old_post_out).log_prob(post.actions)
        old_pre_out = tuple(o.detach() for o in policy_forward(policy, pre.obs, _detached(batch.start)))
    num_tasks = pre.num_tasks
    first, total = shard if shard is not None else (0, num_tasks)
    workers = total // num_tasks
    losses, clip_fractions, skipped = [], [], 0
    for _ in range(cfg.epochs):
        order = torch.randperm(total, generator=generator, device=generator.device).to(pre.obs.device)
        for chunk in order.tensor_split(cfg.minibatches):
            idx = chunk[(chunk >= first) & (chunk < first + num_tasks)] - first  # this worker's share
            # the minibatch's mean over tasks = the mean over workers of (sum over own tasks x workers / size)
            weight = len(idx) * workers / len(chunk)
            if len(idx) == 0:
                flat = torch.zeros(sum(p.numel() for p in params) + 3, dtype=params[0].dtype, device=params[0].device)
                losses, clip_fractions, skipped = _step(state, params, average(flat), losses, clip_fractions, skipped)
                continue
            sub_pre, sub_post = select_tasks(pre, idx), select_tasks(post, idx)
            start = initial_fast_weights(policy, names, len(idx))
            behaviour = batch.pre_logp[:, idx] if batch.pre_logp is not None else None
            fast = adapt(
                policy,
                start,
                sub_pre,
                batch.pre_adv[:, idx],
                adapt_cfg.inner_lr,
                adapt_cfg.inner_steps,
                not adapt_cfg.first_order,
                adapt_cfg.inner_objective,
                behaviour,
            )
            logp = log_probs(policy, sub_post, fast)
            old_logp = old_post_logp[:, idx]
            loss, _ = clipped_surrogate(logp, old_logp, batch.post_adv[:, idx], sub_post.mask, cfg.clip_range)
            outside, valid = clipped_steps(torch.exp(logp.detach() - old_logp), sub_post.mask, cfg.clip_range)
            if state.kl_coef > 0:
                old = tuple(o[:, idx] for o in old_pre_out)
                loss = loss + state.kl_coef * mean_kl(policy, sub_pre, old, policy_forward(policy, sub_pre.obs, start))
            loss = loss * weight
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            flat = torch.cat(
                [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]
                + [loss.detach().reshape(1), outside.reshape(1), valid.reshape(1)]
            )
            losses, clip_fractions, skipped = _step(state, params, average(flat), losses, clip_fractions, skipped)
    with torch.enable_grad():  # the inner step needs gradients
        new_fast = readapt(policy, names, batch, adapt_cfg, create_graph=False)
    with torch.no_grad():
        kl = mean_kl(policy, post, old_post_out, policy_forward(policy, post.obs, new_fast))
        start = initial_fast_weights(policy, names, num_tasks)
        kl_pre = mean_kl(policy, pre, old_pre_out, policy_forward(policy, pre.obs, start))
        kls = average(torch.stack([kl, kl_pre]).double())
    used = state.kl_coef
    if cfg.kl_target is not None and used > 0:
        state.kl_coef = adapted_kl_coef(used, float(kls[1]), cfg.kl_target)
    mean = (lambda xs: sum(xs) / len(xs)) if losses else (lambda xs: float("nan"))
    return PPOStats(
        loss=mean(losses),
        kl=float(kls[0]),
        kl_pre=float(kls[1]),
        clip_fraction=mean(clip_fractions),
        kl_coef=used,
        steps=len(losses),
        skipped=skipped,
    )
