"""PEARL's networks and losses (Rakelly et al. 2019; katerakelly/oyster), as pure batched tensor code.

Layout: every tensor is ``[tasks, batch, ...]``; one gradient step's losses are computed for the
whole meta-batch at once. Twin Q networks are one :class:`StackedMLP` of two members, evaluated in
one batched matmul per layer.

Differences from oyster (rlkit) in this module:
- hidden layers are initialised uniform in +-1/sqrt(fan_out), as rlkit's ``fanin_init`` does (it
  reads the first dimension of a ``[out, in]`` weight), bias 0.1; output layers +-3e-3 (Q, V,
  encoder) and +-1e-3 (policy), as rlkit; the policy's mean and log-std come from one output layer
  (two in rlkit; the same function class and initialisation);
- the tanh correction of the policy's log-density is the exact ``2 (log 2 - u - softplus(-2u))``
  where rlkit uses ``log(1 - tanh(u)^2 + 1e-6)``.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .policies import ActionHead

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # rlkit's TanhGaussianPolicy clamp
MIN_VARIANCE = 1e-7  # oyster clamps each factor's variance before the product


class StackedMLP(nn.Module):
    """``members`` ReLU MLPs of one shape, evaluated together: ``x [members, N, in] -> [members, N, out]``.

    Weights are ``[members, in, out]`` so a layer is one ``baddbmm`` for every member."""

    def __init__(self, members: int, sizes: list[int], out_init: float):
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = torch.empty(members, fan_in, fan_out)
            b = torch.empty(members, 1, fan_out)
            if i < len(sizes) - 2:
                w.uniform_(-1 / math.sqrt(fan_out), 1 / math.sqrt(fan_out))
                b.fill_(0.1)
            else:
                w.uniform_(-out_init, out_init)
                b.uniform_(-out_init, out_init)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """``frozen``: the weights enter as constants (gradients reach ``x`` only), for a loss that
        differentiates through a network it does not train."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if frozen:
                w, b = w.detach(), b.detach()
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = F.relu(x)
        return x


