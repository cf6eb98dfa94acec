"""The training loop every algorithm shares. Read top to bottom: sample the meta-batch's tasks,
let the algorithm (``config.algorithm``, :mod:`caml_rl.algorithm`) take its iteration on them, log,
checkpoint; at the end, evaluate on new tasks.

A run directory is written only once training has shown it can proceed: everything (config,
env settings, memory, the run directory itself, a resumed checkpoint's agreement with the run's
config.yaml) is checked first, and config.yaml, run.json, progress.csv and tb/ are created (or,
on resume, rewritten) only after the first iteration has succeeded. A run that fails earlier
leaves nothing behind, and a directory without checkpoints is not a run: a later
``train --out`` starts over in it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from caml_rl import envs
from caml_rl.envs.simulator import cpu_count
from caml_rl.envs.validation import sample_tasks

from .algorithm import Setup, algorithm_class
from .checkpoint import CheckpointError, atomic_write_json, check_out_path, first_line, read_progress
from .config import Config, ConfigError, make_distribution, resolved_settings
from .distributed import DistributedError, WorkerLostError, init_workers
from .evaluation import EvalResult
from .logging import ProgressLine, make_logger
from .memory import check_memory
from .run_directory import Checkpoint, RunDirectory
from .runs import LoadedRun, space_dims
from .seeding import TRAIN_STREAM, StreamDeviceError, make_streams


def check_run_files(run: RunDirectory, checkpoint: Path, config: Config) -> None:
    """Before a resume writes anything: the checkpoint must agree with the run's config.yaml
    (apart from ``iterations``, which a resume may extend), and progress.csv and run.json must
    be readable, so that a resume which would fail fails before touching the run."""
    run.check_belongs(checkpoint, config)
    if run.progress_file.exists():
        read_progress(run.progress_file)
    run.read_record()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key device={name!r} but no CUDA device is available; use cpu or auto")
    return torch.device(name)


class Trainer:
    """Meta-trains one policy; ``Trainer.resume(run_dir)`` continues an interrupted run."""

    def __init__(self, config: Config, run_dir: str | Path):
        """``config`` is not modified: the trainer keeps a copy with every env setting filled in."""
        config.validate()
        self.run_dir = Path(run_dir)
        self.files = RunDirectory(self.run_dir)
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
        # record every setting, defaults included
        resolved_env = dataclasses.replace(config.env, settings=resolved_settings(self.distribution, config.env.name))
        self.config = dataclasses.replace(config, env=resolved_env)
        self.first_task, self.local_tasks = self.workers.shard(config.meta_batch_size)
        self.check_memory()
        method = algorithm_class(config.algorithm)
        torch.manual_seed(config.seed)  # weight initialisation
        space, actions = self.distribution.observation_space, self.distribution.action_space
        self.policy = method.make_policy(self.config, space, actions).to(self.device)
        self.streams = make_streams(config.seed, TRAIN_STREAM, self.device)
        setup = Setup(self.config, self.distribution, self.device, self.workers, self.streams, *self.shard)
        self.algorithm = method(setup, self.policy)
        self.iteration, self.env_steps, self.wall_time = 0, 0, 0.0
        self.resumed_from: int | None = None  # the checkpoint's iteration when resumed

    @property
    def shard(self) -> tuple[int, int]:
        """This worker's first task of the meta-batch and how many it runs."""
        return self.first_task, self.local_tasks

    def check_memory(self) -> None:
        """Refuse a batch that cannot fit before anything is allocated or written."""
        obs_dim, act_dim = space_dims(self.distribution)
        config, horizon = self.config, self.distribution.horizon
        lower = "env.settings.horizon, meta_batch_size, episodes_per_task or policy.hidden_sizes"
        batch = (self.local_tasks, config.episodes_per_task)
        check_memory(config.policy, obs_dim, act_dim, horizon, batch, self.device, "one meta-iteration", lower)
        lower = "evaluation.tasks, evaluation.episodes or env.settings.horizon"
        batch = (config.evaluation.tasks, config.evaluation.episodes)
        check_memory(config.policy, obs_dim, act_dim, horizon, batch, self.device, "the evaluation", lower)

    # ----------------------------------------------------------------- persistence
    @classmethod
    def resume(cls, run_dir: str | Path, iterations: int | None = None) -> Trainer:
        """Rebuild a trainer from a run directory's newest checkpoint, after checking that the
        checkpoint belongs to the run (agrees with its config.yaml) and that the run's files can
        be continued; nothing is written here."""
        run = RunDirectory(run_dir)
        saved = run.load()
        check_run_files(run, saved.path, saved.config)
        config = saved.config
        if iterations is not None:
            if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
                raise ConfigError(f"--iterations {iterations!r} is out of range; allowed: >= 0")
            if iterations < saved.iteration:  # would only re-evaluate, over the run's eval.json
                raise ConfigError(
                    f"--iterations {iterations} is below the checkpoint's iteration {saved.iteration} "
                    f"({str(saved.path)!r}); allowed: >= {saved.iteration}"
                )
            config = dataclasses.replace(config, iterations=iterations)
        trainer = cls(config, run_dir)
        trainer.load_state(saved)
        return trainer

    def load_state(self, saved: Checkpoint) -> None:
        """Weights, iteration, counters and every random stream of ``saved``."""
        saved.load_policy(self.policy)
        rng = saved.payload["rng"]
        missing = [k for k in ("tasks", "env", "actions") if k not in rng]
        if missing:
            raise CheckpointError(
                f"checkpoint {str(saved.path)!r} has no random-stream state for {', '.join(missing)}, so training "
                "cannot continue from it (a PPO baseline's checkpoint? continue those with `caml-rl baseline --out`)"
            )
        try:
            self.streams.load_state(rng)
        except StreamDeviceError as exc:  # resumed on another kind of machine: not damage
            raise CheckpointError(f"checkpoint {str(saved.path)!r}: {exc}") from None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {str(saved.path)!r} has damaged random-stream state ({first_line(exc, 80)})"
            ) from None
        try:
            self.algorithm.load_state_dict(saved.payload.get("optimizer"))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {str(saved.path)!r} has no usable optimiser state ({first_line(exc, 80)}), "
                "so training cannot continue from it exactly"
            ) from None
        self.algorithm.load_extra(self.run_dir, saved.iteration)
        self.iteration = saved.iteration
        self.resumed_from = self.iteration
        self.env_steps = int(saved.payload.get("env_steps", 0))
        self.wall_time = float(saved.payload.get("wall_time", 0.0))

    def save(self) -> Path:
        """The checkpoint, after the algorithm's extra state (so a checkpoint never lacks its own)."""
        self.algorithm.save_extra(self.run_dir, self.iteration)
        path = self.files.save(
            self.iteration,
            self.config,
            self.policy,
            rng=self.streams.state(),
            env_steps=self.env_steps,
            wall_time=self.wall_time,
            optimizer=self.algorithm.state_dict(),
        )
        self.algorithm.prune_extra(self.run_dir, self.iteration)
        return path

    def write_run_record(self) -> None:
        """config.yaml and run.json (a resume appends its command to run.json's ``resumes``)."""
        details = {
            "algorithm": self.config.algorithm,
            **self.algorithm.details(),
            "device": str(self.device),
            "workers": self.workers.world_size,
            # of the process that wrote this record last
            "torch_threads": torch.get_num_threads(),
            "cpus": cpu_count(),  # the simulator threads it may use
        }
        self.files.write_record(self.config, self.distribution, details, self.resumed_from)

    def check_run_dir(self) -> None:
        """A new run needs a writable folder without checkpoints. Collective: when any worker
        refuses, every worker does, so no rank trains into an existing run."""
        problem: Exception | None = None
        try:
            check_out_path(self.run_dir, "run directory", folder=True)
            if self.resumed_from is None and self.files.checkpoints():
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
        """One iteration: this worker's share of the meta-batch's tasks, the algorithm's step; its metrics."""
        config, workers = self.config, self.workers
        t0 = time.perf_counter()
        all_tasks = sample_tasks(self.distribution, self.streams.tasks, config.meta_batch_size)  # same on every rank
        tasks = all_tasks[self.first_task : self.first_task + self.local_tasks]
        metrics, env_steps, sampling = self.algorithm.iterate(tasks)
        for p in self.policy.parameters():  # a no-op when ranks agree bit for bit; a guard when not
            workers.broadcast_(p)
        self.iteration += 1
        self.env_steps += env_steps
        seconds = time.perf_counter() - t0
        self.wall_time += seconds
        return {
            "iteration": self.iteration,
            **metrics,
            "time/iteration_seconds": seconds,
            "time/sampling_seconds": sampling,
            "time/update_seconds": seconds - sampling,
            "time/total_seconds": self.wall_time,
            "time/env_steps": self.env_steps,
        }

    def train(self, evaluate_at_end: bool = True, quiet: bool = False) -> EvalResult | None:
        """Train up to ``config.iterations``, checkpointing atomically, then evaluate.

        The run's files are written only after the first iteration succeeded (see the module
        docstring), so a run that fails before that leaves the directory as it was."""
        config, main = self.config, self.workers.is_main
        self.check_run_dir()
        logger = None
        progress = ProgressLine(config.iterations, self.algorithm.progress, start=self.iteration)
        self.algorithm.open()
        try:
            while self.iteration < config.iterations:
                try:
                    metrics = self.iterate()
                except WorkerLostError as exc:
                    raise DistributedError(
                        f"rank {self.workers.rank} lost the other workers at iteration {self.iteration + 1} "
                        f"({first_line(exc.__cause__ or exc, 100)}); the last checkpoint in {self.run_dir} is "
                        "intact: resume with the same torchrun command and --resume"
                    ) from exc
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
                if self.iteration % config.checkpoint_every == 0:
                    self.save()
        finally:
            self.algorithm.close()
            if logger is not None:
                logger.close()
        if main and not self.files.checkpoint_path(self.iteration).exists():
            if logger is None:  # no iteration ran (iterations=0, or a resume already at its end)
                self.write_run_record()
            self.save()
        self.workers.close()
        if not evaluate_at_end or not main:
            return None
        result = self.evaluate()
        atomic_write_json(self.files.eval_file, result.to_dict())
        if not quiet:
            print(f"\nevaluation on {result.num_tasks} new tasks ({result.env}, adapt={result.adapt}):")
            print(result.table())
        return result

    def evaluate(self, **overrides: Any) -> EvalResult:
        """The evaluation of ``LoadedRun.evaluate`` (same keyword overrides) on the trained policy."""
        run = LoadedRun(
            self.config,
            self.policy,
            self.distribution,
            type(self.algorithm).partition_of(self.config, self.policy),
            self.iteration,
            self.run_dir,
            self.device,
        )
        return run.evaluate(**overrides)
