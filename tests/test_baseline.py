import torch
from conftest import random_episodes

from caml_rl.baseline import baseline_features, fit_values


def test_fit_recovers_representable_targets_per_task():
    ep = random_episodes(T=10, tasks=3, eps=6)
    feats = baseline_features(ep.obs, ep.mask)
    coef = torch.randn(3, feats.shape[-1], dtype=torch.float64)  # a different linear target per task
    target = torch.einsum("tbef,bf->tbe", feats, coef)
    values = fit_values(ep.obs, target, ep.mask, reg=1e-10)
    torch.testing.assert_close(values, target * ep.mask, atol=1e-5, rtol=1e-5)


def test_padded_steps_do_not_produce_nan_and_stay_zero():
    ep = random_episodes(T=10, tasks=2, eps=3)
    ep.mask[:, 1] = 0  # a task whose episodes are all padding: singular system
    ep.mask[0, 1] = 1
    values = fit_values(ep.obs, ep.rewards, ep.mask)
    assert torch.isfinite(values).all()
    assert (values[ep.mask == 0] == 0).all()


def test_regularisation_is_raised_when_the_solve_fails():
    ep = random_episodes(T=4, tasks=1, eps=1, ragged=False)
    # zero regularisation and fewer rows than features: singular, must still solve
    values = fit_values(ep.obs, ep.rewards, ep.mask, reg=0.0)
    assert torch.isfinite(values).all()
