"""PEARL (Rakelly et al. 2019): a permutation-invariant encoder infers a latent context z from a
task's transitions; a SAC agent conditioned on z learns off-policy from per-task replay buffers.

One iteration, as oyster's ``MetaRLAlgorithm.train`` (the first also fills every training task's
buffers with ``num_initial_steps`` under the prior):

1. draw ``num_tasks_sample`` of the fixed training tasks (with replacement); empty their encoder
   buffers; run ``num_steps_prior`` steps on each with z ~ N(0, I) (a fresh z per episode) into both
   buffers, then ``num_steps_posterior + num_extra_rl_steps_posterior`` with z ~ q(z | c), c drawn
   from the task's encoder buffer per episode (the extra steps go to the RL buffer only);
2. ``num_train_steps_per_itr`` gradient steps (:meth:`PEARL.train_step`), each on ``meta_batch``
   tasks drawn with replacement: every network's loss for the whole meta-batch in ``[tasks, batch]``
   tensors.

Data collection steps every task's episodes in one batched env call (caml-rl's sampler, one policy
forward per step). Differences from oyster in collection: a phase runs a whole number of episodes
(oyster runs episodes until the step count is reached, which differs only for tasks whose episodes
end early); all posterior episodes of a phase sample z from the posterior given the prior data
(oyster's ``collect_data`` starts the phase from the prior for its first episode); a task drawn
twice in one iteration keeps both draws' prior data in its encoder buffer (oyster keeps the
last's); an episode that terminates exactly at the horizon's last step is stored as truncated.

Evaluation (:meth:`PEARL.adaptation_curve`) follows oyster's ``collect_paths`` but for one thing: the first
``exploration_episodes`` episodes with z from the prior, then z from the posterior given every transition
seen so far on the task; point k is episode k's return, after k episodes seen. Actions are sampled, as
every other method's are in caml-rl's evaluation (oyster takes the mean action: on 2D navigation that
explores so little that seed 0's curve stops at -26 after 3 episodes seen, against -16 sampled).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from caml_rl.envs.validation import sample_tasks

from .algorithm import Algorithm, Curve, Setup, register_algorithm
from .checkpoint import checkpoint_path
from .config import Config, ConfigError
from .episodes import Episodes
from .memory import machine_memory
from .pearl_buffers import NextObservations, TaskBuffers, load_buffers, save_buffers, transitions
from .pearl_nets import (
    LatentActor,
    PEARLAgent,
    StackedMLP,
    actor_loss,
    critic_loss,
    kl_to_unit_gaussian,
    polyak_,
    q_target,
    value_loss,
)
from .sampler import Sampler
from .seeding import Streams


@register_algorithm
class PEARL(Algorithm):
    """PEARL (``algorithm: pearl``), settings in the ``pearl:`` section (see the module docstring)."""

    name = "pearl"

    def __init__(self, setup: Setup, policy: PEARLAgent):
        super().__init__(setup, policy)
        cfg, device = setup.config.pearl, setup.device
        if setup.workers.world_size > 1:
            raise ConfigError("algorithm pearl trains in one process; torchrun with several workers is not supported")
        self.cfg, self.device = cfg, device
        self.horizon = setup.distribution.horizon
        episodes = lambda steps: math.ceil(steps / self.horizon)  # noqa: E731
        self.initial_episodes = episodes(cfg.num_initial_steps)
        self.prior_episodes = episodes(cfg.num_steps_prior)
        self.posterior_encoder_episodes = episodes(cfg.num_steps_posterior)
        self.posterior_episodes = self.posterior_encoder_episodes + episodes(cfg.num_extra_rl_steps_posterior)
        per_iteration = cfg.num_tasks_sample * (self.prior_episodes + self.posterior_episodes) * self.horizon
        most = max(self.initial_episodes * self.horizon, per_iteration)
        if cfg.buffer_size < most:
            raise ConfigError(
                f"config key pearl.buffer_size={cfg.buffer_size} is below the {most} transitions one collection may "
                f"add to one task (horizon {self.horizon}); allowed: >= {most}"
            )
        encoder_capacity = (
            max(self.initial_episodes, cfg.num_tasks_sample * (self.prior_episodes + self.posterior_encoder_episodes))
            * self.horizon
        )
        obs_dim, act_dim = policy.obs_dim, policy.act_dim
        need = TaskBuffers.nbytes(cfg.n_train_tasks, cfg.buffer_size + encoder_capacity, obs_dim, act_dim)
        if need > machine_memory(device):
            raise ConfigError(
                f"pearl's replay buffers need {need / 1e9:.1f} GB ({cfg.n_train_tasks} tasks x {cfg.buffer_size} "
                f"transitions) but {device} has {machine_memory(device) / 1e9:.1f} GB; lower pearl.buffer_size or "
                "pearl.n_train_tasks"
            )
        # the fixed training tasks: the first draw of the run's task stream (a resumed run draws them
        # again from the same fresh stream before restoring its saved state)
        self.train_tasks = sample_tasks(setup.distribution, setup.streams.tasks, cfg.n_train_tasks)
        self.rl = TaskBuffers(cfg.n_train_tasks, cfg.buffer_size, obs_dim, act_dim, device)
        self.encoder_buffer = TaskBuffers(cfg.n_train_tasks, encoder_capacity, obs_dim, act_dim, device)
        # the critics' weights continue the global stream the trainer seeded for the policy's
        self.qf = StackedMLP(2, [obs_dim + act_dim + cfg.latent_size, *cfg.hidden_sizes, 1], 3e-3).to(device)
        self.vf = StackedMLP(1, [obs_dim + cfg.latent_size, *cfg.hidden_sizes, 1], 3e-3).to(device)
        self.target_vf = StackedMLP(1, [obs_dim + cfg.latent_size, *cfg.hidden_sizes, 1], 3e-3).to(device)
        self.target_vf.load_state_dict(self.vf.state_dict())
        self.target_vf.requires_grad_(False)
        self.q_adam = torch.optim.Adam(
            [
                {"params": list(self.qf.parameters()), "lr": cfg.qf_lr},
                {"params": list(policy.encoder.parameters()), "lr": cfg.context_lr},
            ]
        )
        self.v_adam = torch.optim.Adam(self.vf.parameters(), lr=cfg.vf_lr)
        self.policy_adam = torch.optim.Adam(policy.actor.parameters(), lr=cfg.policy_lr)
        self.train_steps = 0
        self.samplers: dict[tuple[int, int], tuple[Sampler, NextObservations]] = {}
        self.sampler: Sampler | None = None  # the last collection phase's (caml-rl benchmark reads its env)

    @staticmethod
    def make_policy(config: Config, observation_space: gym.spaces.Space, action_space: gym.spaces.Space):
        if not isinstance(action_space, gym.spaces.Box) or not (
            np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()
        ):
            raise ConfigError(
                f"algorithm pearl needs a bounded Box action space (its policy is tanh-squashed); "
                f"env {config.env.name!r} has {action_space}"
            )
        cfg = config.pearl
        obs_dim = int(math.prod(observation_space.shape or (1,)))
        return PEARLAgent(
            obs_dim,
            action_space,
            cfg.latent_size,
            cfg.hidden_sizes,
            cfg.encoder_hidden_sizes,
            cfg.use_next_obs_in_context,
        )

    @classmethod
    def label(cls, config: Config) -> str:
        return "pearl"

    def details(self) -> dict[str, Any]:
        return {"adapts": "latent context z (inferred)", "train_tasks": self.cfg.n_train_tasks}

    # ---------------------------------------------------------------- samplers and collection
    def sampler_for(self, tasks: int, episodes: int) -> tuple[Sampler, NextObservations]:
        if (tasks, episodes) not in self.samplers:
            hook = NextObservations()
            sampler = Sampler(self.setup.distribution, tasks, episodes, self.device, hook=hook)
            self.samplers[(tasks, episodes)] = (sampler, hook)
        return self.samplers[(tasks, episodes)]

    def open(self) -> None:
        cfg = self.cfg
        self.sampler_for(cfg.n_train_tasks, self.initial_episodes)
        self.sampler = self.sampler_for(cfg.num_tasks_sample, self.prior_episodes)[0]
        if self.posterior_episodes:
            self.sampler = self.sampler_for(cfg.num_tasks_sample, self.posterior_episodes)[0]

    def close(self) -> None:
        for sampler, _ in self.samplers.values():
            sampler.close()
        self.samplers.clear()

    def prior_z(self, shape: tuple[int, ...]) -> torch.Tensor:
        g = self.setup.streams.actions
        return torch.randn(*shape, self.cfg.latent_size, generator=g, device=g.device).to(self.device)

    @torch.no_grad()
    def posterior_z(self, slots: torch.Tensor, episodes: int) -> torch.Tensor:
        """One z per episode of each slot's task, from q(z | c) with c a fresh draw of its encoder buffer."""
        tasks = slots.repeat_interleave(episodes)
        c = self.encoder_buffer.sample(tasks, self.cfg.embedding_batch_size, self.setup.streams.actions)
        mu, var = self.policy.posterior(self.policy.context(c["obs"], c["actions"], c["rewards"], c["next_obs"]))
        noise = self.prior_z((len(tasks),))
        return (mu + var.sqrt() * noise).view(len(slots), episodes, -1)

    def collect(
        self, slots: torch.Tensor, z: torch.Tensor, deterministic: bool = False
    ) -> tuple[Episodes, dict, torch.Tensor]:
        """Run one episode per ``z [slots, episodes, latent]`` on the training tasks ``slots``, all in one
        batched env call; returns the episodes and their transitions (:func:`transitions`)."""
        sampler, hook = self.sampler_for(*z.shape[:2])
        streams = self.setup.streams
        actor = LatentActor(self.policy, z)
        rows = self.train_tasks[slots.cpu().numpy()]
        ep = sampler.sample(self.policy, rows, {}, streams.env, streams.actions, deterministic, actor=actor)
        batch, valid = transitions(self.policy, ep, hook.of(ep))
        return ep, batch, valid

    def initial_collection(self) -> int:
        """Fill every training task's buffers under the prior, once, before the first gradient step."""
        if bool(self.rl.size.sum() > 0) or self.initial_episodes == 0:
            return 0
        slots = torch.arange(self.cfg.n_train_tasks)
        ep, batch, valid = self.collect(slots, self.prior_z((len(slots), self.initial_episodes)))
        self.rl.add(slots, batch, valid)
        self.encoder_buffer.add(slots, batch, valid)
        return ep.num_steps

    def collect_iteration(self) -> tuple[int, float, float]:
        """Step 1 of the module docstring: ``(env steps, prior return, posterior return)``."""
        cfg = self.cfg
        slots = torch.as_tensor(self.setup.streams.tasks.integers(cfg.n_train_tasks, size=cfg.num_tasks_sample))
        self.encoder_buffer.clear(slots.to(self.device))
        ep, batch, valid = self.collect(slots, self.prior_z((len(slots), self.prior_episodes)))
        self.rl.add(slots, batch, valid)
        self.encoder_buffer.add(slots, batch, valid)
        steps, prior, posterior = ep.num_steps, float(ep.task_returns().mean()), math.nan
        if self.posterior_episodes:
            ep, batch, valid = self.collect(slots, self.posterior_z(slots, self.posterior_episodes))
            self.rl.add(slots, batch, valid)
            if self.posterior_encoder_episodes:
                cut = self.posterior_encoder_episodes * self.horizon
                self.encoder_buffer.add(slots, {k: v[:, :cut] for k, v in batch.items()}, valid[:, :cut])
            steps, posterior = steps + ep.num_steps, float(ep.task_returns().mean())
        return steps, prior, posterior

    # ---------------------------------------------------------------- one gradient step
    def losses_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """A meta-batch: ``meta_batch`` tasks (with replacement), their RL batches ``[tasks, batch, ...]``
        and context batches ``[tasks, embedding_batch, in]``, each from the task's own buffers."""
        cfg, g = self.cfg, self.setup.streams.actions
        tasks = torch.randint(cfg.n_train_tasks, (cfg.meta_batch,), generator=g, device=g.device).to(self.device)
        batch = self.rl.sample(tasks, cfg.batch_size, g)
        c = self.encoder_buffer.sample(tasks, cfg.embedding_batch_size, g)
        return batch, self.policy.context(c["obs"], c["actions"], c["rewards"], c["next_obs"])

    def train_step(self) -> torch.Tensor:
        """oyster's ``_take_step`` on a whole meta-batch: the Q networks and the encoder (Bellman error
        plus the KL term), then V (and its Polyak target), then the policy; each against the networks
        as the previous updates left them. Returns the step's statistics (on the device, unread)."""
        cfg, agent, g = self.cfg, self.policy, self.setup.streams.actions
        batch, context = self.losses_batch()
        obs, actions = batch["obs"], batch["actions"]
        n_tasks, n = obs.shape[:2]
        mu, var = agent.posterior(context)  # [tasks, latent]
        z = mu + var.sqrt() * torch.randn(mu.shape, generator=g, device=g.device).to(self.device)
        zb = z[:, None, :].expand(n_tasks, n, -1)
        noise = torch.randn(n_tasks, n, agent.act_dim, generator=g, device=g.device).to(self.device)
        new_actions, log_pi, mean, log_std = agent.rsample(obs, zb.detach(), noise)
        flat = lambda x: x.reshape(1, n_tasks * n, x.shape[-1])  # noqa: E731
        q_pred = self.qf(flat(torch.cat([obs, actions, zb], -1)).expand(2, -1, -1)).view(2, n_tasks, n)
        v_pred = self.vf(flat(torch.cat([obs, zb.detach()], -1))).view(n_tasks, n)
        with torch.no_grad():
            next_v = self.target_vf(flat(torch.cat([batch["next_obs"], zb], -1))).view(n_tasks, n)
            target = q_target(batch["rewards"], batch["terminals"], next_v, cfg.reward_scale, cfg.discount)
        kl = kl_to_unit_gaussian(mu, var)
        q_loss = critic_loss(q_pred, target)
        self.q_adam.zero_grad(set_to_none=True)
        (cfg.kl_lambda * kl + q_loss).backward()
        self.q_adam.step()
        q_in = flat(torch.cat([obs, new_actions, zb.detach()], -1)).expand(2, -1, -1)
        min_q_new = self.qf(q_in, frozen=True).view(2, n_tasks, n).min(0).values  # the updated Q networks
        v_loss = value_loss(v_pred, min_q_new, log_pi)
        self.v_adam.zero_grad(set_to_none=True)
        v_loss.backward()
        self.v_adam.step()
        polyak_(list(self.target_vf.parameters()), list(self.vf.parameters()), cfg.soft_target_tau)
        pi_loss = actor_loss(log_pi, min_q_new, mean, log_std, cfg.policy_mean_reg, cfg.policy_std_reg)
        self.policy_adam.zero_grad(set_to_none=True)
        pi_loss.backward()
        self.policy_adam.step()
        self.train_steps += 1
        parts = (q_loss, v_loss, pi_loss, kl, var.mean(), log_pi.mean(), q_pred.mean())
        return torch.stack([p.detach() for p in parts])

    # ---------------------------------------------------------------- the iteration
    def iterate(self, tasks: np.ndarray) -> tuple[dict[str, Any], int, float]:
        """One iteration on the fixed training tasks (the trainer's fresh ``tasks`` are not used)."""
        t0 = time.perf_counter()
        steps = self.initial_collection()
        more, prior, posterior = self.collect_iteration()
        sampling = time.perf_counter() - t0
        t1 = time.perf_counter()
        total = torch.zeros(7, device=self.device)
        for _ in range(self.cfg.num_train_steps_per_itr):
            total += self.train_step()
        stats = (total / self.cfg.num_train_steps_per_itr).tolist()  # the one device read of the updates
        seconds = time.perf_counter() - t1
        names = ("qf_loss", "vf_loss", "policy_loss", "kl", "z_variance", "log_pi", "q_mean")
        metrics = {
            "return/before_adaptation": prior,  # z from the prior
            "return/after_adaptation": posterior,  # z from the posterior given this iteration's prior data
            **{f"pearl/{k}": v for k, v in zip(names, stats)},
            "time/gradient_steps_per_s": self.cfg.num_train_steps_per_itr / seconds,
        }
        return metrics, steps + more, sampling

    @staticmethod
    def progress(metrics: dict[str, Any]) -> str:
        return (
            f"return prior {metrics['return/before_adaptation']:8.2f} posterior "
            f"{metrics['return/after_adaptation']:8.2f} | q loss {metrics['pearl/qf_loss']:.3g} "
            f"kl {metrics['pearl/kl']:.3g}"
        )

    def sample_once(self, tasks: np.ndarray) -> int:
        """One iteration's collection passes (prior, then posterior shapes) on training tasks, z from the
        prior, the buffers untouched."""
        cfg = self.cfg
        slots = torch.arange(cfg.num_tasks_sample) % cfg.n_train_tasks
        steps = 0
        for episodes in (self.prior_episodes, self.posterior_episodes):
            if episodes:
                steps += self.collect(slots, self.prior_z((len(slots), episodes)))[0].num_steps
        return steps

    def fwdbwd_seconds(self, tasks: np.ndarray, repeats: int = 3) -> float:
        """One forward and one backward pass of every network over a gradient step's meta-batch (no update)."""
        self.initial_collection()
        agent, g = self.policy, self.setup.streams.actions
        times = []
        for _ in range(repeats):
            batch, context = self.losses_batch()
            t0 = time.perf_counter()
            obs = batch["obs"]
            mu, var = agent.posterior(context)
            zb = mu[:, None].expand(*obs.shape[:2], -1)
            noise = torch.randn(*obs.shape[:2], agent.act_dim, generator=g, device=g.device).to(self.device)
            a, log_pi, _, _ = agent.rsample(obs, zb, noise)
            q_in = torch.cat([obs, a, zb], -1)
            q = self.qf(q_in.reshape(1, -1, q_in.shape[-1]).expand(2, -1, -1))
            v_in = torch.cat([obs, zb], -1)
            v = self.vf(v_in.reshape(1, -1, v_in.shape[-1]))
            (q.sum() + v.sum() + log_pi.sum() + var.sum()).backward()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - t0)
        for module in (agent, self.qf, self.vf):
            module.zero_grad(set_to_none=True)
        return statistics.median(times)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "qf": self.qf.state_dict(),
            "vf": self.vf.state_dict(),
            "target_vf": self.target_vf.state_dict(),
            "q_adam": self.q_adam.state_dict(),
            "v_adam": self.v_adam.state_dict(),
            "policy_adam": self.policy_adam.state_dict(),
            "train_tasks": torch.as_tensor(self.train_tasks),
            "train_steps": self.train_steps,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            raise KeyError("optimizer")
        if not torch.equal(torch.as_tensor(self.train_tasks), state["train_tasks"]):
            raise ValueError("its training tasks are not the ones this run's seed draws")
        for name in ("qf", "vf", "target_vf", "q_adam", "v_adam", "policy_adam"):
            getattr(self, name).load_state_dict(state[name])
        self.train_steps = int(state["train_steps"])

    @staticmethod
    def buffer_file(run_dir: Path, iteration: int) -> Path:
        return Path(run_dir) / "buffers" / checkpoint_path(Path("."), iteration).name

    def save_extra(self, run_dir: Path, iteration: int) -> None:
        save_buffers(self.buffer_file(run_dir, iteration), {"rl": self.rl, "encoder": self.encoder_buffer})

    def prune_extra(self, run_dir: Path, iteration: int) -> None:
        keep = self.buffer_file(run_dir, iteration)
        for path in keep.parent.glob("iter_*.pt"):
            if path != keep:
                path.unlink(missing_ok=True)

    def load_extra(self, run_dir: Path, iteration: int) -> None:
        load_buffers(self.buffer_file(run_dir, iteration), {"rl": self.rl, "encoder": self.encoder_buffer})

    # ---------------------------------------------------------------- evaluation
    @classmethod
    def adaptation_curve(
        cls, run: Any, tasks: np.ndarray, steps: int, episodes: int, inner_lr: float, streams: Streams
    ) -> Curve:
        """Return of episode ``k = 0..steps`` of ``episodes`` independent trials per task (all in one
        batched env): sampled actions, z from the prior for the first ``exploration_episodes``,
        then from q(z | every transition of the trial so far). ``inner_lr`` is not used."""
        agent: PEARLAgent = run.policy
        cfg, device, g = run.config.pearl, run.device, streams.actions
        hook = NextObservations()
        sampler = Sampler(run.distribution, len(tasks), episodes, device, hook=hook)
        contexts, masks, returns, success = [], [], [], []
        try:
            with torch.no_grad():
                for k in range(steps + 1):
                    noise = torch.randn(len(tasks), episodes, agent.latent_size, generator=g, device=g.device)
                    z = noise.to(device)
                    if k >= cfg.exploration_episodes:
                        c = torch.cat(contexts, 2)  # [tasks, episodes, k x T, in]
                        mu, var = agent.posterior(c, torch.cat(masks, 2))
                        z = mu + var.sqrt() * z
                    ep = sampler.sample(agent, tasks, {}, streams.env, g, False, actor=LatentActor(agent, z))
                    move = lambda x: x.movedim(0, 2)  # noqa: E731  [T, t, e, ...] -> [t, e, T, ...]
                    actions, next_obs = move(agent.from_env(ep.actions)), move(hook.of(ep))
                    contexts.append(agent.context(move(ep.obs), actions, move(ep.rewards), next_obs))
                    masks.append(move(ep.mask))
                    returns.append(ep.task_returns().cpu().double().numpy())
                    if ep.success is not None:
                        success.append(ep.task_success().cpu().double().numpy())
        finally:
            sampler.close()
        return Curve(returns, list(range(steps + 1)), success)
