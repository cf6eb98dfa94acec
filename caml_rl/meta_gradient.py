"""Gradient-based meta-RL: CAML (adapt the context), MAML (adapt every weight) and anything
between, chosen by ``adaptation.partition``; the outer loop is TRPO or PPO/ProMP (``optimizer``).

One iteration: sample every task's episodes with the starting values, take the inner step(s),
sample again with the adapted values, and update the shared weights through the inner step.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .adaptation import adapt, advantages, log_probs
from .algorithm import Algorithm, Curve, Setup, register_algorithm
from .config import Config
from .evaluation import adaptation_steps
from .meta import MetaBatch, meta_update
from .meta_ppo import MetaPPO, ppo_update
from .partition import as_leaves, initial_fast_weights, policy_forward, resolve_partition
from .policies import ContextMLPPolicy, make_policy
from .sampler import Sampler
from .seeding import Streams
from .timing import section


@register_algorithm
class MetaGradient(Algorithm):
    """CAML / MAML / ProMP: the default ``algorithm: meta_gradient``."""

    name = "meta_gradient"

    def __init__(self, setup: Setup, policy: ContextMLPPolicy):
        super().__init__(setup, policy)
        config = setup.config
        self.partition = resolve_partition(policy, config.adaptation.partition)
        self.outer = MetaPPO(policy, config.ppo) if config.optimizer == "ppo" else None
        self.sampler: Sampler | None = None

    @classmethod
    def label(cls, config: Config) -> str:
        return config.adaptation.partition

    @staticmethod
    def partition_of(config: Config, policy: torch.nn.Module) -> tuple[str, ...]:
        return resolve_partition(policy, config.adaptation.partition)

    @staticmethod
    def make_policy(config: Config, observation_space: gym.spaces.Space, action_space: gym.spaces.Space):
        return make_policy(config.policy, observation_space, action_space)

    def open(self) -> None:
        """The sampler for this worker's share of the meta-batch."""
        s = self.setup
        shard = (s.first_task, s.config.meta_batch_size) if s.workers.world_size > 1 else None
        self.sampler = Sampler(s.distribution, s.local_tasks, s.config.episodes_per_task, s.device, shard)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()

    def details(self) -> dict[str, Any]:
        return {"partition": list(self.partition), "optimizer": self.setup.config.optimizer}

    def state_dict(self) -> dict[str, Any] | None:
        return self.outer.state_dict() if self.outer is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.outer is not None:
            if state is None:
                raise KeyError("optimizer")
            self.outer.load_state_dict(state)

    def iterate(self, tasks: np.ndarray) -> tuple[dict[str, Any], int, float]:
        s, policy, streams, partition = self.setup, self.policy, self.setup.streams, self.partition
        config, workers, adaptation = s.config, s.workers, s.config.adaptation
        t0 = time.perf_counter()
        start = initial_fast_weights(policy, partition, s.local_tasks)
        pre = self.sampler.sample(policy, tasks, start, streams.env, streams.actions)
        t_pre = time.perf_counter() - t0
        pre_adv = advantages(pre, adaptation.gamma, adaptation.gae_lambda)
        pre_logp = None  # lvc's pi_old: the policy that sampled, held fixed through every re-adaptation
        if adaptation.inner_objective == "lvc":
            with torch.no_grad():
                pre_logp = log_probs(policy, pre, start)
        # TRPO: differentiable in the shared weights, the meta-update reuses this graph. PPO re-takes
        # the inner step at every gradient step and reads this one only detached: no graph is built
        # (with MAML its second-order graph would be held through post-sampling and the update).
        trpo = self.outer is None
        with section("inner_step"):
            fast = adapt(
                policy,
                start,
                pre,
                pre_adv,
                adaptation.inner_lr,
                adaptation.inner_steps,
                create_graph=trpo and not adaptation.first_order,
                objective=adaptation.inner_objective,
                behaviour_logp=pre_logp,
            )
        if not trpo:
            fast = {k: v.detach() for k, v in fast.items()}
        t1 = time.perf_counter()
        post = self.sampler.sample(policy, tasks, fast, streams.env, streams.actions)
        sampling = t_pre + time.perf_counter() - t1
        post_adv = advantages(post, adaptation.gamma, adaptation.gae_lambda)
        batch = MetaBatch(pre, pre_adv, post, post_adv, start, fast, pre_logp)
        if trpo:
            shard = (s.first_task, config.meta_batch_size) if workers.world_size > 1 else None
            stats = meta_update(
                policy, self.partition, batch, adaptation, config.trpo, streams.actions, workers.average, shard
            )
            outer = {
                "trpo/accepted": int(stats.accepted),
                "trpo/reason": stats.reason,
                "trpo/kl": stats.kl,
                "trpo/surrogate_improvement": stats.improvement,
                "trpo/step_fraction": stats.step_fraction,
                "trpo/line_search_evaluations": stats.line_search_evaluations,
            }
        else:
            shard = (s.first_task, config.meta_batch_size)
            with section("ppo_update"):
                ppo = ppo_update(
                    policy, self.partition, batch, adaptation, self.outer, streams.actions, workers.average, shard
                )
            outer = {f"ppo/{k}": v for k, v in dataclasses.asdict(ppo).items()}
        returns = workers.average(torch.stack([pre.task_returns().mean(), post.task_returns().mean()]).double().cpu())
        steps = workers.average(torch.tensor(float(pre.num_steps + post.num_steps)))
        metrics = {
            "return/before_adaptation": float(returns[0]),
            "return/after_adaptation": float(returns[1]),
            **outer,
            "policy/action_std": float(policy.log_std.detach().exp().mean()) if not policy.discrete else 0.0,
        }
        if "context" in fast:
            metrics["adaptation/context_norm"] = float(fast["context"].detach().norm(dim=-1).mean())
        if pre.success is not None:
            success = torch.stack([pre.task_success().mean(), post.task_success().mean()]).double().cpu()
            success = workers.average(success)
            metrics["success/before_adaptation"], metrics["success/after_adaptation"] = map(float, success)
        return metrics, int(steps * workers.world_size), sampling

    def sample_once(self, tasks: np.ndarray) -> int:
        s = self.setup
        start = initial_fast_weights(self.policy, self.partition, len(tasks))
        return self.sampler.sample(self.policy, tasks, start, s.streams.env, s.streams.actions).num_steps

    def fwdbwd_seconds(self, tasks: np.ndarray, repeats: int = 3) -> float:
        """Over twice one sampling pass's episodes: the pre- and post-adaptation samples."""
        s, policy = self.setup, self.policy
        fast = as_leaves(initial_fast_weights(policy, self.partition, len(tasks)))
        ep = self.sampler.sample(policy, tasks, fast, s.streams.env, s.streams.actions)
        obs = torch.cat([ep.obs, ep.obs], dim=2)
        actions = torch.cat([ep.actions, ep.actions], dim=2)
        times = []
        for _ in range(repeats):
            policy.zero_grad()
            t0 = time.perf_counter()
            policy.distribution(policy_forward(policy, obs, fast)).log_prob(actions).sum().backward()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    @staticmethod
    def progress(metrics: dict[str, Any]) -> str:
        if "trpo/accepted" in metrics:
            status = "accepted" if metrics["trpo/accepted"] else f"rejected ({metrics['trpo/reason']})"
            update = f"kl {metrics['trpo/kl']:.4f} {status}"
        else:
            update = f"kl {metrics['ppo/kl']:.4f} clipped {metrics['ppo/clip_fraction']:.2f}"
            if metrics["ppo/skipped"]:
                update += f" ({metrics['ppo/skipped']} non-finite steps skipped)"
        return (
            f"return before {metrics['return/before_adaptation']:8.2f}"
            f" after {metrics['return/after_adaptation']:8.2f} | {update}"
        )

    @classmethod
    def adaptation_curve(
        cls, run: Any, tasks: np.ndarray, steps: int, episodes: int, inner_lr: float, streams: Streams
    ) -> Curve:
        """Return after 0..``steps`` inner steps, each on ``episodes`` fresh episodes per task:
        point ``k`` has seen ``k x episodes`` episodes of the task."""
        gamma, gae_lambda = run.config.adaptation.gamma, run.config.adaptation.gae_lambda
        sampler = Sampler(run.distribution, len(tasks), episodes, run.device)
        returns: list[np.ndarray] = []
        success: list[np.ndarray] = []
        try:
            for _, ep, _ in adaptation_steps(
                run.policy,
                sampler,
                run.partition,
                tasks,
                steps,
                inner_lr,
                gamma,
                gae_lambda,
                streams,
            ):
                returns.append(ep.task_returns().cpu().double().numpy())
                if ep.success is not None:
                    success.append(ep.task_success().cpu().double().numpy())
        finally:
            sampler.close()
        return Curve(returns, [k * episodes for k in range(steps + 1)], success)
