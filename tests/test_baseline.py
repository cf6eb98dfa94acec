import pytest
import torch
from conftest import random_episodes

from caml_rl.baseline import baseline_features, fit_values


def test_features_are_the_documented_polynomials_with_clamped_obs_and_masked_rows():
    obs = torch.tensor([[[[0.5, -12.0]]], [[[2.0, 3.0]]], [[[1.0, 1.0]]]], dtype=torch.float64)  # [T=3, 1, 1, 2]
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64).view(3, 1, 1)
    feats = baseline_features(obs, mask)[:, 0, 0]
    # hand values in float64 (t = 1/100 and its powers as decimals: ~1e-18 apart); default rtol 1e-7
    by_hand = torch.tensor(
        [
            [0.5, -10.0, 0.25, 100.0, 0.0, 0.0, 0.0, 1.0],  # obs clamped to [-10, 10]; t = step / 100
            [2.0, 3.0, 4.0, 9.0, 0.01, 0.0001, 0.000001, 1.0],
            [0.0] * 8,  # a padded step is a zero row
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(feats, by_hand)


def test_fit_recovers_explicit_polynomial_targets_per_task():
    ep = random_episodes(T=10, tasks=3, eps=6)
    o, t = ep.obs, (torch.arange(10, dtype=torch.float64) / 100).view(-1, 1, 1)
    # a different target per task, written out from the observation and the step (|obs| < 10 here)
    target = torch.stack(
        [
            2.0 * o[:, 0, :, 0] - o[:, 0, :, 1] ** 2 + 3.0,
            5.0 * t[:, 0] - 7.0 * t[:, 0] ** 3 + o[:, 1, :, 1],
            -(o[:, 2, :, 0] ** 2) + 0.5 * t[:, 0] ** 2 - 1.0,
        ],
        dim=1,
    )
    assert o.abs().max() < 10
    values = fit_values(ep.obs, target, ep.mask, reg=1e-10)
    # the ridge (1e-10 on the poorly scaled t^3 column) moves the fit by up to 5.4e-6 in exact arithmetic
    # (50-digit solve); float64 rounding adds 2e-14. So 1e-5 holds on any machine, and a wrong feature is O(1)
    torch.testing.assert_close(values, target * ep.mask, atol=1e-5, rtol=1e-5)


def test_padded_steps_do_not_produce_nan_and_stay_zero():
    ep = random_episodes(T=10, tasks=2, eps=3)
    ep.mask[:, 1] = 0  # a task whose episodes are all padding: singular system
    ep.mask[0, 1] = 1
    values = fit_values(ep.obs, ep.rewards, ep.mask)
    assert torch.isfinite(values).all()
    assert (values[ep.mask == 0] == 0).all()  # exact: masked rows are multiplied by 0


def test_regularisation_is_raised_when_the_solve_fails(monkeypatch):
    ep = random_episodes(T=4, tasks=1, eps=1, ragged=False)
    calls = []
    cholesky_ex = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a: calls.append(1) or cholesky_ex(a))
    # zero regularisation and fewer rows (4) than features (8): singular; the retry with a small
    # ridge then interpolates the 4 targets
    values = fit_values(ep.obs, ep.rewards, ep.mask, reg=0.0)
    assert len(calls) >= 2
    # the first retry's ridge (1e-7) leaves 7e-8 in exact arithmetic, even 1e-5 leaves 7e-6; rounding 1e-15
    torch.testing.assert_close(values, ep.rewards, atol=1e-4, rtol=0)


def test_a_solve_that_never_succeeds_names_the_task():
    ep = random_episodes(T=4, tasks=2, eps=1, ragged=False)
    ep.obs[0, 1, 0, 0] = float("nan")  # no ridge makes a NaN system positive definite
    with pytest.raises(FloatingPointError, match=r"baseline solve failed for tasks \[1\]"):
        fit_values(ep.obs, ep.rewards, ep.mask)
