"""RL²'s maths against hand computations: hidden state across a trial, GAE over it, the masked PPO loss."""

import gymnasium as gym
import numpy as np
import torch

from caml_rl.rl2 import RecurrentPolicy, ppo_loss, trial_gae


def policy(discrete: bool = False) -> RecurrentPolicy:
    torch.manual_seed(0)
    space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (2,))
    return RecurrentPolicy(obs_dim=4, action_space=space, hidden_size=8)


def test_inputs_are_obs_previous_action_reward_and_done():
    p = policy(discrete=True)
    x = p.inputs(torch.ones(2, 4), torch.tensor([0, 2]), torch.tensor([0.5, -1.0]), torch.tensor([0.0, 1.0]))
    assert x.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0.5, 0], [1, 1, 1, 1, 0, 0, 1, -1, 1]]  # exact: a concatenation


def test_hidden_state_crosses_episode_boundaries_and_starts_at_zero_in_every_trial():
    """Two trials (batch columns) of two 3-step episodes: the second episode's outputs depend on the
    first episode of the same trial, never on the other trial; step 0 sees a zero hidden state."""
    p = policy()
    x = torch.randn(6, 2, p.input_size)
    mask = torch.ones(6, 2)
    head = p.unroll(x, mask)[0][0]
    assert torch.equal(head[0], p.head(p.cell(x[0], torch.zeros(2, 8))))  # exact: the same ops
    changed = x.clone()
    changed[1, 0] += 1.0  # trial 0, first episode
    head2 = p.unroll(changed, mask)[0][0]
    assert (head2[3:, 0] - head[3:, 0]).abs().min() > 0  # the second episode remembers it
    assert torch.equal(head2[:, 1], head[:, 1])  # the other trial does not see it


def test_padded_steps_hold_the_hidden_state():
    p = policy()
    x = torch.randn(4, 1, p.input_size)
    mask = torch.tensor([[1.0], [0.0], [1.0], [1.0]])
    head = p.unroll(x, mask)[0][0]
    assert torch.equal(head[1], head[0])  # held: the padded step changed nothing
    other = x.clone()
    other[1] = 100.0  # whatever a padded step holds does not matter
    assert torch.equal(p.unroll(other, mask)[0][0], head)


def test_trial_gae_by_hand_with_padding_in_the_middle():
    """Step 1 is padding (episode 1 ended early): step 0's successor is step 2."""
    g, lam = 0.9, 0.5
    r = torch.tensor([1.0, 7.0, 2.0, 3.0])[:, None]
    v = torch.tensor([0.5, 9.0, 1.0, 2.0])[:, None]
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])[:, None]
    adv, ret = trial_gae(r, v, mask, g, lam)
    a3 = 3 - 2.0
    a2 = (2 + g * 2.0 - 1.0) + g * lam * a3
    a0 = (1 + g * 1.0 - 0.5) + g * lam * a2
    np.testing.assert_allclose(adv[:, 0].numpy(), [a0, 0.0, a2, a3], rtol=1e-6)  # float32 of a few terms
    np.testing.assert_allclose(ret[:, 0].numpy(), [a0 + 0.5, 0.0, a2 + 1.0, a3 + 2.0], rtol=1e-6)


def test_trial_gae_with_lambda_one_is_the_discounted_trial_return_minus_the_value():
    """Across an episode boundary nothing is cut: the return runs to the trial's end."""
    torch.manual_seed(1)
    r, v = torch.randn(6, 3), torch.randn(6, 3)
    adv, ret = trial_gae(r, v, torch.ones(6, 3), 0.95, 1.0)
    discounted = torch.stack([sum(0.95**k * r[t + k] for k in range(6 - t)) for t in range(6)])
    torch.testing.assert_close(ret, discounted, rtol=1e-5, atol=1e-5)  # float32 sums of 6 terms
    torch.testing.assert_close(adv, discounted - v, rtol=1e-5, atol=1e-5)


def test_ppo_loss_by_hand_and_masked_steps_do_not_count():
    logp = torch.tensor([0.0, np.log(2.0), 5.0])
    old = torch.zeros(3)
    adv = torch.tensor([1.0, 1.0, 100.0])
    value, returns, entropy = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 50.0]), torch.ones(3)
    mask = torch.tensor([1.0, 1.0, 0.0])
    loss, stats = ppo_loss(logp, old, adv, value, returns, entropy, mask, 0.2, 0.5, 0.01)
    # ratios 1 and 2 (clipped to 1.2): surrogate (1 + 1.2) / 2; value loss (1 + 4) / 2; entropy 1
    assert abs(stats["policy_loss"] + 1.1) < 1e-6 and abs(stats["value_loss"] - 2.5) < 1e-6
    assert abs(float(loss) - (-1.1 + 0.5 * 2.5 - 0.01)) < 1e-6  # float32 of three terms
    assert stats["clip_fraction"] == 0.5
    changed = ppo_loss(logp, old, torch.tensor([1.0, 1.0, -7.0]), value, returns, entropy, mask, 0.2, 0.5, 0.01)
    assert torch.equal(changed[0], loss)  # the padded step's numbers never enter
