"""The meta-training loop. Read top to bottom: sample tasks, sample episodes with a zero
context, adapt, sample again with the adapted context, take a TRPO step, log, checkpoint.

A run directory is written only once training has shown it can proceed: everything (config,
env settings, memory, the run directory itself, a resumed checkpoint's agreement with the run's
config.yaml) is checked first, and config.yaml, run.json, progress.csv and tb/ are created (or,
on resume, rewritten) only after the first iteration has succeeded. A run that fails earlier
leaves nothing behind, and a directory without checkpoints is not a run: a later
``train --out`` starts over in it.
"""

from __future__ import annotations

import math
import platform
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
    check_out_path,
    checkpoint_path,
    first_line,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_json,
    read_progress,
    read_yaml_mapping,
    save_checkpoint,
    write_run_json,
)
from .config import Config, ConfigError, check_memory, from_dict, make_distribution
from .distributed import DistributedError, init_workers
from .evaluation import EvalResult, evaluate
from .logging import ProgressLine, make_logger
from .meta import MetaBatch, meta_update
from .partition import initial_fast_weights, resolve_partition
from .policies import make_policy
from .sampler import Sampler
from .seeding import TRAIN_STREAM, make_streams


def space_dims(distribution: envs.TaskDistribution) -> tuple[int, int]:
    """(observation size, action size or number of discrete actions) of a task distribution."""
    obs_dim = int(math.prod(distribution.observation_space.shape or (1,)))
    space = distribution.action_space
    act_dim = int(space.n) if hasattr(space, "n") else int(math.prod(space.shape or (1,)))
    return obs_dim, act_dim


