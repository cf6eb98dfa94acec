"""The task-distribution protocol, the batched-env protocol and the registry.

A *task distribution* draws task parameters (one float row per task) from a seeded generator
and builds one *batched env* that steps ``num_envs`` simulations together. The sampler sets the
tasks at ``reset`` (each task's row repeated once per episode), so one env object serves every
meta-iteration. Everything the sampler sees is a torch tensor on the env's device.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch


class TaskDistributionError(ValueError):
    """A task distribution or a user's env broke the contract; the message says how."""


class EnvFault(TaskDistributionError):
    """A fault of one env at one step: a contract breach, or an exception raised by the user's code.

    One line naming the env, the step, the simulation and its task parameters. ``row`` (the task's
    index in the batch) is filled in by whoever knows the batch layout (the sampler), so an adapter
    that only knows simulation ``sim`` can raise it; the user's exception stays as ``__cause__``.
    """

    def __init__(
        self,
        env: str,
        step: int | str,
        problem: str,
        *,
        sim: int | None = None,
        task: np.ndarray | None = None,
        task_names: tuple[str, ...] = (),
        raised: bool = False,
    ):
        super().__init__(problem)
        self.env, self.step, self.problem, self.sim, self.raised = env, step, problem, sim, raised
        self.task = None if task is None else np.asarray(task, dtype=np.float64).reshape(-1)
        self.task_names = tuple(task_names)
        self.row: int | None = None

    def where(self) -> str:
        where = self.step if isinstance(self.step, str) else f"step {self.step}"
        if self.sim is None:
            return where
        where += f", sim {self.sim}"
        if self.task is not None:
            names = (
                self.task_names
                if len(self.task_names) == len(self.task)
                else [f"task[{j}]" for j in range(len(self.task))]
            )
            values = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, self.task))
            where += f" (task row {self.row}: {values})" if self.row is not None else f" (task {values})"
        return where

    def __str__(self) -> str:
        verb = "failed" if self.raised else "broke the task-distribution contract"
        return f"env {self.env!r} {verb} at {self.where()}: {self.problem}"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, for naming a user's exception in a one-line error."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class BatchedEnv(ABC):
    """``num_envs`` simulations stepped together; all inputs and outputs are batched tensors."""

    num_envs: int
    device: torch.device
    success: torch.Tensor | None = None
    """Optional ``[num_envs]`` bool, updated by ``step``: the task is solved at this step
    (e.g. Meta-World's ``info["success"]``). Envs that set it get success rates logged."""
    info: dict[str, Any] = {}  # read only; an env that measures assigns its own
    """Optional measurements of the last ``step``, ``[num_envs, ...]`` arrays or tensors by name.
    ``velocity`` (forward velocity first) gets a velocity plot in ``caml-rl visualize``."""

    @abstractmethod
    def reset(self, tasks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Start one episode per env; ``tasks: [num_envs, task_dim]``. Returns obs ``[num_envs, obs_dim]``.

        Draw each simulation's reset randomness as one array whose leading dimension is
        ``num_envs`` (``rng.uniform(-s, s, size=(num_envs, k))``). Under distributed training
        ``rng`` is a :class:`ShardedGenerator`, which makes such a draw this worker's rows of the
        whole batch's draw, so the workers' initial states together are a single process's. A
        per-simulation seed adds ``rng_offset(rng)`` to the simulation's index.
        """

    @abstractmethod
    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply ``actions: [num_envs, act_dim]`` (or ``[num_envs]`` for discrete).

        Returns ``(obs [num_envs, obs_dim] float32, reward [num_envs] floating, terminated
        [num_envs] bool)``, all finite; the sampler checks this at every step. Box actions arrive
        clipped to the action space's bounds. Envs that terminated may keep being stepped (their
        values must stay finite); the sampler masks their steps out.
        """

    def close(self) -> None:
        """Release simulator resources."""

    def pending_faults(self) -> torch.Tensor | None:
        """For an env that defers its fault checks (a GPU simulator must not wait for the device at
        every step): a 0-dim bool tensor on its device, computed without reading it, true when a
        simulation went bad since the last reset. The sampler folds it into its one end-of-rollout
        read and, when it is true, calls :meth:`report_faults`. None (the default): every step is
        checked as it happens."""
        return None

    def report_faults(self) -> None:
        """Raise ``TaskDistributionError`` for the faults :meth:`pending_faults` flagged."""


class ShardedGenerator(np.random.Generator):
    """One worker's view of the whole batch's reset randomness (distributed training).

    It shares the bit generator of the stream it wraps, so it advances that stream exactly as a
    single process would. Any draw whose ``size`` leads with this worker's ``num_envs``
    (``size=num_envs`` or ``size=(num_envs, ...)``) is drawn for the whole batch,
    ``total_envs`` rows, and this worker's rows ``first_env .. first_env + num_envs`` are
    returned; every other draw (a scalar seed, say) is the one every worker makes. Parameters
    (``low``, ``scale``, ...) must broadcast against the whole batch's shape: scalars, or arrays
    over the trailing dimensions. The cost is drawing the whole batch's reset noise on every
    worker, once per rollout: a few thousand numbers for the MuJoCo tasks.
    """

    def __init__(self, rng: np.random.Generator, first_env: int, num_envs: int, total_envs: int):
        super().__init__(rng.bit_generator)
        if not (0 <= first_env and num_envs >= 1 and first_env + num_envs <= total_envs):
            raise ValueError(f"sims {first_env}..{first_env + num_envs - 1} are not within a batch of {total_envs}")
        self.first_env, self.num_envs, self.total_envs = first_env, num_envs, total_envs

    def _whole_batch(self, size: Any) -> Any:
        """``size`` widened to the whole batch, or None when the draw is not per simulation."""
        if size is None or self.num_envs == self.total_envs:
            return None
        if isinstance(size, int | np.integer):
            return self.total_envs if int(size) == self.num_envs else None
        size = tuple(size)
        return (self.total_envs, *size[1:]) if size and int(size[0]) == self.num_envs else None


def _sharded_draw(name: str) -> Callable[..., Any]:
    method = getattr(np.random.Generator, name)
    signature = inspect.signature(method)

    def draw(self: ShardedGenerator, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        out, size = bound.arguments.get("out"), bound.arguments.get("size")
        if size is None and out is not None:
            size = out.shape
        whole = self._whole_batch(size)
        if whole is None:
            return method(self, *args, **kwargs)
        bound.arguments["size"] = whole
        bound.arguments.pop("out", None)
        rows = method(*bound.args, **bound.kwargs)[self.first_env : self.first_env + self.num_envs]
        if out is None:
            return rows
        out[...] = rows
        return out

    draw.__name__, draw.__doc__ = name, method.__doc__
    return draw


def _draws_with_size() -> list[str]:
    names = []
    for name in dir(np.random.Generator):
        if name.startswith("_"):
            continue
        try:
            params = inspect.signature(getattr(np.random.Generator, name)).parameters
        except (TypeError, ValueError):
            continue
        if "size" in params:
            names.append(name)
    return names


for _name in _draws_with_size():
    setattr(ShardedGenerator, _name, _sharded_draw(_name))


def rng_offset(rng: np.random.Generator) -> int:
    """The index in the whole batch of this env's first simulation: ``rng.first_env`` under
    distributed training (a :class:`ShardedGenerator`), else 0."""
    return int(getattr(rng, "first_env", 0))


@dataclasses.dataclass
class TaskDistribution(ABC):
    """A distribution over tasks. Subclasses are dataclasses whose fields are the settings.

    Every field is a setting a config may override (``env.settings`` in YAML) and is recorded
    with each run. ``task_names`` names the columns of the task array.
    """

    name: ClassVar[str]
    task_names: ClassVar[tuple[str, ...]]
    tasks_ignored_hint: ClassVar[str] = "does the batched env's reset(tasks, rng) apply the tasks?"
    """What the validator asks when two different tasks behave identically: where this kind of
    distribution hands the tasks to its env."""
    horizon: int = 100

    @property
    @abstractmethod
    def observation_space(self) -> gym.spaces.Box:
        """The space of one env's observation."""

    @property
    @abstractmethod
    def action_space(self) -> gym.spaces.Space:
        """The space of one env's action (``Box`` or ``Discrete``)."""

    @abstractmethod
    def sample_tasks(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        """Draw ``[num_tasks, len(task_names)]`` task parameters (float64) from ``rng``."""

    @abstractmethod
    def make_vec_env(self, num_envs: int, device: torch.device) -> BatchedEnv:
        """Build one batched env of ``num_envs`` simulations."""

    def settings(self) -> dict[str, Any]:
        """The settings as plain data, for the run record."""
        return dataclasses.asdict(self)

    def render_env(self, task: np.ndarray) -> gym.Env | None:
        """One task as a Gymnasium env whose ``render()`` returns RGB frames, or None if this
        distribution cannot draw itself. ``caml-rl visualize`` films the adapted policy in it."""
        return None

    def validate_settings(self) -> None:
        """Raise ``TaskDistributionError`` naming a bad setting; subclasses extend."""
        if not isinstance(self.horizon, int) or self.horizon < 1:
            raise TaskDistributionError(f"env setting horizon={self.horizon!r} must be an integer >= 1")


_REGISTRY: dict[str, Callable[..., TaskDistribution]] = {}


def register(name: str, factory: Callable[..., TaskDistribution], *, overwrite: bool = False) -> None:
    """Make a task distribution available by name to configs and the CLI."""
    if name in _REGISTRY and not overwrite:
        raise TaskDistributionError(f"task distribution {name!r} is already registered")
    _REGISTRY[name] = factory


def registered() -> dict[str, Callable[..., TaskDistribution]]:
    """Name -> factory of every registered task distribution."""
    return dict(_REGISTRY)


def import_module(module_name: str, why: str = "") -> Any:
    """Import a user's module, from the current directory too (as ``python -m`` would).

    The ``caml-rl`` script does not put the current directory on ``sys.path``; it is appended
    (searched last, so it never shadows an installed package) only when the module is not found
    otherwise. Any failure, including an exception raised while the module runs, is one line.
    """
    why = f" ({why})" if why else ""
    try:
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            cwd = os.getcwd()
            if exc.name != module_name.partition(".")[0] or cwd in sys.path or "" in sys.path:
                raise
            sys.path.append(cwd)
            return importlib.import_module(module_name)
    except Exception as exc:
        raise TaskDistributionError(f"module {module_name!r}{why} could not be imported: {one_line(exc)}") from exc


def import_user_modules(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import the modules named by ``$CAML_RL_IMPORT`` (comma-separated) and ``modules``.

    For the command line (``--import MODULE``): a distribution registered from Python by name is
    known to a new process (evaluate, visualize, report, ``--resume``) only once its module has
    run. The list is exported to ``$CAML_RL_IMPORT``, so the runs ``sweep`` starts import it too.
    """
    names = [m.strip() for m in os.environ.get("CAML_RL_IMPORT", "").split(",") if m.strip()]
    names = list(dict.fromkeys(names + [m.strip() for m in modules]))
    for module_name in names:
        import_module(module_name, "named by --import or $CAML_RL_IMPORT")
    if names:
        os.environ["CAML_RL_IMPORT"] = ",".join(names)


def _import_factory(name: str) -> None:
    """``"my_module:MyDistribution"`` imports and registers a user's class under that name."""
    module_name, _, attr = name.partition(":")
    try:
        module = import_module(module_name)
    except TaskDistributionError as exc:
        cause = exc.__cause__
        raise TaskDistributionError(f"env {name!r} could not be imported: {one_line(cause)}") from cause
    try:
        factory = getattr(module, attr)
    except AttributeError as exc:
        raise TaskDistributionError(f"env {name!r} could not be imported: {exc}") from exc
    register(name, factory)


def make(name: str, **settings: Any) -> TaskDistribution:
    """Build a registered task distribution with the given settings, validated.

    ``name`` is a registered name or ``"module:Class"`` (imported, then registered).
    """
    if name not in _REGISTRY and ":" in name:
        _import_factory(name)
    if name not in _REGISTRY:
        raise TaskDistributionError(
            f"unknown env {name!r}; registered: {', '.join(sorted(_REGISTRY))} (see `caml-rl envs`); "
            "give your own as module:Class, or name the module that registers it with --import MODULE"
        )
    factory = _REGISTRY[name]
    cls = factory.func if isinstance(factory, functools.partial) else factory  # a preset of a class
    if dataclasses.is_dataclass(cls):
        allowed = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(settings) - allowed)
        if unknown:
            raise TaskDistributionError(
                f"unknown setting env.settings.{unknown[0]} for env {name!r}; allowed: {', '.join(sorted(allowed))}"
            )
    try:
        dist = factory(**settings)
    except TypeError as exc:
        raise TaskDistributionError(f"env {name!r} rejected its settings: {exc}") from None
    if not isinstance(dist, TaskDistribution):
        raise TaskDistributionError(
            f"env {name!r} built a {type(dist).__name__}, not a caml_rl.envs.TaskDistribution; "
            "subclass it (docs: Task distributions and plug-ins)"
        )
    dist.validate_settings()
    return dist
