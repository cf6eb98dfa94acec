"""Validation helpers of the config: every refusal is one line naming the key, the bad value and
what is allowed, so a user fixes a config without reading code."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import field, fields
from typing import Any


class ConfigError(ValueError):
    """A config key, type or value is not allowed; the message says which and what is."""


def check(key: str, value: Any, ok: bool, allowed: str) -> None:
    """Refuse ``value`` of ``key`` unless ``ok``: one line naming the key, the value and what is allowed."""
    if not ok:
        raise ConfigError(f"config key {key}={value!r} is out of range; allowed: {allowed}")


def check_plain(key: str, value: Any, who: str = "config key") -> None:
    """Nested settings hold only plain data: string keys, finite numbers, str, bool, None (a
    non-finite range or scale would let a run start and never train; a numpy number or a
    non-string key cannot be recorded in config.yaml and loaded back)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str:
                raise ConfigError(f"{who} {key} has the key {k!r}; setting keys must be strings")
            check_plain(f"{key}.{k}", v, who)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_plain(f"{key}[{i}]", v, who)
    elif value is not None and type(value) not in (str, int, float, bool):
        raise ConfigError(
            f"{who} {key}={value!r} is a {type(value).__name__}; settings must be plain "
            "int, float, bool, str, None, or lists and string-keyed mappings of them"
        )
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{who} {key}={value!r} is not a finite number")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        raise ConfigError(f"{who} {key}={value} is out of range; allowed: integers below 2**63")


_RANGES: dict[str, Callable[[Any], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "in (0, 1)": lambda v: 0 < v < 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "in [0, 1]": lambda v: 0 <= v <= 1,
}


def limited(default: Any, allowed: str) -> Any:
    """A config field with the values it allows, declared beside it: one of ``_RANGES``' rules,
    optionally followed by " or null", or comma-separated choices. ``check_limits`` enforces it and
    the configuration reference shows it, so the two cannot disagree."""
    return field(default=default, metadata={"allowed": allowed})


def allows(allowed: str, value: Any) -> bool:
    """Whether ``value`` satisfies a ``limited`` field's rule."""
    if allowed.endswith(" or null"):
        if value is None:
            return True
        allowed = allowed.removesuffix(" or null")
    if value is None:
        return False
    if allowed in _RANGES:
        return _RANGES[allowed](value)
    return value in [choice.strip() for choice in allowed.split(",")]


def check_limits(section: Any, prefix: str) -> None:
    """Refuse, in declaration order, the first field of ``section`` outside its ``limited`` rule."""
    for f in fields(section):
        if "allowed" in f.metadata:
            value = getattr(section, f.name)
            check(prefix + f.name, value, allows(f.metadata["allowed"], value), f.metadata["allowed"])
