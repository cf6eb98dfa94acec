"""RL² (Duan et al. 2016): a recurrent policy that adapts in its hidden state, trained with PPO.

A *trial* is K episodes of one task. The policy sees the observation, the previous action, the
previous reward and a flag that the previous step ended an episode; its hidden state is carried
across the episode boundaries of a trial and starts at zero in every trial. Advantages are GAE
over the whole trial (the objective is the trial's return, so nothing is cut at an episode end).

Layout: time first, then the batch of trials: ``[T, B, ...]`` with ``T = K x horizon``. ``mask``
is 1 for steps that happened and 0 for the padding after an episode terminated early; on padded
steps the hidden state is held and nothing enters a loss.

Sampling runs on caml-rl's batched sampler: a trial is ``episodes_per_trial`` calls of
:meth:`caml_rl.sampler.Sampler.sample` with one :class:`RecurrentActor`, whose hidden state and
previous action/reward persist between the calls; every task's trials step in one batch.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from .algorithm import Algorithm, Curve, DivergenceError, Setup, register_algorithm
from .config import Config, ConfigError
from .episodes import Episodes
from .policies import ActionHead
from .sampler import Sampler
from .seeding import Streams


class RecurrentPolicy(ActionHead, nn.Module):
    """GRU over ``[obs, previous action, previous reward, episode-done flag]`` with a Gaussian
    (Box) or categorical (Discrete) head. The critic is a second GRU of the same inputs with a
    value head: sharing the actor's would let the value loss, larger by orders of magnitude before
    it has learned the return's scale, swamp the policy gradient under one clipped norm."""

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
        self.critic_cell = nn.GRUCell(self.input_size, hidden_size)
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
        """Distribution parameters and values for a whole trial ``x [T, B, input]`` from zero hidden
        states: ``(params [T, B, ...], value [T, B])``. Recomputed at every PPO epoch, so no stale
        hidden state is reused."""
        h = c = x.new_zeros(x.shape[1], self.hidden_size)
        actor, critic = [], []
        for t in range(x.shape[0]):  # a recurrence: the loop is over time, every trial in one batch
            h = self.step(x[t], h, mask[t])
            new = self.critic_cell(x[t], c)
            c = torch.where(mask[t][..., None] > 0, new, c)
            actor.append(h)
            critic.append(c)
        return self.params(torch.stack(actor)), self.value(torch.stack(critic)).squeeze(-1)


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
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    policy_loss = -(surrogate * mask).sum() / n
    value_loss = ((value - returns) ** 2 * mask).sum() / n
    entropy_mean = (entropy * mask).sum() / n
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy_mean
    clipped = (((ratio - 1).abs() > clip).float() * mask).sum() / n
    approx_kl = (((ratio - 1) - log_ratio).detach() * mask).sum() / n  # Schulman's k3 estimator, as SB3's
    stats = {
        "policy_loss": float(policy_loss.detach()),
        "value_loss": float(value_loss.detach()),
        "entropy": float(entropy_mean.detach()),
        "clip_fraction": float(clipped),
        "approx_kl": float(approx_kl),
    }
    return loss, stats


