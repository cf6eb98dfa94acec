"""One run directory, written and read in one place by the trainer, the PPO baseline and ``load_run``.

```
RUN_DIR/config.yaml   run.json   progress.csv   tb/   checkpoints/iter_NNNNNN.pt   eval.json
```

A checkpoint's payload (weights, iteration, resolved config, random streams, counters) and the
run record (config.yaml + run.json) have one writer each here, so a meta-trained run and a PPO
baseline are the same kind of directory to every reader.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from caml_rl import envs

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
)
from .config import Config, ConfigError, build_config
from .seeding import StreamDeviceError, Streams
from .version import __version__

if TYPE_CHECKING:
    from .algorithm import Algorithm
    from .evaluation import EvalResult


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: its file, its config (validated) and the rest of its payload."""

    path: Path
    config: Config
    payload: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.payload["iteration"])

    def load_policy(self, policy: torch.nn.Module) -> None:
        """Copy the saved weights into ``policy``; a shape or name mismatch is one line naming the file."""
        try:
            policy.load_state_dict(self.payload["policy"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} does not fit its config's policy: {str(exc).splitlines()[0]}"
            ) from None

    def load_streams(self, streams: Streams) -> None:
        """Every random stream of the run, so that a resumed run draws what the uninterrupted one would."""
        rng = self.payload["rng"]
        missing = [k for k in ("tasks", "env", "actions") if k not in rng]
        if missing:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} has no random-stream state for {', '.join(missing)}, so training "
                "cannot continue from it (a PPO baseline's checkpoint? continue those with `caml-rl baseline --out`)"
            )
        try:
            streams.load_state(rng)
        except StreamDeviceError as exc:  # resumed on another kind of machine: not damage
            raise CheckpointError(f"checkpoint {str(self.path)!r}: {exc}") from None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} has damaged random-stream state ({first_line(exc, 80)})"
            ) from None

    def load_optimizer(self, algorithm: Algorithm) -> None:
        """The outer loop's state (PPO's Adam, ...): without it training would not continue exactly."""
        try:
            algorithm.load_state_dict(self.payload.get("optimizer"))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} has no usable optimiser state ({first_line(exc, 80)}), "
                "so training cannot continue from it exactly"
            ) from None


