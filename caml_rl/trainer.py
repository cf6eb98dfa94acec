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
from stable_baselines3.common.logger import Logger

from caml_rl import envs
from caml_rl.envs.simulator import cpu_count
from caml_rl.envs.validation import sample_tasks

from .algorithm import Setup, algorithm_class
from .checkpoint import first_line
from .config import Config, ConfigError, make_distribution, resolved_settings
from .distributed import DistributedError, WorkerLostError, init_workers, resolve_device
from .evaluation import EvalResult
from .logging import ProgressLine, make_logger
from .memory import check_training_memory
from .run_directory import Checkpoint, RunDirectory
from .runs import LoadedRun, space_dims
from .seeding import TRAIN_STREAM, make_streams


class Trainer:
    """Meta-trains one policy; ``Trainer.resume(run_dir)`` continues an interrupted run."""

    # ----------------------------------------------------------------- setup
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
        horizon = self.distribution.horizon
        check_training_memory(self.config, obs_dim, act_dim, horizon, self.local_tasks, self.device)

    # ----------------------------------------------------------------- resume
    @classmethod
    def resume(cls, run_dir: str | Path, iterations: int | None = None) -> Trainer:
        """Rebuild a trainer from a run directory's newest checkpoint, after checking that the
        checkpoint belongs to the run (agrees with its config.yaml) and that the run's files can
        be continued; nothing is written here."""
        run = RunDirectory(run_dir)
        saved = run.load()
        run.check_resumable(saved.path, saved.config)
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
        saved.load_streams(self.streams)
        saved.load_optimizer(self.algorithm)
        self.algorithm.load_extra(self.run_dir, saved.iteration)
        self.iteration = saved.iteration
        self.resumed_from = self.iteration
        self.env_steps = int(saved.payload.get("env_steps", 0))
        self.wall_time = float(saved.payload.get("wall_time", 0.0))

    # ----------------------------------------------------------------- one iteration
    def iterate(self) -> dict[str, Any]:
        """One iteration: this worker's share of the meta-batch's tasks, the algorithm's step; its metrics."""
        t0 = time.perf_counter()
        all_tasks = sample_tasks(self.distribution, self.streams.tasks, self.config.meta_batch_size)  # every rank
        tasks = all_tasks[self.first_task : self.first_task + self.local_tasks]
        metrics, env_steps, sampling = self.algorithm.iterate(tasks)
        for p in self.policy.parameters():  # a no-op when ranks agree bit for bit; a guard when not
            self.workers.broadcast_(p)
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
        self.check_run_dir()
        logger = None
        progress = ProgressLine(self.config.iterations, self.algorithm.progress, start=self.iteration)
        self.algorithm.open()
        try:
            while self.iteration < self.config.iterations:
                metrics = self.iterate_or_explain()
                if not self.workers.is_main:
                    continue
                if logger is None:  # the first iteration worked: now the run's files may be written
                    logger = self.start_files()
                self.log(logger, metrics, progress if not quiet else None)
                if self.iteration % self.config.checkpoint_every == 0:
                    self.save()
        finally:
            self.algorithm.close()
            if logger is not None:
                logger.close()
        if self.workers.is_main and not self.files.checkpoint_path(self.iteration).exists():
            if logger is None:  # no iteration ran (iterations=0, or a resume already at its end)
                self.write_run_record()
            self.save()
        self.workers.close()
        if not evaluate_at_end or not self.workers.is_main:
            return None
        return self.final_evaluation(quiet)

    def iterate_or_explain(self) -> dict[str, Any]:
        """:meth:`iterate`, a lost worker turned into one line saying how to resume."""
        try:
            return self.iterate()
        except WorkerLostError as exc:
            raise DistributedError(
                f"rank {self.workers.rank} lost the other workers at iteration {self.iteration + 1} "
                f"({first_line(exc.__cause__ or exc, 100)}); the last checkpoint in {self.run_dir} is "
                "intact: resume with the same torchrun command and --resume"
            ) from exc

    # ----------------------------------------------------------------- log
    def start_files(self) -> Logger:
        """The run record, and the logger that writes progress.csv and tb/."""
        self.write_run_record()
        return make_logger(self.run_dir, keep_until=self.resumed_from)

    def log(self, logger: Logger, metrics: dict[str, Any], progress: ProgressLine | None) -> None:
        """One iteration's metrics to progress.csv and tb/ (strings to the csv only), and the progress line."""
        for key, value in metrics.items():
            logger.record(key, value, exclude=("tensorboard",) if isinstance(value, str) else None)
        logger.dump(step=self.iteration)
        if progress is not None:
            progress.update(self.iteration, metrics)

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
        problem = self.files.refusal(resuming=self.resumed_from is not None)
        if self.workers.any(problem is not None):
            raise problem or ConfigError(f"another worker refused run directory {str(self.run_dir)!r}")

    # ----------------------------------------------------------------- checkpoint
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

    # ----------------------------------------------------------------- evaluation
    def final_evaluation(self, quiet: bool) -> EvalResult:
        """:meth:`evaluate`, written to eval.json and, unless ``quiet``, printed."""
        result = self.evaluate()
        self.files.write_eval(result)
        if not quiet:
            print(f"\nevaluation on {result.num_tasks} new tasks ({result.env}, adapt={result.adapt}):")
            print(result.table())
        return result

    def evaluate(self, **overrides: Any) -> EvalResult:
        """The evaluation of ``LoadedRun.evaluate`` (same keyword overrides) on the trained policy."""
        partition = type(self.algorithm).partition_of(self.config, self.policy)
        run = LoadedRun(
            self.config, self.policy, self.distribution, partition, self.iteration, self.run_dir, self.device
        )
        return run.evaluate(**overrides)
