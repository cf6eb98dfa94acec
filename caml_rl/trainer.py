"""The meta-training loop. Read top to bottom: sample tasks, sample episodes with a zero
context, adapt, sample again with the adapted context, take a TRPO step, log, checkpoint.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from caml_rl import envs

from .adaptation import adapt, advantages
from .checkpoint import (
    CheckpointError,
    atomic_write_json,
    atomic_write_text,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .config import Config, ConfigError, from_dict
from .distributed import DistributedError, init_workers
from .evaluation import EvalResult, evaluate
from .logging import ProgressLine, make_logger
from .meta import MetaBatch, meta_update
from .partition import initial_fast_weights, resolve_partition
from .policies import make_policy
from .sampler import Sampler
from .seeding import TRAIN_STREAM, make_streams


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key device={name!r} but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def library_versions() -> dict[str, str]:
    import gymnasium
    import mujoco
    import numpy
    import stable_baselines3

    from . import __version__

    return {
        "caml_rl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
        "stable_baselines3": stable_baselines3.__version__,
    }


class Trainer:
    """Meta-trains one policy; ``Trainer.resume(run_dir)`` continues an interrupted run."""

    def __init__(self, config: Config, run_dir: str | Path):
        config.validate()
        self.config, self.run_dir = config, Path(run_dir)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.workers, self.device = init_workers(resolve_device(config.device))
        if config.meta_batch_size % self.workers.world_size:
            raise ConfigError(
                f"config key meta_batch_size={config.meta_batch_size} must be a multiple of the "
                f"{self.workers.world_size} distributed workers"
            )
        self.distribution = envs.make(config.env.name, **config.env.settings)
        envs.validate(self.distribution)  # a broken env fails here, with one line, not mid-training
        config.env.settings = self.distribution.settings()  # record every setting, defaults included
        torch.manual_seed(config.seed)  # weight initialisation
        space = self.distribution.observation_space
        self.policy = make_policy(config.policy, space, self.distribution.action_space).to(self.device)
        self.first_task, self.local_tasks = self.workers.shard(config.meta_batch_size)
        self.partition = resolve_partition(self.policy, config.adaptation.partition)
        self.streams = make_streams(config.seed, TRAIN_STREAM, self.device)
        self.iteration, self.env_steps, self.wall_time = 0, 0, 0.0
        self.sampler: Sampler | None = None

    # ----------------------------------------------------------------- persistence
    @classmethod
    def resume(cls, run_dir: str | Path, iterations: int | None = None) -> Trainer:
        """Rebuild a trainer from a run directory's newest checkpoint."""
        payload = load_checkpoint(latest_checkpoint(Path(run_dir)))
        config = from_dict(Config, payload["config"])
        if iterations is not None:
            config.iterations = iterations
        trainer = cls(config, run_dir)
        trainer.load_state(payload)
        return trainer

    def load_state(self, payload: dict[str, Any]) -> None:
        try:
            self.policy.load_state_dict(payload["policy"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not fit this config's policy: {str(exc).splitlines()[0]}") from None
        self.streams.load_state(payload["rng"])
        self.iteration = int(payload["iteration"])
        self.env_steps = int(payload.get("env_steps", 0))
        self.wall_time = float(payload.get("wall_time", 0.0))

    def save(self) -> Path:
        path = checkpoint_path(self.run_dir, self.iteration)
        save_checkpoint(
            path,
            {
                "iteration": self.iteration,
                "config": self.config.to_dict(),
                "policy": self.policy.state_dict(),
                "rng": self.streams.state(),
                "env_steps": self.env_steps,
                "wall_time": self.wall_time,
            },
        )
        return path

    def make_sampler(self) -> Sampler:
        """The sampler for this worker's share of the meta-batch."""
        shard = (self.first_task, self.config.meta_batch_size) if self.workers.world_size > 1 else None
        return Sampler(self.distribution, self.local_tasks, self.config.episodes_per_task, self.device, shard)

    def write_run_record(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        record = {
            "env": self.config.env.name,
            "env_settings": self.distribution.settings(),
            "task_names": list(self.distribution.task_names),
            "partition": list(self.partition),
            "device": str(self.device),
            "workers": self.workers.world_size,
            "versions": library_versions(),
            "command": sys.argv,
        }
        atomic_write_json(self.run_dir / "run.json", record)

    # ----------------------------------------------------------------- training
    def iterate(self) -> dict[str, Any]:
        """One meta-iteration; returns its metrics."""
        cfg, n, w = self.config, self.local_tasks, self.workers
        t0 = time.perf_counter()
        all_tasks = self.distribution.sample_tasks(self.streams.tasks, cfg.meta_batch_size)  # same on every rank
        tasks = all_tasks[self.first_task : self.first_task + n]
        start = initial_fast_weights(self.policy, self.partition, n)
        pre = self.sampler.sample(self.policy, tasks, start, self.streams.env, self.streams.actions)
        t_pre = time.perf_counter() - t0
        a = cfg.adaptation
        pre_adv = advantages(pre, a.gamma, a.gae_lambda)
        # differentiable in the shared weights: the meta-update reuses this graph
        fast = adapt(self.policy, start, pre, pre_adv, a.inner_lr, a.inner_steps, create_graph=not a.first_order)
        t1 = time.perf_counter()
        post = self.sampler.sample(self.policy, tasks, fast, self.streams.env, self.streams.actions)
        sampling = t_pre + time.perf_counter() - t1
        post_adv = advantages(post, a.gamma, a.gae_lambda)
        batch = MetaBatch(pre, pre_adv, post, post_adv, start, fast)
        stats = meta_update(self.policy, self.partition, batch, a, cfg.trpo, self.streams.actions, w.average)
        for p in self.policy.parameters():  # a no-op when ranks agree bit for bit; a guard when not
            w.broadcast_(p)
        self.iteration += 1
        returns = w.average(torch.stack([pre.task_returns().mean(), post.task_returns().mean()]).double().cpu())
        self.env_steps += int(w.average(torch.tensor(float(pre.num_steps + post.num_steps))) * w.world_size)
        seconds = time.perf_counter() - t0
        self.wall_time += seconds
        metrics = {
            "iteration": self.iteration,
            "return/before_adaptation": float(returns[0]),
            "return/after_adaptation": float(returns[1]),
            "trpo/accepted": int(stats.accepted),
            "trpo/reason": stats.reason,
            "trpo/kl": stats.kl,
            "trpo/surrogate_improvement": stats.improvement,
            "trpo/step_fraction": stats.step_fraction,
            "trpo/backtracks": stats.backtracks,
            "policy/action_std": float(self.policy.log_std.detach().exp().mean()) if not self.policy.discrete else 0.0,
            "time/iteration_seconds": seconds,
            "time/sampling_seconds": sampling,
            "time/update_seconds": seconds - sampling,
            "time/total_seconds": self.wall_time,
            "time/env_steps": self.env_steps,
        }
        if "context" in fast:
            metrics["adaptation/context_norm"] = float(fast["context"].detach().norm(dim=-1).mean())
        if pre.success is not None:
            success = w.average(torch.stack([pre.task_success().mean(), post.task_success().mean()]).double().cpu())
            metrics["success/before_adaptation"], metrics["success/after_adaptation"] = map(float, success)
        return metrics

    def train(self, evaluate_at_end: bool = True, quiet: bool = False) -> EvalResult | None:
        """Train up to ``config.iterations``, checkpointing atomically, then evaluate."""
        cfg, main = self.config, self.workers.is_main
        if main:
            self.write_run_record()
        logger = make_logger(self.run_dir, keep_until=self.iteration) if main else None
        progress = ProgressLine(cfg.iterations, start=self.iteration)
        self.sampler = self.make_sampler()
        try:
            while self.iteration < cfg.iterations:
                try:
                    metrics = self.iterate()
                except RuntimeError as exc:
                    if self.workers.world_size == 1:
                        raise
                    raise DistributedError(
                        f"rank {self.workers.rank} lost the other workers at iteration {self.iteration + 1} "
                        f"({str(exc).splitlines()[0][:100]}); the last checkpoint in {self.run_dir} is intact: "
                        "resume with the same torchrun command and --resume"
                    ) from None
                if not main:
                    continue
                for key, value in metrics.items():
                    logger.record(key, value, exclude=("tensorboard",) if isinstance(value, str) else None)
                logger.dump(step=self.iteration)
                if not quiet:
                    progress.update(self.iteration, metrics)
                if self.iteration % cfg.checkpoint_every == 0:
                    self.save()
        finally:
            self.sampler.close()
            if logger is not None:
                logger.close()
        if main and not checkpoint_path(self.run_dir, self.iteration).exists():
            self.save()
        self.workers.close()
        if not evaluate_at_end or not main:
            return None
        result = self.evaluate()
        atomic_write_json(self.run_dir / "eval.json", result.to_dict())
        if not quiet:
            print(f"\nevaluation on {result.num_tasks} new tasks ({result.env}, adapt={result.adapt}):")
            print(result.table())
        return result

    def evaluate(self, **overrides: Any) -> EvalResult:
        e, a = self.config.evaluation, self.config.adaptation
        kwargs = {
            "num_tasks": e.tasks,
            "steps": e.steps,
            "episodes": e.episodes,
            "inner_lr": e.inner_lr or a.inner_lr,
            "seed": self.config.seed,
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return evaluate(
            self.policy,
            self.distribution,
            self.partition,
            gamma=a.gamma,
            gae_lambda=a.gae_lambda,
            device=self.device,
            env_name=self.config.env.name,
            adapt_name=self.config.adaptation.partition,
            iteration=self.iteration,
            **kwargs,
        )
