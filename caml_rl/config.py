"""Typed run configuration: YAML -> dataclasses, ``--set key=value`` overrides, validation.

Every error names the key, the bad value and what is allowed, in one line. The pieces live by
concern: the sections (:mod:`caml_rl.config_sections`), the validation helpers
(:mod:`caml_rl.config_checks`) and loading with overrides (:mod:`caml_rl.config_loading`);
this module is the one place to import them from.
"""

from __future__ import annotations

from .config_checks import ConfigError, check, check_plain, limited
from .config_loading import (
    apply_overrides,
    build_config,
    field_docs,
    from_dict,
    load_config,
    make_distribution,
    read_config_file,
    register_section,
    resolved_settings,
)
from .config_sections import (
    AdaptationConfig,
    Config,
    EnvConfig,
    EvalConfig,
    PEARLConfig,
    PolicyConfig,
    PPOConfig,
    RL2Config,
    Section,
    TRPOConfig,
)

__all__ = [
    "AdaptationConfig",
    "Config",
    "ConfigError",
    "EnvConfig",
    "EvalConfig",
    "PEARLConfig",
    "PPOConfig",
    "PolicyConfig",
    "RL2Config",
    "Section",
    "TRPOConfig",
    "apply_overrides",
    "build_config",
    "check",
    "check_plain",
    "field_docs",
    "from_dict",
    "limited",
    "load_config",
    "make_distribution",
    "read_config_file",
    "register_section",
    "resolved_settings",
]
