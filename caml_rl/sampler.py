"""Runs a policy in one batched env: every task's episodes in one vectorised pass.

One policy forward per time step for the whole ``tasks x episodes`` batch; the env steps on
its own device (pure-torch envs on the policy's device, MuJoCo on CPU threads). Box actions are
clipped to the action space before ``step`` (the episodes keep the unclipped sample, whose
log-probability the gradients use), and every reset and step is checked against the contract
(:class:`caml_rl.envs.validation.StepChecker`). A :class:`RolloutHook` may watch the env after
each reset and step (``caml-rl visualize`` records trajectories with one).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from caml_rl.envs.actions import action_clipper
from caml_rl.envs.base import BatchedEnv, ShardedGenerator, TaskDistribution, TaskDistributionError
from caml_rl.envs.validation import StepChecker

from .config import ConfigError
from .episodes import Episodes
from .partition import FastWeights, policy_forward
from .policies import ContextMLPPolicy


class RolloutHook(Protocol):
    """Watches a rollout without changing it: the env and its observation after reset and each step."""

    def on_reset(self, env: BatchedEnv, obs: torch.Tensor) -> None: ...

    def on_step(self, env: BatchedEnv, obs: torch.Tensor) -> None: ...


class Actor(Protocol):
    """What a sampled policy answers at each step; a recurrent one also watches what happened."""

    def __call__(self, obs: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Distribution parameters for ``obs [1, tasks, episodes, obs_dim]``; ``alive [tasks, episodes]``
        is false for envs whose episode has ended (their step is padding)."""
        ...

    def observe(self, action: torch.Tensor, reward: torch.Tensor, alive: torch.Tensor) -> None:
        """The step's sampled action and reward, for the envs that were ``alive`` before it."""
        ...