class RunDirectory:
    """The files of one run. Nothing is written until a method that writes is called."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.record_file = self.path / "run.json"
        self.progress_file = self.path / "progress.csv"
        self.eval_file = self.path / "eval.json"

    def checkpoint_path(self, iteration: int) -> Path:
        return checkpoint_path(self.path, iteration)

    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.path)

    # ------------------------------------------------------------------ checkpoints
    def load(self, checkpoint: str | Path | None = None) -> Checkpoint:
        """The given checkpoint file, or the newest one; its config must pass validation and agree
        with this run's config.yaml (so results are never filed under the wrong run)."""
        path = Path(checkpoint) if checkpoint else latest_checkpoint(self.path)
        payload = load_checkpoint(path, newest=not checkpoint)
        try:
            config = build_config(payload["config"])
            config.validate()
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} holds a config caml-rl rejects: {exc}") from None
        self.check_belongs(path, config)
        return Checkpoint(path, config, payload)

    def check_resumable(self, checkpoint: Path, config: Config) -> None:
        """Before a resume writes anything: the checkpoint must belong to this run, and progress.csv
        and run.json must be readable, so that a resume which would fail fails before touching the run."""
        self.check_belongs(checkpoint, config)
        if self.progress_file.exists():
            read_progress(self.progress_file)
        self.read_record()

    def refusal(self, resuming: bool) -> Exception | None:
        """Why this folder cannot take a run (None when it can): a new run needs a writable folder
        without checkpoints."""
        try:
            check_out_path(self.path, "run directory", folder=True)
            if not resuming and self.checkpoints():
                raise ConfigError(
                    f"run directory {str(self.path)!r} already has checkpoints; "
                    f"use --resume {self.path} or another --out"
                )
        except (ConfigError, CheckpointError) as exc:
            return exc
        return None

    def check_belongs(self, checkpoint: Path, config: Config) -> None:
        """A checkpoint's config must agree with this run's config.yaml (apart from ``iterations``)."""
        recorded = self.recorded_config()
        difference = first_difference(config, recorded) if recorded is not None else None
        if difference is not None:
            key, mine, theirs = difference
            raise CheckpointError(
                f"checkpoint {str(checkpoint)!r} does not belong to this run ({str(self.path)!r}): it has "
                f"{key}={mine!r}, the run's config.yaml has {theirs!r} (a checkpoint copied from another run, "
                "or an edited config.yaml?)"
            )

    def save(
        self,
        iteration: int,
        config: Config,
        policy: torch.nn.Module,
        *,
        rng: dict[str, Any],
        env_steps: int,
        wall_time: float,
        optimizer: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``checkpoints/iter_NNNNNN.pt`` atomically; ``rng`` is empty for a run that cannot resume
        from it; ``optimizer`` is the outer loop's state when it has one (PPO's Adam)."""
        path = self.checkpoint_path(iteration)
        payload = {
            "iteration": iteration,
            "config": config.to_dict(),
            "policy": policy.state_dict(),
            "rng": rng,
            "env_steps": env_steps,
            "wall_time": wall_time,
        }
        if optimizer is not None:
            payload["optimizer"] = optimizer
        save_checkpoint(path, payload)
        self.prune_checkpoints(config.checkpoint_keep, config.iterations)
        return path

    def prune_checkpoints(self, keep: int, final_iteration: int) -> list[Path]:
        """Delete all but the newest ``keep`` checkpoints, the final one and those an ``eval*.json``
        names (``keep=0``: none is deleted). Deletes nothing while an eval file cannot be read, since
        it might name one. Returns the deleted files."""
        found = self.checkpoints()
        if keep <= 0 or len(found) <= keep:
            return []
        named = {final_iteration}
        for eval_file in self.path.glob("eval*.json"):
            try:
                named.add(int(read_json(eval_file, "evaluation")["iteration"]))
            except (CheckpointError, TypeError, KeyError, ValueError):
                return []
        deleted = [p for p in found[:-keep] if int(p.stem.removeprefix("iter_")) not in named]
        for p in deleted:
            p.unlink(missing_ok=True)
        return deleted

    def write_eval(self, result: EvalResult) -> None:
        """eval.json, atomically."""
        atomic_write_json(self.eval_file, result.to_dict())

    # ------------------------------------------------------------------ run record
    def recorded_config(self) -> Config | None:
        """config.yaml as a Config (None when there is none yet); a damaged one is one line."""
        if not self.config_file.exists():
            return None
        data = read_yaml_mapping(self.config_file, "run config")
        try:
            return build_config(data)
        except ConfigError as exc:
            raise CheckpointError(f"run config {str(self.config_file)!r} is damaged: {exc}") from None

    def read_record(self) -> dict[str, Any] | None:
        """run.json (None when there is none yet); it must be a JSON object."""
        if not self.record_file.exists():
            return None
        record = read_json(self.record_file, "run record")
        if not isinstance(record, dict):
            raise CheckpointError(f"run record {str(self.record_file)!r} is not a JSON object; fix or delete it")
        return record

    def write_record(
        self,
        config: Config,
        distribution: envs.TaskDistribution,
        details: dict[str, Any],
        resumed_from: int | None = None,
    ) -> None:
        """Write config.yaml and run.json (env, its settings and task names, ``details``, library
        versions, the command). A resumed run keeps the command that started it and appends its
        own, with the iteration it resumed from, to ``resumes``."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, yaml.safe_dump(config.to_dict(), sort_keys=False))
        record: dict[str, Any] = {
            "env": config.env.name,
            "env_settings": distribution.settings(),
            "task_names": list(distribution.task_names),
            **details,
            "versions": library_versions(),
            "command": sys.argv,
        }
        if resumed_from is not None and self.record_file.is_file():
            old = read_json(self.record_file, "run record")
            old = old if isinstance(old, dict) else {}
            if "command" in old:
                record["command"] = old["command"]
            else:
                record.pop("command")
            resumes = old.get("resumes") if isinstance(old.get("resumes"), list) else []
            now = datetime.now().isoformat(timespec="seconds")
            record["resumes"] = [*resumes, {"command": sys.argv, "iteration": resumed_from, "time": now}]
        atomic_write_json(self.record_file, record)


def first_difference(config: Config, recorded: Config) -> tuple[str, Any, Any] | None:
    """The first dotted key (sorted) where two configs differ, as ``(key, config's, recorded's)``;
    ``iterations`` (a resume may extend it) and ``checkpoint_keep`` (retention) are ignored. None when they agree."""
    return first_mapping_difference(config.to_dict(), recorded.to_dict(), ignore={"iterations", "checkpoint_keep"})


def first_mapping_difference(
    mine: dict[str, Any], theirs: dict[str, Any], ignore: set[str]
) -> tuple[str, Any, Any] | None:
    """The first dotted key (sorted) where two nested mappings differ, skipping the top-level
    sections in ``ignore``; None when they agree."""
    mine, theirs = _flatten(mine), _flatten(theirs)
    for key in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(key, "<absent>"), theirs.get(key, "<absent>")
        if key.split(".")[0] not in ignore and a != b:
            return key, a, b
    return None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; tuples compare as lists (YAML has no tuples)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): list(data) if isinstance(data, tuple) else data}


def library_versions() -> dict[str, str]:
    import gymnasium
    import mujoco
    import numpy
    import stable_baselines3

    versions = {
        "caml_rl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
        "stable_baselines3": stable_baselines3.__version__,
    }
    for name in ("mujoco_warp", "warp_lang", "metaworld"):  # optional extras, recorded when installed
        try:
            versions[name] = importlib.metadata.version(name.replace("_lang", "-lang"))
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
