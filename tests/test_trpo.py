import math

import torch

from caml_rl.trpo import conjugate_gradient, trpo_step


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6)
    # float64, n = 6 iterations on a well-conditioned (eigenvalues >= 6) system: ~1e-14; default rtol 1e-7
    torch.testing.assert_close(x, torch.linalg.solve(a, b))


def gaussian_problem(target=3.0):
    """A 2-parameter Gaussian 'policy' (mean, log_std); loss pulls the mean to ``target``."""
    theta = torch.nn.Parameter(torch.tensor([0.0, 0.0], dtype=torch.float64))
    old = theta.detach().clone()

    def loss_fn():
        return (theta[0] - target) ** 2

    def kl_fn():  # KL(N(old) || N(theta))
        m0, s0, m1, s1 = old[0], old[1].exp(), theta[0], theta[1].exp()
        return torch.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5

    kl_grad = torch.autograd.grad(kl_fn(), [theta], create_graph=True)[0]

    def fvp(v):
        return torch.autograd.grad(kl_grad @ v, [theta], retain_graph=True)[0].detach()

    def evaluate():
        return float(loss_fn()), float(kl_fn())

    return theta, loss_fn, fvp, evaluate


def test_accepted_step_improves_and_respects_kl():
    theta, loss_fn, fvp, evaluate = gaussian_problem()
    stats = trpo_step([theta], loss_fn(), fvp, evaluate, max_kl=0.01)
    assert stats.accepted and stats.reason == "accepted"
    assert stats.kl <= 0.01  # the damping keeps it 1e-5 (relative) below, far beyond float64 rounding
    assert float(loss_fn().detach()) < stats.loss_before
    # The Fisher of the mean is 1/sigma^2 = 1 and the gradient is (-6, 0), so the natural direction is
    # (6, 0) and the full step sqrt(2 max_kl / 36) * (6, 0) = (0.1414, 0): a KL of m^2 / 2 = max_kl,
    # exact here (the KL is quadratic in the mean), so the first candidate is taken.
    assert stats.line_search_evaluations == 1 and stats.step_fraction == 1.0
    # rel 1e-4: the damping's ~1e-5 effect, not rounding (float64, ~1e-16). log_std is exactly 0: its gradient
    # and the metric's cross term are products with m0 - m1 = 0, so its step is 0 in any rounding
    assert math.isclose(theta[0].item(), math.sqrt(0.02), rel_tol=1e-4) and theta[1].item() == 0.0
    assert math.isclose(stats.kl, 0.01, rel_tol=1e-4)  # damping 1e-5 shortens it by that much
    assert math.isclose(stats.improvement, 9.0 - (3.0 - math.sqrt(0.02)) ** 2, rel_tol=1e-4)


def test_rejected_step_leaves_weights_untouched():
    theta, loss_fn, fvp, _ = gaussian_problem()
    before = theta.detach().clone()
    stats = trpo_step([theta], loss_fn(), fvp, lambda: (1e9, 0.0), max_kl=0.01, ls_steps=3)
    assert not stats.accepted and stats.reason == "no_improvement"
    assert torch.equal(theta.detach(), before)  # exact: untouched weights (so in the rest of this file)


def test_kl_violation_is_rejected():
    theta, loss_fn, fvp, _ = gaussian_problem()
    before = theta.detach().clone()
    stats = trpo_step([theta], loss_fn(), fvp, lambda: (-1.0, 1.0), max_kl=0.01, ls_steps=3)
    assert stats.reason == "kl_exceeded" and torch.equal(theta.detach(), before)


def test_non_finite_loss_or_gradient_never_reaches_the_weights():
    theta, _, fvp, evaluate = gaussian_problem()
    before = theta.detach().clone()
    stats = trpo_step([theta], theta[0] * float("nan"), fvp, evaluate)
    assert stats.reason == "non_finite_gradient" and torch.equal(theta.detach(), before)
    theta, loss_fn, fvp, _ = gaussian_problem()
    before = theta.detach().clone()
    stats = trpo_step([theta], loss_fn(), fvp, lambda: (math.nan, math.nan), ls_steps=4)
    assert not stats.accepted and stats.reason == "non_finite_step"
    assert torch.equal(theta.detach(), before)
