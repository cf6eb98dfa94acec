"""Trust-region step (Schulman et al. 2015) as pure functions over a list of parameters.

The caller supplies the loss with its graph, a Fisher-vector product and an evaluator for the
line search; nothing here knows about policies or tasks, which keeps the maths testable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .timing import section


@dataclass
class TRPOStats:
    accepted: bool
    reason: str  # "accepted", "no_improvement", "kl_exceeded", "non_finite_gradient", "non_finite_step"
    kl: float  # KL of the accepted step (nan if rejected)
    improvement: float  # old loss - new loss of the accepted step (nan if rejected)
    loss_before: float
    line_search_evaluations: int  # candidate steps evaluated (1: the full step was accepted)
    step_fraction: float  # fraction of the full trust-region step taken (0 if rejected)


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10, tol: float = 1e-10
) -> torch.Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given ``x -> A x``."""
    return conjugate_gradient_with_product(matvec, b, iters, tol)[0]


def conjugate_gradient_with_product(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10, tol: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, A x)``: the solution and its product, ``A x = sum alpha_k A p_k`` summed from the
    products CG takes anyway, which saves TRPO one product for the step's length."""
    x = torch.zeros_like(b)
    ax = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        ax = ax + alpha * ap
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, ax


def _finite(*xs: float | torch.Tensor) -> bool:
    return all(bool(torch.isfinite(torch.as_tensor(x)).all()) for x in xs)


def trpo_step(
    params: list[torch.Tensor],
    loss: torch.Tensor,
    fisher_vector_product: Callable[[torch.Tensor], torch.Tensor],
    evaluate: Callable[[], tuple[float, float]],
    max_kl: float = 0.01,
    cg_iters: int = 10,
    cg_damping: float = 1e-5,
    ls_steps: int = 15,
    ls_backtrack: float = 0.8,
    average: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    gradient: torch.Tensor | None = None,
) -> TRPOStats:
    """Take one TRPO step on ``params`` in place, or leave them exactly as they were.

    ``evaluate()`` returns ``(loss, kl)`` at the parameters currently written, KL measured
    from the parameters before the step. A step is accepted only if the loss falls, the KL is
    within ``max_kl`` and both are finite; anything non-finite counts as a rejection.
    ``average`` takes the mean over distributed workers of every loss, KL, gradient and
    Fisher-vector product, so that all workers reach the same decisions. ``gradient``: the
    loss's gradient, flat, if the caller computed it already (with the metric's graph).
    """
    old = parameters_to_vector(params).detach().clone()
    if gradient is None:
        with section("meta_gradient"):
            gradient = parameters_to_vector(torch.autograd.grad(loss, params)).detach()
    g_and_loss = average(torch.cat([gradient, loss.detach().reshape(1)]))
    g, loss_before = g_and_loss[:-1], float(g_and_loss[-1])

    def reject(reason: str, evaluations: int = 0) -> TRPOStats:
        vector_to_parameters(old, params)
        return TRPOStats(False, reason, math.nan, math.nan, loss_before, evaluations, 0.0)

    if not _finite(g, loss_before):
        return reject("non_finite_gradient")

    def damped(v: torch.Tensor) -> torch.Tensor:
        return average(fisher_vector_product(v)) + cg_damping * v

    with section("conjugate_gradient"):
        direction, product = conjugate_gradient_with_product(damped, g, cg_iters)
    shs = 0.5 * (direction @ product)
    if not _finite(direction, shs) or shs <= 0:
        return reject("non_finite_step")
    full_step = direction * torch.sqrt(max_kl / shs)

    reason = "no_improvement"
    with torch.no_grad():
        for i in range(ls_steps):
            fraction = ls_backtrack**i
            vector_to_parameters(old - fraction * full_step, params)
            with section("line_search_candidate"):
                new_loss, kl = (float(x) for x in average(torch.tensor(evaluate(), dtype=torch.float64)))
            if not _finite(new_loss, kl):
                reason = "non_finite_step"
                continue
            if new_loss < loss_before and kl <= max_kl:
                return TRPOStats(True, "accepted", kl, loss_before - new_loss, loss_before, i + 1, fraction)
            reason = "no_improvement" if new_loss >= loss_before else "kl_exceeded"
    return reject(reason, ls_steps)
