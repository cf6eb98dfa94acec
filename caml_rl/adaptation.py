"""The inner loop: REINFORCE loss per task and batched gradient steps on the fast values."""

from __future__ import annotations

import torch

from .baseline import fit_baseline_values
from .episodes import Episodes, gae, normalize_per_task
from .partition import FastWeights, policy_forward
from .policies import ContextMLPPolicy


def advantages(episodes: Episodes, gamma: float, gae_lambda: float) -> torch.Tensor:
    """Per-task normalised GAE over a per-task linear baseline fitted on these episodes."""
    with torch.no_grad():
        values = fit_baseline_values(episodes, gamma)
        adv = gae(episodes.rewards, values, episodes.mask, gamma, gae_lambda)
        return normalize_per_task(adv, episodes.mask)


def log_probs(policy: ContextMLPPolicy, episodes: Episodes, fast: FastWeights) -> torch.Tensor:
    """Joint log-prob of each taken action, ``[T, tasks, episodes]``."""
    return policy.distribution(policy_forward(policy, episodes.obs, fast)).log_prob(episodes.actions)


def masked_task_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each task's valid steps: ``[T, tasks, episodes] -> [tasks]``."""
    return (x * mask).sum((0, 2)) / mask.sum((0, 2)).clamp(min=1)


def inner_loss(policy: ContextMLPPolicy, fast: FastWeights, episodes: Episodes, adv: torch.Tensor) -> torch.Tensor:
    """REINFORCE loss of each task, ``[tasks]``: ``-mean(log pi(a|s) * A)``."""
    return -masked_task_mean(log_probs(policy, episodes, fast) * adv, episodes.mask)


def adapt(
    policy: ContextMLPPolicy,
    fast: FastWeights,
    episodes: Episodes,
    adv: torch.Tensor,
    lr: float,
    steps: int = 1,
    create_graph: bool = True,
) -> FastWeights:
    """``steps`` gradient steps of size ``lr`` on every task's fast values at once.

    Summing the per-task losses gives each task's own gradient in one backward pass, because a
    task's fast values touch only its own loss. With ``create_graph`` the result stays
    differentiable in the shared parameters (second-order meta-gradient); without it the
    gradients are constants (first-order), and only the starting values carry the dependence.
    """
    for _ in range(steps):
        with torch.enable_grad():
            loss = inner_loss(policy, fast, episodes, adv).sum()
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
        fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
    return fast
