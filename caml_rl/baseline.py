"""Linear feature baseline (Duan et al. 2016), fitted per task in one batched solve."""

from __future__ import annotations

import torch

from .episodes import Episodes, discounted_returns


def baseline_features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[obs, obs^2, t, t^2, t^3, 1]`` with ``t = step/100``; zero rows on masked steps.

    ``obs: [T, tasks, episodes, obs_dim]`` -> ``[T, tasks, episodes, 2 * obs_dim + 4]``.
    """
    o = obs.clamp(-10, 10)
    t = torch.arange(obs.shape[0], device=obs.device, dtype=obs.dtype) / 100.0
    t = t.view(-1, 1, 1, 1).expand(*obs.shape[:-1], 1)
    feats = torch.cat([o, o * o, t, t * t, t**3, torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1)


def fit_values(
    obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float = 1e-5, max_tries: int = 6
) -> torch.Tensor:
    """Ridge-regress each task's returns on its features; returns fitted values ``[T, tasks, episodes]``.

    The solve runs in float64 as one Cholesky over ``[tasks, F, F]``; a task whose system is
    not positive definite retries with ten times the regularisation (padded rows are zero, so
    they add nothing to the normal equations and cannot produce NaN).
    """
    x = baseline_features(obs, mask).double()  # [T, tasks, E, F]
    n_tasks, n_feat = x.shape[1], x.shape[-1]
    x_task = x.transpose(0, 1).reshape(n_tasks, -1, n_feat)  # [tasks, T*E, F]
    y_task = (returns * mask).double().transpose(0, 1).reshape(n_tasks, -1, 1)
    xtx = x_task.transpose(1, 2) @ x_task
    xty = x_task.transpose(1, 2) @ y_task
    eye = torch.eye(n_feat, dtype=torch.float64, device=obs.device)
    regs = torch.full((n_tasks, 1, 1), reg, dtype=torch.float64, device=obs.device)
    for _ in range(max_tries):
        chol, info = torch.linalg.cholesky_ex(xtx + regs * eye)
        failed = info != 0
        if not failed.any():
            break
        regs = torch.where(failed.view(-1, 1, 1), regs.clamp(min=1e-8) * 10, regs)
    else:
        raise FloatingPointError(f"baseline solve failed for tasks {failed.nonzero().flatten().tolist()}")
    coef = torch.cholesky_solve(xty, chol)  # [tasks, F, 1]
    values = torch.einsum("tbef,bf->tbe", x, coef.squeeze(-1))
    return values.to(obs.dtype) * mask


def fit_baseline_values(episodes: Episodes, gamma: float) -> torch.Tensor:
    """Fit the baseline on these episodes' own discounted returns and evaluate it on them."""
    return fit_values(episodes.obs, discounted_returns(episodes, gamma), episodes.mask)
