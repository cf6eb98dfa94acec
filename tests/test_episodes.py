import torch
from conftest import random_episodes

from caml_rl.adaptation import advantages
from caml_rl.baseline import fit_values
from caml_rl.episodes import Episodes, discounted_returns, gae, normalize_per_task


def test_gae_matches_hand_computation():
    # one episode of 3 steps then padding: r = [1, 2, 3], V = [0.5, 1.0, 1.5]
    r = torch.tensor([1.0, 2.0, 3.0, 0.0]).view(4, 1, 1)
    v = torch.tensor([0.5, 1.0, 1.5, 9.0]).view(4, 1, 1)  # the padded value must be ignored
    m = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(4, 1, 1)
    g, lam = 0.9, 0.5
    d2 = 3 - 1.5
    d1 = 2 + g * 1.5 - 1.0
    d0 = 1 + g * 1.0 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    out = gae(r, v, m, g, lam).flatten()
    # float32 against the hand computation in float64: default rtol 1.3e-6 (about 10 float32 ulp)
    torch.testing.assert_close(out, torch.tensor([a0, a1, a2, 0.0]))


def test_discounted_returns_reward_to_go():
    ep = random_episodes(T=5, tasks=1, eps=1, ragged=False)
    r = ep.rewards.flatten()
    expect = torch.stack([sum(0.9**k * r[t + k] for k in range(5 - t)) for t in range(5)])
    torch.testing.assert_close(discounted_returns(ep, 0.9).flatten(), expect)  # float64, reordered sums: ~1e-16


def test_gae_lambda_one_is_return_minus_value():
    ep = random_episodes()
    v = torch.randn_like(ep.rewards)
    # float64: the same identity by two recursions, ~1e-15 apart; default rtol 1e-7
    torch.testing.assert_close(gae(ep.rewards, v, ep.mask, 0.95, 1.0), (discounted_returns(ep, 0.95) - v) * ep.mask)


def test_normalize_per_task_zero_mean_unit_std_on_valid_steps():
    ep = random_episodes(T=8, tasks=3, eps=5)
    adv = normalize_per_task(torch.randn_like(ep.rewards) * 5 + 3, ep.mask)
    for k in range(3):
        valid = adv[:, k][ep.mask[:, k] > 0]
        # float64: rounding leaves ~1e-16; the 1e-8 added to the std lowers it by ~2e-9. A std over n - 1
        # would be 1.5-2.7% off with these 19-33 steps
        assert abs(valid.mean().item()) < 1e-6
        assert abs(valid.std(unbiased=False).item() - 1) < 1e-4
    assert (adv[ep.mask == 0] == 0).all()  # exact: padding is multiplied by 0


def test_returns_steps_and_success_on_a_ragged_batch_by_hand():
    rewards = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]], [[9.0, 10.0], [11.0, 12.0]]])
    mask = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])
    success = torch.tensor([[True, False], [True, True]])
    ep = Episodes(torch.zeros(3, 2, 2, 1), torch.zeros(3, 2, 2, 1), rewards * mask, mask, success)
    assert ep.num_steps == 2 + 1 + 3 + 2 and ep.num_tasks == 2
    # task 0: episodes of lengths 2 and 1; task 1: lengths 3 and 2. Exact: sums and halves of small integers
    assert ep.episode_returns().tolist() == [[1 + 5, 2], [3 + 7 + 11, 4 + 8]]
    assert ep.task_returns().tolist() == [(6 + 2) / 2, (21 + 12) / 2]
    assert ep.task_success().tolist() == [0.5, 1.0]
    assert Episodes(ep.obs, ep.actions, ep.rewards, ep.mask).task_success() is None


def test_advantages_are_normalised_gae_over_the_fitted_baseline():
    """gamma != lambda, so swapping them would show; checked against the pieces composed by hand."""
    ep = random_episodes(T=8, tasks=2, eps=3, seed=4)
    gamma, lam = 0.9, 0.5
    values = fit_values(ep.obs, discounted_returns(ep, gamma), ep.mask)
    raw = gae(ep.rewards, values, ep.mask, gamma, lam)
    adv = advantages(ep, gamma, lam)
    for b in range(2):
        valid = ep.mask[:, b] > 0
        a, r = adv[:, b][valid], raw[:, b][valid]
        # float64, the same formula (default rtol 1e-7); mean and std as above, rounding ~1e-15
        torch.testing.assert_close(a, (r - r.mean()) / (r.std(unbiased=False) + 1e-8))
        assert abs(float(a.mean())) < 1e-9 and abs(float(a.std(unbiased=False)) - 1) < 1e-6
    assert (adv[ep.mask == 0] == 0).all()  # exact: padding is multiplied by 0
    assert not torch.allclose(adv, advantages(ep, lam, gamma))
