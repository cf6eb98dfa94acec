"""The algorithm interface: what the trainer composes, and the registry of ``config.algorithm``.

The trainer owns what every method shares: the config, the run directory, the distributed
workers, the random streams (tasks, env resets, actions), the iteration counter, logging,
checkpoints and the evaluation file. An :class:`Algorithm` owns the rest: its policy (saved as a
checkpoint's ``policy``), its sampler, one training iteration on this worker's tasks, any state
of its own (an optimiser's moments) and its adaptation curve on new tasks. Adding a method is one
module with one subclass and one config section; nothing else branches on its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from .config import Config, ConfigError, register_section
from .seeding import Streams

if TYPE_CHECKING:
    from caml_rl.envs.base import TaskDistribution

    from .distributed import Workers


class DivergenceError(RuntimeError):
    """Training became non-finite (a loss or the policy's weights): the checkpoints written before
    are intact; the message says where it happened and what to lower."""


@dataclass
class Setup:
    """What the trainer hands an algorithm: its config and env, and this worker's share of the batch."""

    config: Config
    distribution: TaskDistribution
    device: torch.device
    workers: Workers
    streams: Streams
    first_task: int  # this worker's first task of the meta-batch
    local_tasks: int  # and how many it runs


@dataclass
class Curve:
    """An adaptation curve on new tasks: point ``k`` is the return after the method has seen
    ``episodes_seen[k]`` episodes of each task."""

    task_returns: list[np.ndarray]  # per point, [tasks]
    episodes_seen: list[int]
    task_success: list[np.ndarray]  # per point, [tasks]; empty for envs that report no success


class Algorithm(ABC):
    """One meta-RL method, as :class:`caml_rl.Trainer` composes it (see the module docstring)."""

    name: ClassVar[str]
    """The value of ``config.algorithm`` that selects it."""
    config_section: ClassVar[type | None] = None
    """A plug-in's own settings: a dataclass (a :class:`caml_rl.config.Section` with ``limited``
    fields is validated), read from the config's ``plugins.<name>`` section and recorded with the
    run. The built-in algorithms have top-level sections instead."""

    def __init__(self, setup: Setup, policy: torch.nn.Module):
        self.setup, self.policy = setup, policy

    @staticmethod
    @abstractmethod
    def make_policy(config: Config, observation_space: gym.spaces.Space, action_space: gym.spaces.Space):
        """The policy a config describes (its weights come from the global torch seed)."""

    @classmethod
    def settings(cls, config: Config) -> Any:
        """This algorithm's ``plugins.<name>`` section of ``config`` (its defaults when absent)."""
        section = config.plugins.get(cls.name)
        if section is None and cls.config_section is not None:
            return cls.config_section()
        return section

    @classmethod
    def label(cls, config: Config) -> str:
        """What adapts, for tables and eval.json's ``adapt``."""
        return cls.name

    @staticmethod
    def partition_of(config: Config, policy: torch.nn.Module) -> tuple[str, ...]:
        """The parameters a gradient step adapts per task (none for a method that adapts otherwise)."""
        return ()

    @abstractmethod
    def iterate(self, tasks: np.ndarray) -> tuple[dict[str, Any], int, float]:
        """One training iteration on this worker's ``tasks``: ``(metrics, env steps, sampling
        seconds)``; metrics are already averaged over the workers."""

    def state_dict(self) -> dict[str, Any] | None:
        """State beyond the policy and the random streams (an optimiser's), for checkpoints."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; raise ``ValueError``/``KeyError`` when it is unusable."""

    def open(self) -> None:
        """Build the samplers' envs (before the first iteration)."""

    def save_extra(self, run_dir: Path, iteration: int) -> None:
        """Write state too large for a checkpoint (PEARL's replay buffers) under ``run_dir``, atomically;
        called just before the checkpoint of ``iteration`` is written, so a checkpoint on disk always has
        its extra state beside it. Default: nothing."""

    def prune_extra(self, run_dir: Path, iteration: int) -> None:
        """Called once the checkpoint of ``iteration`` is written: delete extra state of other iterations."""

    def load_extra(self, run_dir: Path, iteration: int) -> None:
        """On resume, restore what :meth:`save_extra` wrote for ``iteration``; raise
        :class:`~caml_rl.checkpoint.CheckpointError` (one line) when it is missing or damaged."""

    @staticmethod
    @abstractmethod
    def progress(metrics: dict[str, Any]) -> str:
        """The middle of the one-line progress report, e.g. ``return before -25.3 after -18.2 | kl ...``."""

    @abstractmethod
    def sample_once(self, tasks: np.ndarray) -> int:
        """One sampling pass of an iteration's batch on ``tasks`` (for ``caml-rl benchmark``); its env steps."""

    @abstractmethod
    def fwdbwd_seconds(self, tasks: np.ndarray, repeats: int = 3) -> float:
        """Seconds of one forward + backward pass of the policy over an iteration's samples: the
        unit ``caml-rl benchmark`` reports the update's cost in."""

    def details(self) -> dict[str, Any]:
        """Facts for run.json (e.g. what adapts)."""
        return {}

    def close(self) -> None:
        """Free the samplers' envs."""

    @classmethod
    @abstractmethod
    def adaptation_curve(
        cls, run: Any, tasks: np.ndarray, steps: int, episodes: int, inner_lr: float, streams: Streams
    ) -> Curve:
        """The :class:`Curve` of a loaded run (``caml_rl.runs.LoadedRun``) on ``tasks``: its
        return before adapting and after each of ``steps`` adaptation steps."""


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: ``config.algorithm: <cls.name>`` selects ``cls`` (and ``plugins.<cls.name>``
    holds its ``config_section``, if it has one)."""
    if cls.config_section is not None:
        register_section(cls.name, cls.config_section)
    ALGORITHMS[cls.name] = cls
    return cls


def algorithm_class(name: str) -> type[Algorithm]:
    """The registered class of ``config.algorithm``. The built-in ones register when ``caml_rl``
    is imported (its ``__init__`` imports them: importing them here would be an import circle)."""
    if name not in ALGORITHMS:
        raise ConfigError(f"config key algorithm={name!r} is not allowed; allowed: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