def product_of_gaussians(
    mu: torch.Tensor, var: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised product of the Gaussian factors ``N(mu_n, var_n)`` over dim -2 (the transitions):
    precision ``sum 1/var_n``, mean ``var * sum mu_n/var_n``. ``mask [..., n]`` leaves factors out; with
    none left the result is the prior N(0, 1)."""
    precision = 1.0 / var.clamp(min=MIN_VARIANCE)
    if mask is not None:
        precision = precision * mask[..., None]
    total = precision.sum(-2)
    empty = total == 0
    var_out = torch.where(empty, 1.0, 1.0 / torch.where(empty, 1.0, total))
    mu_out = torch.where(empty, 0.0, var_out * (mu * precision).sum(-2))
    return mu_out, var_out


def kl_to_unit_gaussian(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``sum KL(N(mu, var) || N(0, I))`` over every task and latent dimension (oyster sums over tasks)."""
    return 0.5 * (var + mu**2 - 1.0 - var.log()).sum()


def tanh_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``a = tanh(u)``, ``u ~ N(mean, exp(log_std)^2)``, summed over the last dim."""
    normal = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))  # log(1 - tanh(u)^2), exact
    return (normal - log_det).sum(-1)


def q_target(
    rewards: torch.Tensor, terminals: torch.Tensor, next_v: torch.Tensor, reward_scale: float, discount: float
) -> torch.Tensor:
    """The Bellman target of both Q networks: ``scale r + (1 - done) gamma V_target(s', z)``."""
    return rewards * reward_scale + (1.0 - terminals) * discount * next_v


def critic_loss(q_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean (Q1 - y)^2 + mean (Q2 - y)^2`` for ``q_pred [2, ...]``."""
    return ((q_pred - target.detach()) ** 2).flatten(1).mean(1).sum()


def value_loss(v_pred: torch.Tensor, min_q_new: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """``mean (V(s, z) - (min_i Q_i(s, a~pi, z) - log pi(a|s, z)))^2``, the target held fixed."""
    return ((v_pred - (min_q_new - log_pi).detach()) ** 2).mean()


def actor_loss(
    log_pi: torch.Tensor,
    min_q_new: torch.Tensor,
    mean: torch.Tensor,
    log_std: torch.Tensor,
    mean_reg: float,
    std_reg: float,
) -> torch.Tensor:
    """``mean (log pi - min Q)`` plus rlkit's penalties on the pre-tanh mean and the log-std."""
    return (log_pi - min_q_new).mean() + mean_reg * (mean**2).mean() + std_reg * (log_std**2).mean()


def polyak_(target: list[torch.Tensor], source: list[torch.Tensor], tau: float) -> None:
    """``target <- (1 - tau) target + tau source``, in place, one fused call over every tensor."""
    torch._foreach_lerp_(target, source, tau)


class PEARLAgent(ActionHead, nn.Module):
    """What acts and adapts: the context encoder and the tanh-Gaussian policy ``pi(a | s, z)``.

    The sampler drives it like any policy (``action_from_noise``, ``mode``): actions are
    ``tanh`` squashed and scaled to the Box bounds. Internally (replay buffers, Q inputs, the
    context) actions are in ``[-1, 1]``, as oyster's ``NormalizedBoxEnv`` makes them."""

    discrete = False

    def __init__(
        self,
        obs_dim: int,
        action_space: gym.spaces.Box,
        latent_size: int,
        hidden_sizes: list[int],
        encoder_hidden_sizes: list[int],
        next_obs_in_context: bool = False,
    ):
        super().__init__()
        self.obs_dim, self.act_dim, self.latent_size = obs_dim, int(action_space.shape[0]), latent_size
        self.next_obs_in_context = next_obs_in_context
        # (s, a, r), oyster's default, or (s, a, r, s') with its use_next_obs_in_context
        self.context_size = obs_dim + self.act_dim + 1 + (obs_dim if next_obs_in_context else 0)
        self.encoder = StackedMLP(1, [self.context_size, *encoder_hidden_sizes, 2 * latent_size], 3e-3)
        self.actor = StackedMLP(1, [obs_dim + latent_size, *hidden_sizes, 2 * self.act_dim], 1e-3)
        low = torch.as_tensor(np.asarray(action_space.low, dtype=np.float32))
        high = torch.as_tensor(np.asarray(action_space.high, dtype=np.float32))
        self.register_buffer("action_mid", (high + low) / 2)
        self.register_buffer("action_half", (high - low) / 2)

    # ---------------------------------------------------------------- inference of z
    def factors(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-transition Gaussian factors ``(mu, var) [..., n, latent]`` of ``context [..., n, in]``."""
        out = self.encoder(context.reshape(1, -1, context.shape[-1])).reshape(*context.shape[:-1], -1)
        mu, raw = out.split(self.latent_size, -1)
        return mu, F.softplus(raw)

    def posterior(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | c) = prod_n N(mu_n, var_n)``: its ``(mean, variance) [..., latent]``."""
        return product_of_gaussians(*self.factors(context), mask)

    def context(
        self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor
    ) -> torch.Tensor:
        """Transitions as the encoder reads them: ``[obs, action in [-1, 1], reward]``, then ``next_obs``
        if the agent was built with ``next_obs_in_context``."""
        parts = [obs, actions, rewards[..., None]] + ([next_obs] if self.next_obs_in_context else [])
        return torch.cat(parts, -1)

    # ---------------------------------------------------------------- the policy
    def actor_params(self, obs: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-tanh ``(mean, log_std)`` for ``obs [..., obs_dim]`` and ``z`` broadcastable to ``[..., latent]``."""
        x = torch.cat([obs, z.expand(*obs.shape[:-1], self.latent_size)], -1)
        out = self.actor(x.reshape(1, -1, x.shape[-1])).reshape(*x.shape[:-1], -1)
        mean, log_std = out.split(self.act_dim, -1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def rsample(
        self, obs: torch.Tensor, z: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A reparameterised action in ``[-1, 1]``: ``(action, log_pi, mean, log_std)``."""
        mean, log_std = self.actor_params(obs, z)
        u = mean + log_std.exp() * noise
        return torch.tanh(u), tanh_gaussian_log_prob(u, mean, log_std), mean, log_std

    def to_env(self, action: torch.Tensor) -> torch.Tensor:
        """An action in ``[-1, 1]`` in the env's units."""
        return self.action_mid + self.action_half * action

    def from_env(self, action: torch.Tensor) -> torch.Tensor:
        """An env action in ``[-1, 1]`` (what the replay buffers and the encoder hold)."""
        return ((action - self.action_mid) / self.action_half).clamp(-1.0, 1.0)

    # sampler interface (caml_rl.sampler): parameters -> env actions
    def action_from_noise(self, params: tuple[torch.Tensor, ...], noise: torch.Tensor) -> torch.Tensor:
        mean, log_std = params
        return self.to_env(torch.tanh(mean + log_std.exp() * noise.to(mean.dtype)))

    def mode(self, params: tuple[torch.Tensor, ...], discrete: bool = False) -> torch.Tensor:
        """The deterministic action ``tanh(mean)`` (oyster evaluates with it)."""
        return self.to_env(torch.tanh(params[0]))


class LatentActor:
    """The sampler's view of a :class:`PEARLAgent` acting under a fixed ``z [tasks, episodes, latent]``
    per env (drawn per episode, as oyster resamples z at every trajectory)."""

    def __init__(self, agent: PEARLAgent, z: torch.Tensor):
        self.agent, self.z = agent, z

    def __call__(self, obs: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.agent.actor_params(obs, self.z[None])

    def observe(self, action: torch.Tensor, reward: torch.Tensor, alive: torch.Tensor) -> None:
        pass