class FastWeightsActor:
    """The context-conditioned policy under per-task fast values (CAML's context, MAML's weights)."""

    def __init__(self, policy: ContextMLPPolicy, fast: FastWeights):
        self.policy, self.fast = policy, {k: v.detach() for k, v in fast.items()}

    def __call__(self, obs: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return policy_forward(self.policy, obs, self.fast)

    def observe(self, action: torch.Tensor, reward: torch.Tensor, alive: torch.Tensor) -> None:
        pass


class Sampler:
    """Owns the batched env for ``num_tasks x episodes_per_task`` simulations."""

    def __init__(
        self,
        distribution: TaskDistribution,
        num_tasks: int,
        episodes_per_task: int,
        device: torch.device,
        shard: tuple[int, int] | None = None,
        hook: RolloutHook | None = None,
    ):
        """``shard = (first_task, total_tasks)``: this sampler runs tasks ``first_task ..
        first_task + num_tasks`` of a meta-batch of ``total_tasks`` (distributed training). It
        draws the action noise and the reset noise of the whole batch and keeps its share (the
        env resets through a :class:`~caml_rl.envs.base.ShardedGenerator`), so a worker's
        initial states and actions are those a single process would have for these tasks, and
        every worker's streams advance alike (see :meth:`sample`)."""
        self.distribution = distribution
        self.num_tasks, self.episodes_per_task = num_tasks, episodes_per_task
        self.shard = shard
        self.hook = hook
        self.device = torch.device(device)
        self.env: BatchedEnv = distribution.make_vec_env(num_tasks * episodes_per_task, self.device)
        self.clip = action_clipper(distribution.action_space, self.device)
        self.check = StepChecker(distribution, self.env, num_tasks * episodes_per_task, eager=False)

    def sample(
        self,
        policy: ContextMLPPolicy,
        tasks: np.ndarray,
        fast: FastWeights,
        rng: np.random.Generator,
        generator: torch.Generator,
        deterministic: bool = False,
        actor: Actor | None = None,
    ) -> Episodes:
        """Roll out ``horizon`` steps of one episode per env, for ``tasks: [num_tasks, task_dim]``.

        The actions come from ``policy`` under the per-task ``fast`` values, or from ``actor``
        when given (a recurrent policy that carries its state across calls; ``fast`` is unused);
        ``policy`` turns the actor's distribution parameters into actions either way.

        On CPU torch runs single-threaded while sampling: its OpenMP threads would otherwise
        spin on the cores the simulator needs.

        Lockstep: ``generator`` advances by exactly ``horizon`` whole-batch draws per stochastic
        rollout, whatever the envs do. On CPU the time loop stops once every env of this sampler
        has ended; it then draws (and drops) the noise of the steps it skipped, one draw per step
        of the same shape, so that the stream is where the full loop would have left it. Under
        distributed training a worker whose shard ends early therefore stays in step with the
        others (and with a single process), and so does everything later drawn from the same
        generator (the PPO minibatch order, TRPO's metric subsample) and the checkpointed state,
        which is rank 0's. Chosen over the alternatives by cost (40 tasks x 20 episodes, one core,
        another run on the other core): a dropped draw costs 10 us against a 620 us step of 2D
        navigation and 39 us against a 116 ms step of Ant, so it keeps the early stop's saving
        (a rollout whose episodes all end after one step: 2.5 ms instead of the full loop's 62 ms,
        which is what not stopping early would cost). Drawing the whole horizon's noise up front
        makes the same draws but holds a [horizon, batch, act_dim] buffer (4.9 MiB for Ant) and
        changes every run's stream; broadcasting rank 0's PPO permutation would leave the action
        noise, the resets, TRPO's subsample and the checkpointed streams apart.
        """
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            with torch.no_grad():
                return self._rollout(
                    policy, tasks, actor or FastWeightsActor(policy, fast), rng, generator, deterministic
                )
        finally:
            torch.set_num_threads(threads)

    def _rollout(
        self,
        policy: ContextMLPPolicy,
        tasks: np.ndarray,
        actor: Actor,
        rng: np.random.Generator,
        generator: torch.Generator,
        deterministic: bool,
    ) -> Episodes:
        n_t, n_e, horizon = self.num_tasks, self.episodes_per_task, self.distribution.horizon
        if tasks.shape[0] != n_t:
            raise ValueError(f"sampler built for {n_t} tasks, got {tasks.shape[0]}")
        check = self.check
        first = self.shard[0] if self.shard is not None else 0
        if self.shard is not None:  # the whole batch's reset draws, this worker's rows
            rng = ShardedGenerator(rng, first * n_e, n_t * n_e, self.shard[1] * n_e)
        obs = check.reset(np.repeat(tasks, n_e, axis=0), rng, episodes_per_task=n_e, first_task=first).to(self.device)
        if self.hook is not None:
            self.hook.on_reset(self.env, obs)
        obs_buf = torch.zeros(horizon, n_t, n_e, obs.shape[-1], device=self.device)
        act_buf: torch.Tensor | None = None
        rew_buf = torch.zeros(horizon, n_t, n_e, device=self.device)
        mask_buf = torch.zeros(horizon, n_t, n_e, device=self.device)
        alive = torch.ones(n_t, n_e, dtype=torch.bool, device=self.device)
        succeeded = torch.zeros(n_t, n_e, dtype=torch.bool, device=self.device)
        t = -1
        for t in range(horizon):
            obs = obs.view(1, n_t, n_e, -1)
            params = actor(obs, alive)
            if deterministic:
                action = policy.mode(params, policy.discrete)
            else:
                action = policy.action_from_noise(params, self._noise(policy, params, generator))
            if act_buf is None:
                act_buf = torch.zeros(horizon, *action.shape[1:], dtype=action.dtype, device=self.device)
            alive_f = alive.to(obs.dtype)
            obs_buf[t] = obs[0] * alive_f[..., None]
            act_buf[t] = action[0] * (alive_f[..., None] if action.dim() == 4 else alive)
            mask_buf[t] = alive_f
            try:
                next_obs, reward, terminated = check.step(t, self.clip(action.reshape(n_t * n_e, *action.shape[3:])))
            except TaskDistributionError as exc:  # a non-finite value fed back to the env is the real culprit
                _blame_policy(obs_buf[: t + 1], act_buf[: t + 1], exc)
                check.check_rollout(obs_buf[: t + 1], rew_buf[:t], None)
                raise
            if self.hook is not None:
                self.hook.on_step(self.env, next_obs)
            rew_buf[t] = reward.to(self.device).view(n_t, n_e) * alive_f
            actor.observe(action[0], rew_buf[t], alive)
            if self.env.success is not None:
                succeeded |= self.env.success.to(self.device).view(n_t, n_e) & alive
            alive = alive & ~terminated.to(self.device).view(n_t, n_e)
            obs = next_obs.to(self.device)
            if self.device.type == "cpu" and not alive.any():  # on a GPU this check would sync every step
                break
        if not deterministic:
            for _ in range(t + 1, horizon):  # the skipped steps' draws: the stream stays in lockstep
                self._draw_noise(policy, params, generator)
        try:
            check.check_rollout(obs_buf[: t + 1], rew_buf[: t + 1], obs)  # finiteness of every step, read once
        except TaskDistributionError as exc:
            _blame_policy(obs_buf[: t + 1], act_buf, exc)
            raise
        return Episodes(obs_buf, act_buf, rew_buf, mask_buf, succeeded if self.env.success is not None else None)

    def _draw_noise(
        self, policy: ContextMLPPolicy, params: tuple[torch.Tensor, ...], gen: torch.Generator
    ) -> torch.Tensor:
        """One step's action noise for the whole meta-batch, on the generator's own device."""
        shape = policy.noise_shape(params)  # [1, tasks, episodes, ...]
        if self.shard is not None:
            shape = (shape[0], self.shard[1], *shape[2:])
        return policy.draw_noise(shape, gen, gen.device)

    def _noise(self, policy: ContextMLPPolicy, params: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        """This sampler's share of one step's noise, on its device. A generator on another device (a
        run resumed on another machine keeps its stream on the device that wrote it) draws there and
        the noise is copied over; from the CPU through pinned memory, so the copy does not wait."""
        noise = self._draw_noise(policy, params, gen)
        if self.shard is not None:
            noise = noise[:, self.shard[0] : self.shard[0] + self.num_tasks]
        if noise.device == self.device:
            return noise
        if noise.device.type == "cpu" and self.device.type == "cuda":
            return noise.pin_memory().to(self.device, non_blocking=True)
        return noise.to(self.device)

    def close(self) -> None:
        self.env.close()


def _blame_policy(obs: torch.Tensor, actions: torch.Tensor | None, fault: TaskDistributionError) -> None:
    """When the first non-finite action came from finite observations, the policy is the culprit,
    not the env it was fed to (read only after a fault: the rollout has no per-step device reads)."""
    if actions is None or not actions.is_floating_point():
        return
    bad = (~torch.isfinite(actions)).flatten(1).any(1).nonzero()
    if len(bad) and bool(torch.isfinite(obs[: int(bad[0]) + 1]).all()):
        raise ConfigError(
            f"the policy produced non-finite actions at step {int(bad[0])}: its weights or adapted values "
            "blew up (an inner step too large? lower adaptation.inner_lr, evaluation.inner_lr or --inner-lr)"
        ) from fault
