import torch
from conftest import random_episodes

from caml_rl.episodes import discounted_returns, gae, normalize_per_task


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
    torch.testing.assert_close(out, torch.tensor([a0, a1, a2, 0.0]))


def test_discounted_returns_reward_to_go():
    ep = random_episodes(T=5, tasks=1, eps=1, ragged=False)
    r = ep.rewards.flatten()
    expect = torch.stack([sum(0.9**k * r[t + k] for k in range(5 - t)) for t in range(5)])
    torch.testing.assert_close(discounted_returns(ep, 0.9).flatten(), expect)


def test_gae_lambda_one_is_return_minus_value():
    ep = random_episodes()
    v = torch.randn_like(ep.rewards)
    torch.testing.assert_close(gae(ep.rewards, v, ep.mask, 0.95, 1.0), (discounted_returns(ep, 0.95) - v) * ep.mask)


def test_normalize_per_task_zero_mean_unit_std_on_valid_steps():
    ep = random_episodes(T=8, tasks=3, eps=5)
    adv = normalize_per_task(torch.randn_like(ep.rewards) * 5 + 3, ep.mask)
    for k in range(3):
        valid = adv[:, k][ep.mask[:, k] > 0]
        assert abs(valid.mean().item()) < 1e-6
        assert abs(valid.std(unbiased=False).item() - 1) < 1e-4
    assert (adv[ep.mask == 0] == 0).all()
