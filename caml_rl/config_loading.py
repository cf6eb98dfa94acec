"""Reading a config: YAML file, then ``--set key=value`` overrides, then the typed sections with
every type checked (``from_dict``); building the env section's task distribution with its settings
checked against the distribution's own field types; and the sections' field docstrings, read
from the source for the configuration reference (``field_docs``)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import load_yaml, read_text
from .config_checks import ConfigError, check_plain
from .config_sections import Config, EnvConfig


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _as_float(key: str, value: Any) -> float | None:
    """``value`` as a finite float if it spells one (YAML 1.1 reads ``1e-05`` as a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ConfigError(f"config key {key}={value!r} is not a finite number")
    return value


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints and float spellings are accepted for
    floats, which must be finite; ints must fit in 64 bits."""
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
    if tp is float:
        number = _as_float(key, value)
        if number is not None:
            return number
    if tp is int and isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        raise ConfigError(f"config key {key}={value} is out of range; allowed: integers below 2**63")
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
            kwargs[key] = from_dict(tp, {} if value is None else value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(f"{prefix}{key}", value, tp)
    return cls(**kwargs)


PLUGIN_SECTIONS: dict[str, type] = {}
"""The config sections of plug-in algorithms, by algorithm name (``register_algorithm`` fills it)."""


def register_section(name: str, section: type) -> None:
    """Let ``plugins.<name>`` of a config hold ``section``, a dataclass of one algorithm's settings."""
    if not (isinstance(section, type) and dataclasses.is_dataclass(section)):
        raise TypeError(f"config_section of algorithm {name!r} must be a dataclass, got {section!r}")
    PLUGIN_SECTIONS[name] = section


def build_config(data: dict[str, Any]) -> Config:
    """``from_dict(Config, data)`` with each ``plugins.<name>`` built as its registered section; the
    selected algorithm's section is added with its defaults when the data leaves it out."""
    config = from_dict(Config, data)
    plugins = {}
    for name, value in config.plugins.items():
        if name not in PLUGIN_SECTIONS:
            known = ", ".join(sorted(PLUGIN_SECTIONS)) or "none"
            raise ConfigError(
                f"unknown config section plugins.{name}; registered plug-in sections: {known} "
                "(import the module that registers it with --import)"
            )
        plugins[name] = from_dict(PLUGIN_SECTIONS[name], {} if value is None else value, f"plugins.{name}.")
    if config.algorithm in PLUGIN_SECTIONS and config.algorithm not in plugins:
        plugins[config.algorithm] = PLUGIN_SECTIONS[config.algorithm]()
    config.plugins = plugins
    return config


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to nested plain data."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key=value (e.g. --set adaptation.inner_lr=0.5)")
        key, raw = item.split("=", 1)
        if not key.strip() or any(not part.strip() for part in key.split(".")):
            raise ConfigError(f"--set {item!r} has an empty key; give e.g. --set adaptation.inner_lr=0.5")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or left empty in the YAML (`policy:`)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then ``--set`` overrides; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_config_file(path)
    data = apply_overrides(data, overrides or [])
    config = build_config(data)
    config.validate()
    return config


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as nested plain data; any problem is one line naming the file."""
    p = Path(path)
    text = read_text(p, "config file", error=ConfigError)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} must hold a mapping of config keys at the top level; it holds a "
            f"{type(data).__name__}"
        )
    return data


def make_distribution(env: EnvConfig) -> Any:
    """Build ``env``'s task distribution, checking each setting against the distribution's own
    field types first, so that a bad setting is one line naming it, not a TypeError mid-build."""
    import typing as _t

    from caml_rl import envs

    settings = dict(env.settings)
    check_plain("env.settings", settings)
    factory = envs.registered().get(env.name)
    if factory is not None and dataclasses.is_dataclass(factory):
        try:
            hints = _t.get_type_hints(factory)
        except Exception:  # an annotation that cannot be resolved: leave the checks to the env
            hints = {}
        for key, value in settings.items():
            if _simple_type(hints.get(key)):
                settings[key] = _coerce(f"env.settings.{key}", value, hints[key])
    try:
        return envs.make(env.name, **settings)
    except envs.TaskDistributionError:
        raise
    except (TypeError, ValueError, ArithmeticError) as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"env {env.name!r} rejected its settings ({line}); check env.settings") from None


def resolved_settings(distribution: Any, name: str) -> dict[str, Any]:
    """A built distribution's settings, defaults included, for the run record: plain data only
    (a numpy number or a non-string key would break config.yaml or the run's resume later)."""
    settings = distribution.settings()
    for key, value in settings.items():
        check_plain(key, value, f"env {name!r} setting")
    return settings


def _simple_type(tp: Any) -> bool:
    """Annotations ``_coerce`` checks exactly: int, float, bool, str, lists of them, optionals."""
    if tp in (int, float, bool, str):
        return True
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return len(args) == 1 and _simple_type(args[0])
    return typing.get_origin(tp) is list and len(args) == 1 and args[0] in (int, float, bool, str)


def field_docs(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, docstring)`` for every config key, read from the source docstrings; a
    ``limited`` field's docstring ends with the values it allows."""
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
            allowed = f" Allowed: {f.metadata['allowed']}." if "allowed" in f.metadata else ""
            rows.append((f"{prefix}{f.name}", repr(getattr(default, f.name)), docs.get(f.name, "") + allowed))
    return rows
