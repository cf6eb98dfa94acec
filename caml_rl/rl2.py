"""RL² (Duan et al. 2016): a recurrent policy that adapts in its hidden state, trained with PPO.

A *trial* is K episodes of one task. The policy sees the observation, the previous action, the
previous reward and a flag that the previous step ended an episode; its hidden state is carried
across the episode boundaries of a trial and starts at zero in every trial. Advantages are GAE
over the whole trial (the objective is the trial's return, so nothing is cut at an episode end).

Layout: time first, then the batch of trials: ``[T, B, ...]`` with ``T = K x horizon``. ``mask``
is 1 for steps that happened and 0 for the padding after an episode terminated early; on padded
steps the hidden state is held and nothing enters a loss.

This module holds the maths (policy, GAE over a trial, the masked PPO loss); the trial sampler
and the algorithm that trains with them build on it.
"""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from torch import nn

from .policies import ActionHead


class RecurrentPolicy(ActionHead, nn.Module):
    """GRU over ``[obs, previous action, previous reward, episode-done flag]``, with a Gaussian
    (Box) or categorical (Discrete) head and a value head on the hidden state."""

    def __init__(
        self,
        obs_dim: int,
        action_space: gym.spaces.Space,
        hidden_size: int = 64,
        init_std: float = 1.0,
        min_std: float = 1e-6,
    ):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.act_dim = int(action_space.n) if self.discrete else int(math.prod(action_space.shape))
        self.input_size = obs_dim + self.act_dim + 2
        self.hidden_size = hidden_size
        self.cell = nn.GRUCell(self.input_size, hidden_size)
        self.head = nn.Linear(hidden_size, self.act_dim)
        self.value = nn.Linear(hidden_size, 1)
        self.min_log_std = math.log(min_std)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((self.act_dim,), math.log(init_std)))

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Distribution parameters from hidden states: ``(mean, log_std)`` or ``(logits,)``."""
        out = self.head(h)
        if self.discrete:
            return (out,)
        return out, self.log_std.clamp(min=self.min_log_std).expand_as(out)

    def inputs(self, obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor, prev_done: torch.Tensor):
        """One step's input ``[B, input_size]``; a discrete previous action enters one-hot."""
        if self.discrete:
            prev_action = nn.functional.one_hot(prev_action.long(), self.act_dim).to(obs.dtype)
        return torch.cat([obs, prev_action.to(obs.dtype), prev_reward[..., None], prev_done[..., None]], -1)

    def step(self, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The next hidden state; where ``valid`` is 0 (padding) the old one is held."""
        new = self.cell(x, h)
        return new if valid is None else torch.where(valid[..., None] > 0, new, h)

    def unroll(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Distribution parameters and values for a whole trial ``x [T, B, input]`` from a zero
        hidden state: ``(params [T, B, ...], value [T, B])``. Recomputed at every PPO epoch, so
        no stale hidden state is reused."""
        h = x.new_zeros(x.shape[1], self.hidden_size)
        hidden = []
        for t in range(x.shape[0]):  # a recurrence: the loop is over time, every trial in one batch
            h = self.step(x[t], h, mask[t])
            hidden.append(h)
        states = torch.stack(hidden)
        return self.params(states), self.value(states).squeeze(-1)


def trial_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each trial ``[T, B]``, skipping padded steps: a step's successor is the next step
    that happened, across episode boundaries; the trial's last step bootstraps from zero.
    Returns ``(advantages, returns)``, zero on padded steps."""
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[0])
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        valid = mask[t] > 0
        delta = rewards[t] + gamma * next_value - values[t]
        running = torch.where(valid, delta + gamma * lam * running, running)
        next_value = torch.where(valid, values[t], next_value)
        adv[t] = torch.where(valid, running, torch.zeros_like(running))
    return adv, (adv + values) * mask


def ppo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    value: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    value_coef: float,
    entropy_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate + value + entropy, each a mean over the steps that happened."""
    n = mask.sum().clamp(min=1)
    ratio = (logp - old_logp).exp()
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    policy_loss = -(surrogate * mask).sum() / n
    value_loss = ((value - returns) ** 2 * mask).sum() / n
    entropy_mean = (entropy * mask).sum() / n
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy_mean
    clipped = (((ratio - 1).abs() > clip).float() * mask).sum() / n
    stats = {
        "policy_loss": float(policy_loss),
        "value_loss": float(value_loss),
        "entropy": float(entropy_mean),
        "clip_fraction": float(clipped),
    }
    return loss, stats
