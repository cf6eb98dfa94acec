"""The inner loop: the per-task policy-gradient loss and batched gradient steps on the fast values.

Two inner objectives with the same gradient at the policy that sampled the episodes:
``reinforce`` (``log pi * A``, the CAML/MAML papers') and ``lvc``, ProMP's low-variance-curvature
objective (``pi / pi_behaviour * A``, Rothfuss et al. 2019). In expectation LVC's Hessian is
``H1 + H2`` in ProMP's decomposition (its Section 5): the curvature of ``log pi`` weighted by the
return (``H2``, all that REINFORCE's surrogate gives) plus the score outer product
``grad log pi grad log pi^T`` weighted by the return (``H1``). It leaves out ``H12 + H12^T``, the
terms through ``grad Q``, so it is *not* an unbiased estimator of the Hessian or of the
meta-gradient taken through the inner step. What ProMP shows is that it has far lower variance
than the unbiased DiCE estimator, and argues (after Furmston et al. 2016) that the bias becomes
negligible close to local optima.
"""

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


INNER_OBJECTIVES = ("reinforce", "lvc")


def inner_loss(
    policy: ContextMLPPolicy,
    fast: FastWeights,
    episodes: Episodes,
    adv: torch.Tensor,
    objective: str = "reinforce",
    behaviour_logp: torch.Tensor | None = None,
) -> torch.Tensor:
    """The inner loss of each task, ``[tasks]``.

    ``reinforce``: ``-mean(log pi(a|s) * A)``. ``lvc``: ``-mean(pi(a|s) / pi_b(a|s) * A)`` with
    ``pi_b`` the policy that sampled the episodes (``behaviour_logp``, constant; default: the
    current values' own log-probs, detached, i.e. the episodes were sampled with ``fast``).
    """
    logp = log_probs(policy, episodes, fast)
    if objective == "lvc":
        old = logp.detach() if behaviour_logp is None else behaviour_logp
        return -masked_task_mean(torch.exp(logp - old) * adv, episodes.mask)
    if objective != "reinforce":
        raise ValueError(f"inner objective {objective!r}; allowed: {', '.join(INNER_OBJECTIVES)}")
    return -masked_task_mean(logp * adv, episodes.mask)


def adapt(
    policy: ContextMLPPolicy,
    fast: FastWeights,
    episodes: Episodes,
    adv: torch.Tensor,
    lr: float,
    steps: int = 1,
    create_graph: bool = True,
    objective: str = "reinforce",
    behaviour_logp: torch.Tensor | None = None,
) -> FastWeights:
    """``steps`` gradient steps of size ``lr`` on every task's fast values at once.

    Summing the per-task losses gives each task's own gradient in one backward pass, because a
    task's fast values touch only its own loss. With ``create_graph`` the result stays
    differentiable in the shared parameters (second-order meta-gradient); without it the
    gradients are constants (first-order), and only the starting values carry the dependence.
    ``objective``/``behaviour_logp``: see ``inner_loss``; under ``lvc`` the behaviour log-probs
    default to the starting values' (the episodes were sampled with them) for every step.
    """
    if objective == "lvc" and behaviour_logp is None:
        with torch.no_grad():
            behaviour_logp = log_probs(policy, episodes, fast)
    for _ in range(steps):
        with torch.enable_grad():
            loss = inner_loss(policy, fast, episodes, adv, objective, behaviour_logp).sum()
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
        fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
    return fast
