"""Typed run configuration: YAML -> dataclasses, ``--set key=value`` overrides, validation.

Every error names the key, the bad value and what is allowed, in one line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key, type or value is not allowed; the message says which and what is."""


@dataclass
class EnvConfig:
    name: str = "navigation2d"
    """Registered task distribution (list them with `caml-rl envs`)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Overrides of the task distribution's own settings (ranges, horizon, cost weights)."""


@dataclass
class PolicyConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [100, 100])
    """Width of each hidden layer of the MLP."""
    activation: str = "relu"
    """Hidden-layer nonlinearity: relu, tanh or elu."""
    context_size: int = 5
    """Number of context inputs adapted per task (0 for plain MAML)."""
    init_std: float = 1.0
    """Initial standard deviation of the Gaussian action noise."""
    min_std: float = 1e-6
    """Floor on the action standard deviation."""

    def validate(self) -> None:
        _check("policy.hidden_sizes", self.hidden_sizes, all(h >= 1 for h in self.hidden_sizes), "positive ints")
        _check("policy.activation", self.activation, self.activation in ("relu", "tanh", "elu"), "relu, tanh, elu")
        _check("policy.context_size", self.context_size, self.context_size >= 0, ">= 0")
        _check("policy.init_std", self.init_std, self.init_std > 0, "> 0")
        _check("policy.min_std", self.min_std, 0 < self.min_std <= self.init_std, "in (0, init_std]")


@dataclass
class AdaptationConfig:
    partition: str = "context"
    """What adapts per task: context (CAML), all (MAML), or comma-separated parameter names."""
    inner_lr: float = 1.0
    """Step size of each inner gradient step."""
    inner_steps: int = 1
    """Inner gradient steps during meta-training (on the same pre-adaptation episodes)."""
    first_order: bool = False
    """Drop the second-order term of the meta-gradient (cheaper, usually worse)."""
    gamma: float = 0.99
    """Discount factor for returns and GAE."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0 = Monte-Carlo returns minus baseline)."""

    def validate(self) -> None:
        _check("adaptation.inner_lr", self.inner_lr, self.inner_lr > 0, "> 0")
        _check("adaptation.inner_steps", self.inner_steps, self.inner_steps >= 1, ">= 1")
        _check("adaptation.gamma", self.gamma, 0 < self.gamma <= 1, "in (0, 1]")
        _check("adaptation.gae_lambda", self.gae_lambda, 0 <= self.gae_lambda <= 1, "in [0, 1]")


@dataclass
class TRPOConfig:
    max_kl: float = 0.01
    """Trust region: largest mean KL over tasks a step may take."""
    cg_iters: int = 10
    """Conjugate-gradient iterations for the natural-gradient direction."""
    cg_damping: float = 1e-5
    """Damping added to the Fisher-vector product."""
    ls_steps: int = 15
    """Backtracking line-search evaluations before a step is rejected."""
    ls_backtrack: float = 0.8
    """Step shrink factor between line-search evaluations."""
    fisher: str = "fixed"
    """Fisher metric: fixed (adaptation step held constant, cheap) or full (through the inner step)."""
    fvp_subsample: float = 0.2
    """Fraction of each task's post-adaptation episodes used for Fisher-vector products."""

    def validate(self) -> None:
        _check("trpo.max_kl", self.max_kl, self.max_kl > 0, "> 0")
        _check("trpo.cg_iters", self.cg_iters, self.cg_iters >= 1, ">= 1")
        _check("trpo.cg_damping", self.cg_damping, self.cg_damping >= 0, ">= 0")
        _check("trpo.ls_steps", self.ls_steps, self.ls_steps >= 1, ">= 1")
        _check("trpo.ls_backtrack", self.ls_backtrack, 0 < self.ls_backtrack < 1, "in (0, 1)")
        _check("trpo.fisher", self.fisher, self.fisher in ("fixed", "full"), "fixed, full")
        _check("trpo.fvp_subsample", self.fvp_subsample, 0 < self.fvp_subsample <= 1, "in (0, 1]")


@dataclass
class EvalConfig:
    tasks: int = 40
    """Fresh test tasks (never the training tasks) evaluated at the end of training."""
    steps: int = 3
    """Inner steps evaluated after the zero-step return, each on fresh episodes."""
    episodes: int = 20
    """Episodes per test task and step."""
    inner_lr: float | None = None
    """Inner step size at test time (default: adaptation.inner_lr)."""

    def validate(self) -> None:
        _check("evaluation.tasks", self.tasks, self.tasks >= 2, ">= 2 (the 95% interval needs two)")
        _check("evaluation.steps", self.steps, self.steps >= 0, ">= 0")
        _check("evaluation.episodes", self.episodes, self.episodes >= 1, ">= 1")
        ok = self.inner_lr is None or self.inner_lr > 0
        _check("evaluation.inner_lr", self.inner_lr, ok, "> 0 or null")


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    """The task distribution."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The policy network."""
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    """The inner loop."""
    trpo: TRPOConfig = field(default_factory=TRPOConfig)
    """The outer loop."""
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    """The evaluation run after training."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration."""
    episodes_per_task: int = 20
    """Episodes per task, before and after adaptation."""
    iterations: int = 150
    """Meta-iterations to train."""
    seed: int = 0
    """Seed of every random stream (tasks, actions, env resets)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    checkpoint_every: int = 25
    """Write a checkpoint every this many iterations (and always at the end)."""
    torch_threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""

    def validate(self) -> None:
        for sub in (self.policy, self.adaptation, self.trpo, self.evaluation):
            sub.validate()
        _check("meta_batch_size", self.meta_batch_size, self.meta_batch_size >= 1, ">= 1")
        _check("episodes_per_task", self.episodes_per_task, self.episodes_per_task >= 1, ">= 1")
        _check("iterations", self.iterations, self.iterations >= 0, ">= 0")
        _check("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 1, ">= 1")
        _check("torch_threads", self.torch_threads, self.torch_threads >= 0, ">= 0")
        ok = self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        _check("device", self.device, ok, "auto, cpu, cuda, cuda:N")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key}={value!r} is out of range; allowed: {allowed}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key}={value!r} has the wrong type; expected a list of {_type_name(item)}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}={value!r} has the wrong type; expected a mapping")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"config key {key}={value!r} has the wrong type; expected {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested plain data, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<top>'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix}{key!s}; allowed in this section: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(f"{prefix}{key}", value, tp)
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to nested plain data."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key=value (e.g. --set adaptation.inner_lr=0.5)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then ``--set`` overrides; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    data = apply_overrides(data, overrides or [])
    config = from_dict(Config, data)
    config.validate()
    return config


def field_docs(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, docstring)`` for every config key, read from the source docstrings."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)
    hints = typing.get_type_hints(cls)
    rows = []
    default = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += field_docs(hints[f.name], f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", repr(getattr(default, f.name)), docs.get(f.name, "")))
    return rows