class RunningMoments:
    """Mean and variance of every return seen so far (merged batch by batch, in float64): the
    value head learns returns in these units, whatever the task's reward scale."""

    def __init__(self) -> None:
        self.count, self.mean, self.var = 0, 0.0, 1.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        n, mean, var = x.numel(), float(x.mean()), float(x.var(unbiased=False))
        total = self.count + n
        delta = mean - self.mean
        self.var = (self.count * self.var + n * var + delta**2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / math.sqrt(self.var + 1e-8)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * math.sqrt(self.var + 1e-8) + self.mean

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.var = int(state["count"]), float(state["mean"]), float(state["var"])


class RecurrentActor:
    """The sampler's view of a :class:`RecurrentPolicy` over ``tasks x trials`` envs: it keeps the
    hidden state, the previous action and reward (of the last step that happened) and the
    episode-done flag across the episodes of a trial; a new actor starts a new trial."""

    def __init__(self, policy: RecurrentPolicy, num_tasks: int, trials: int, device: torch.device):
        self.policy, self.shape = policy, (num_tasks, trials)
        n = num_tasks * trials
        self.h = torch.zeros(n, policy.hidden_size, device=device)
        self.prev_action = torch.zeros((n,) if policy.discrete else (n, policy.act_dim), device=device)
        self.prev_reward = torch.zeros(n, device=device)
        self.done = torch.zeros(n, device=device)

    def new_episode(self) -> None:
        """The next call of the sampler starts the trial's next episode: the flag tells the policy."""
        self.done = torch.ones_like(self.done)

    def __call__(self, obs: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.h.shape[0]
        x = self.policy.inputs(obs.reshape(n, -1), self.prev_action, self.prev_reward, self.done)
        self.h = self.policy.step(x, self.h, alive.reshape(n).to(x.dtype))
        return tuple(p.reshape(1, *self.shape, *p.shape[1:]) for p in self.policy.params(self.h))

    def observe(self, action: torch.Tensor, reward: torch.Tensor, alive: torch.Tensor) -> None:
        live = alive.reshape(-1)
        n = live.shape[0]
        action = action.reshape(n, *action.shape[2:]).to(self.prev_action.dtype)
        self.prev_action = torch.where(live.view(n, *[1] * (action.dim() - 1)), action, self.prev_action)
        self.prev_reward = torch.where(live, reward.reshape(n), self.prev_reward)
        self.done = torch.where(live, torch.zeros_like(self.done), self.done)


def sample_trials(
    sampler: Sampler, policy: RecurrentPolicy, tasks: np.ndarray, episodes: int, streams: Streams
) -> list[Episodes]:
    """One trial of ``episodes`` episodes in every env of ``sampler`` (each task's trials in one batch)."""
    actor = RecurrentActor(policy, sampler.num_tasks, sampler.episodes_per_task, sampler.device)
    trial = []
    for k in range(episodes):
        if k:
            actor.new_episode()
        trial.append(sampler.sample(policy, tasks, {}, streams.env, streams.actions, actor=actor))
    return trial


def trial_inputs(policy: RecurrentPolicy, trial: list[Episodes]) -> tuple[torch.Tensor, ...]:
    """The trial as the policy saw it: ``(inputs [T, B, in], actions, rewards [T, B], mask [T, B])``
    with ``T = episodes x horizon`` and ``B = tasks x trials``; the previous action and reward are
    those of the last step that happened, as :class:`RecurrentActor` kept them."""
    obs = torch.cat([ep.obs for ep in trial]).flatten(1, 2)
    actions = torch.cat([ep.actions for ep in trial]).flatten(1, 2)
    rewards = torch.cat([ep.rewards for ep in trial]).flatten(1, 2)
    mask = torch.cat([ep.mask for ep in trial]).flatten(1, 2)
    steps = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    last = torch.cummax(torch.where(mask > 0, steps, -1), dim=0).values  # last step that happened, <= t
    before = torch.cat([torch.full_like(last[:1], -1), last[:-1]])  # ... strictly before t
    index = before.clamp(min=0)
    prev_reward = torch.where(before >= 0, rewards.gather(0, index), 0.0)
    if policy.discrete:
        prev_action = torch.where(before >= 0, actions.gather(0, index), 0)
    else:
        gathered = actions.gather(0, index[..., None].expand_as(actions))
        prev_action = torch.where(before[..., None] >= 0, gathered, 0.0)
    done = torch.zeros_like(mask)
    horizon = trial[0].mask.shape[0]
    done[horizon::horizon] = 1.0  # the first step of every episode after the first
    return policy.inputs(obs, prev_action, prev_reward, done), actions, rewards, mask


@register_algorithm
class RL2(Algorithm):
    """RL² (``algorithm: rl2``): the policy adapts in its hidden state over a trial of
    ``rl2.episodes_per_trial`` episodes; ``episodes_per_task`` trials per task run side by side."""

    name = "rl2"

    def __init__(self, setup: Setup, policy: RecurrentPolicy):
        super().__init__(setup, policy)
        if setup.workers.world_size > 1:
            raise ConfigError("algorithm rl2 trains in one process; torchrun with several workers is not supported")
        self.adam = torch.optim.Adam(policy.parameters(), lr=setup.config.rl2.lr)
        self.returns = RunningMoments()
        self.sampler: Sampler | None = None

    @staticmethod
    def make_policy(config: Config, observation_space: gym.spaces.Space, action_space: gym.spaces.Space):
        obs_dim = int(math.prod(observation_space.shape or (1,)))
        p = config.policy
        return RecurrentPolicy(obs_dim, action_space, config.rl2.hidden_size, p.init_std, p.min_std)

    @classmethod
    def label(cls, config: Config) -> str:
        return "rl2"

    def open(self) -> None:
        s = self.setup
        self.sampler = Sampler(s.distribution, s.local_tasks, s.config.episodes_per_task, s.device)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()

    def state_dict(self) -> dict[str, Any]:
        return {"adam": self.adam.state_dict(), "returns": self.returns.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            raise KeyError("optimizer")
        self.adam.load_state_dict(state["adam"])
        self.returns.load_state_dict(state["returns"])

    def iterate(self, tasks: np.ndarray) -> tuple[dict[str, Any], int, float]:
        cfg, policy, streams = self.setup.config.rl2, self.policy, self.setup.streams
        t0 = time.perf_counter()
        trial = sample_trials(self.sampler, policy, tasks, cfg.episodes_per_trial, streams)
        sampling = time.perf_counter() - t0
        x, actions, rewards, mask = trial_inputs(policy, trial)
        valid = mask > 0
        with torch.no_grad():
            params, values = policy.unroll(x, mask)
            old_logp = policy.distribution(params).log_prob(actions)
        # the value head predicts returns in units of the running return statistics
        adv, returns = trial_gae(rewards, self.returns.denormalize(values), mask, cfg.gamma, cfg.gae_lambda)
        self.returns.update(returns[valid])
        targets = self.returns.normalize(returns)
        adv = torch.where(valid, (adv - adv[valid].mean()) / (adv[valid].std() + 1e-8), 0.0)
        trials = x.shape[1]
        size = -(-trials // min(cfg.minibatches, trials))
        stats: dict[str, float] = {}
        updates, within_kl = 0, True
        for _ in range(cfg.epochs):
            order = torch.randperm(trials, generator=streams.actions, device=streams.actions.device).to(x.device)
            for idx in order.split(size):
                params, value = policy.unroll(x[:, idx], mask[:, idx])
                dist = policy.distribution(params)
                loss, stats = ppo_loss(
                    dist.log_prob(actions[:, idx]),
                    old_logp[:, idx],
                    adv[:, idx],
                    value,
                    targets[:, idx],
                    dist.entropy(),
                    mask[:, idx],
                    cfg.clip_range,
                    cfg.value_coef,
                    cfg.entropy_coef,
                )
                within_kl = cfg.target_kl is None or stats["approx_kl"] <= 1.5 * cfg.target_kl
                if not within_kl:  # the policy has already moved far enough: no step from here (SB3's rule)
                    break
                self.adam.zero_grad()
                loss.backward()
                norm = nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                if not (torch.isfinite(loss) and torch.isfinite(norm)):
                    raise DivergenceError(
                        f"RL² training diverged: PPO loss {float(loss.detach())}, gradient norm {float(norm)} at "
                        f"update {updates + 1} of the iteration, which was not taken; the run's checkpoints are "
                        "intact: start a new run with a lower rl2.lr or with rl2.target_kl set (e.g. 0.02)"
                    )
                self.adam.step()
                updates += 1
            if not within_kl:  # the KL bound was crossed: no more updates this iteration
                break
        stats["updates"] = updates
        per_episode = [float(ep.task_returns().mean()) for ep in trial]
        metrics = {
            "return/before_adaptation": per_episode[0],  # the trial's first episode: nothing seen yet
            "return/after_adaptation": per_episode[-1],  # its last
            **{f"return/episode_{k + 1}": r for k, r in enumerate(per_episode)},
            **{f"rl2/{k}": v for k, v in stats.items()},
            "policy/action_std": float(policy.log_std.detach().exp().mean()) if not policy.discrete else 0.0,
        }
        return metrics, int(sum(ep.num_steps for ep in trial)), sampling

    def sample_once(self, tasks: np.ndarray) -> int:
        trial = sample_trials(
            self.sampler, self.policy, tasks, self.setup.config.rl2.episodes_per_trial, self.setup.streams
        )
        return sum(ep.num_steps for ep in trial)

    def fwdbwd_seconds(self, tasks: np.ndarray, repeats: int = 3) -> float:
        """Over one iteration's trials: the recurrence unrolled through them, then its backward."""
        policy = self.policy
        trial = sample_trials(self.sampler, policy, tasks, self.setup.config.rl2.episodes_per_trial, self.setup.streams)
        x, actions, _, mask = trial_inputs(policy, trial)
        times = []
        for _ in range(repeats):
            policy.zero_grad()
            t0 = time.perf_counter()
            params, value = policy.unroll(x, mask)
            (policy.distribution(params).log_prob(actions).sum() + value.sum()).backward()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    @staticmethod
    def progress(metrics: dict[str, Any]) -> str:
        episodes = sorted(k for k in metrics if k.startswith("return/episode_"))
        returns = " ".join(f"{metrics[k]:8.2f}" for k in episodes)
        return f"return per episode {returns} | clipped {metrics.get('rl2/clip_fraction', 0.0):.2f}"

    @classmethod
    def adaptation_curve(
        cls, run: Any, tasks: np.ndarray, steps: int, episodes: int, inner_lr: float, streams: Streams
    ) -> Curve:
        """The return of episode ``k = 0..steps`` of one trial per env (``episodes`` trials per
        task): point ``k`` has seen ``k`` episodes of the task."""
        sampler = Sampler(run.distribution, len(tasks), episodes, run.device)
        try:
            with torch.no_grad():
                trial = sample_trials(sampler, run.policy, tasks, steps + 1, streams)
        finally:
            sampler.close()
        returns = [ep.task_returns().cpu().double().numpy() for ep in trial]
        success = [ep.task_success().cpu().double().numpy() for ep in trial if ep.success is not None]
        return Curve(returns, list(range(steps + 1)), success)