def check_run_files(run_dir: Path, checkpoint: Path, config: Config) -> None:
    """Before a resume writes anything: the checkpoint must agree with the run's config.yaml
    (apart from ``iterations``, which a resume may extend), and progress.csv and run.json must
    be readable, so that a resume which would fail fails before touching the run."""
    recorded_path = run_dir / "config.yaml"
    if recorded_path.exists():
        data = read_yaml_mapping(recorded_path, "run config")
        try:
            recorded = from_dict(Config, data).to_dict()
        except ConfigError as exc:
            raise CheckpointError(f"run config {str(recorded_path)!r} is damaged: {exc}") from None
        mine, theirs = _flatten(config.to_dict()), _flatten(recorded)
        for key in sorted(mine.keys() | theirs.keys()):
            a, b = mine.get(key, "<absent>"), theirs.get(key, "<absent>")
            if key != "iterations" and a != b:
                raise CheckpointError(
                    f"checkpoint {str(checkpoint)!r} does not belong to this run: it has {key}={a!r}, the run's "
                    f"config.yaml has {b!r} (a checkpoint copied from another run, or an edited config.yaml?)"
                )
    if (run_dir / "progress.csv").exists():
        read_progress(run_dir / "progress.csv")
    if (run_dir / "run.json").exists() and not isinstance(read_json(run_dir / "run.json", "run record"), dict):
        raise CheckpointError(f"run record {str(run_dir / 'run.json')!r} is not a JSON object; fix or delete it")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; tuples compare as lists (YAML has no tuples)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): list(data) if isinstance(data, tuple) else data}


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
        self.distribution = make_distribution(config.env)
        envs.validate(self.distribution)  # a broken env fails here, with one line, not mid-training
        config.env.settings = self.distribution.settings()  # record every setting, defaults included
        self.first_task, self.local_tasks = self.workers.shard(config.meta_batch_size)
        self.check_memory()
        torch.manual_seed(config.seed)  # weight initialisation
        space = self.distribution.observation_space
        self.policy = make_policy(config.policy, space, self.distribution.action_space).to(self.device)
        self.partition = resolve_partition(self.policy, config.adaptation.partition)
        self.streams = make_streams(config.seed, TRAIN_STREAM, self.device)
        self.iteration, self.env_steps, self.wall_time = 0, 0, 0.0
        self.sampler: Sampler | None = None
        self.resumed_from: int | None = None  # the checkpoint's iteration when resumed

    def check_memory(self) -> None:
        """Refuse a batch that cannot fit before anything is allocated or written."""
        obs_dim, act_dim = space_dims(self.distribution)
        c, horizon = self.config, self.distribution.horizon
        lower = "env.settings.horizon, meta_batch_size, episodes_per_task or policy.hidden_sizes"
        batch = (self.local_tasks, c.episodes_per_task)
        check_memory(c.policy, obs_dim, act_dim, horizon, batch, self.device, "one meta-iteration", lower)
        lower = "evaluation.tasks, evaluation.episodes or env.settings.horizon"
        batch = (c.evaluation.tasks, c.evaluation.episodes)
        check_memory(c.policy, obs_dim, act_dim, horizon, batch, self.device, "the evaluation", lower)

    # ----------------------------------------------------------------- persistence
    @classmethod
    def resume(cls, run_dir: str | Path, iterations: int | None = None) -> Trainer:
        """Rebuild a trainer from a run directory's newest checkpoint, after checking that the
        checkpoint belongs to the run (agrees with its config.yaml) and that the run's files can
        be continued; nothing is written here."""
        run_dir = Path(run_dir)
        path = latest_checkpoint(run_dir)
        payload = load_checkpoint(path)
        try:
            config = from_dict(Config, payload["config"])
            config.validate()
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} holds a config caml-rl rejects: {exc}") from None
        check_run_files(run_dir, path, config)
        if iterations is not None:
            if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
                raise ConfigError(f"--iterations {iterations!r} is out of range; allowed: >= 0")
            config.iterations = iterations
        trainer = cls(config, run_dir)
        trainer.load_state(payload, path)
        return trainer

    def load_state(self, payload: dict[str, Any], path: Path | str = "checkpoint") -> None:
        try:
            self.policy.load_state_dict(payload["policy"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit this config's policy: {str(exc).splitlines()[0]}"
            ) from None
        rng = payload["rng"]
        missing = [k for k in ("tasks", "env", "actions") if k not in rng]
        if missing:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no random-stream state for {', '.join(missing)}, so training cannot "
                "continue from it (a PPO baseline's checkpoint? continue those with `caml-rl baseline --out`)"
            )
        try:
            self.streams.load_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has damaged random-stream state ({first_line(exc, 80)})"
            ) from None
        self.iteration = int(payload["iteration"])
        self.resumed_from = self.iteration
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
        """config.yaml and run.json (a resume appends its command to run.json's ``resumes``)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {
            "env": self.config.env.name,
            "env_settings": self.distribution.settings(),
            "task_names": list(self.distribution.task_names),
            "partition": list(self.partition),
            "device": str(self.device),
            "workers": self.workers.world_size,
            "versions": library_versions(),
        }
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        write_run_json(self.run_dir, record, self.resumed_from)

    def check_run_dir(self) -> None:
        """A new run needs a writable folder without checkpoints. Collective: when any worker
        refuses, every worker does, so no rank trains into an existing run."""
        problem: Exception | None = None
        try:
            check_out_path(self.run_dir, "run directory", folder=True)
            if self.resumed_from is None and list_checkpoints(self.run_dir):
                raise ConfigError(
                    f"run directory {str(self.run_dir)!r} already has checkpoints; "
                    f"use --resume {self.run_dir} or another --out"
                )
        except (ConfigError, CheckpointError) as exc:
            problem = exc
        if self.workers.any(problem is not None):
            raise problem or ConfigError(f"another worker refused run directory {str(self.run_dir)!r}")

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
            "trpo/line_search_evaluations": stats.line_search_evaluations,
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
        """Train up to ``config.iterations``, checkpointing atomically, then evaluate.

        The run's files are written only after the first iteration succeeded (see the module
        docstring), so a run that fails before that leaves the directory as it was."""
        cfg, main = self.config, self.workers.is_main
        self.check_run_dir()
        logger = None
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
                if logger is None:  # the first iteration worked: now the run's files may be written
                    self.write_run_record()
                    logger = make_logger(self.run_dir, keep_until=self.resumed_from)
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
            if logger is None:  # no iteration ran (iterations=0, or a resume already at its end)
                self.write_run_record()
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
