"""Atomic checkpoint files that load with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain data: the policy's state dict, the iteration, the
resolved config and every random state, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "iteration", "config", "policy", "rng")
CHECKPOINT_NAME = re.compile(r"^iter_(\d{6,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint or run directory is missing or damaged; the message names the file."""


class RunDirectoryWarning(UserWarning):
    """Something in a run directory was ignored (e.g. a stray file in checkpoints/)."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first line for a one-line message, shortened at a word boundary."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return (cut if len(cut) > limit // 2 else text[:limit]) + " ..."


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, fsync, rename over ``path``, then fsync the
    folder, so that after a crash ``path`` holds either the old bytes or the new ones, durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; run files get the same mode as progress.csv
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable: the new directory entry is on disk once this returns (POSIX;
    without it a crash soon after the rename can bring back the old file, or none). A filesystem or
    platform that cannot sync a folder (Windows, some network filesystems) is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    payload = {"format_version": FORMAT_VERSION, **payload}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", newest: bool = True) -> dict[str, Any]:
    """``newest``: the file was found as a run's newest checkpoint, so deleting it falls back to the
    previous one (advice that would be wrong for a file the user named)."""
    path = Path(path)
    advice = "; delete it to fall back to the previous one" if newest else ""
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file{advice}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds for damaged files
        raise CheckpointError(
            f"checkpoint {str(path)!r} is damaged or not a caml-rl checkpoint ({first_line(exc)}){advice}"
        ) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}: not a caml-rl checkpoint")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {payload['format_version']}; this caml-rl reads {FORMAT_VERSION}"
        )
    _check_payload(path, payload)
    return payload


def _check_payload(path: Path, payload: dict[str, Any]) -> None:
    """Types and finiteness of what every reader relies on, so a bad file fails here, by name."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {str(path)!r} {what}: not a usable caml-rl checkpoint")

    it = payload["iteration"]
    if isinstance(it, bool) or not isinstance(it, int) or it < 0:
        raise bad(f"has iteration={it!r}; expected an integer >= 0")
    if not isinstance(payload["config"], dict):
        raise bad("has a config that is not a mapping")
    if not isinstance(payload["rng"], dict):
        raise bad("has random-stream state that is not a mapping")
    policy = payload["policy"]
    if not isinstance(policy, dict) or not all(isinstance(v, torch.Tensor) for v in policy.values()):
        raise bad("has policy weights that are not a mapping of tensors")
    for name, tensor in policy.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise bad(f"has non-finite values in policy weight {name}")
    for key in ("env_steps", "wall_time"):
        value = payload.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise bad(f"has {key}={value!r}; expected a finite number >= 0")


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"iter_{iteration:06d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The ``checkpoints/iter_NNNNNN.pt`` files of a run, oldest first (by parsed iteration).

    Only that name counts: anything else (``iter_backup.pt``, a copy) is ignored and listed in a
    :class:`RunDirectoryWarning`, so a stray file can never stand in for the newest checkpoint.
    Hidden files (an interrupted atomic write's ``.iter_*.tmp``) are ignored silently.
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found, ignored = [], []
    for p in folder.iterdir():
        m = CHECKPOINT_NAME.match(p.name)
        if m:  # even a folder of that name: loading it then says what is wrong
            found.append((int(m.group(1)), p))
        elif not p.name.startswith("."):
            ignored.append(p.name)
    if ignored:
        warnings.warn(
            f"ignoring {', '.join(sorted(ignored))} in {str(folder)!r} (checkpoints are named iter_NNNNNN.pt)",
            RunDirectoryWarning,
            stacklevel=2,
        )
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of a run directory (by the iteration number in its name)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"run directory {str(run_dir)!r} has no checkpoints/iter_NNNNNN.pt to load")
    return found[-1]


# ------------------------------------------------------------------ reading run files
def read_text(path: Path, what: str = "file", error: type[Exception] = CheckpointError) -> str:
    """A UTF-8 text file, or one line (an ``error``) naming it and why it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise error(f"{what} {str(path)!r} is not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be read: {exc.strerror or first_line(exc)}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error(f"{what} {str(path)!r} is not UTF-8 text") from None


def read_json(path: Path, what: str = "file") -> Any:
    """A JSON file (strict: no NaN), or one line naming it."""
    text = read_text(path, what)

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise CheckpointError(f"{what} {str(path)!r} is not valid JSON: {first_line(exc)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML where a key given twice in one mapping is an error (it silently kept the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice in one mapping (again on line {key_node.start_mark.line + 1})",
                    None,
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml_mapping(path: Path, what: str = "file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping, or one line naming it."""
    text = read_text(path, what)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{what} {str(path)!r} is not valid YAML: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {str(path)!r} must hold a mapping of keys; it holds a {type(data).__name__}")
    return data


def read_progress(path: Path) -> list[dict[str, str]]:
    """The rows of a ``progress.csv``; every ``iteration`` cell must be a whole number."""
    text = read_text(path, "progress file")
    try:
        rows = list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise CheckpointError(f"progress file {str(path)!r} is not valid CSV: {first_line(exc)}") from None
    for i, row in enumerate(rows, start=2):
        cell = row.get("iteration")
        try:
            ok = cell not in (None, "") and float(cell) == int(float(cell)) and float(cell) >= 0
        except (ValueError, OverflowError):
            ok = False
        if not ok or None in row:
            raise CheckpointError(
                f"progress file {str(path)!r} line {i} is not a caml-rl progress row (iteration={cell!r}); "
                "fix or delete the file"
            )
    return rows


# ------------------------------------------------------------------ output paths
def check_out_path(path: str | Path, flag: str, folder: bool) -> Path:
    """Refuse, in one line, an output path that cannot be written: a folder given where a file
    goes (or the reverse), a path below a file, or a folder without write permission."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise CheckpointError(f"{flag} {str(path)!r} is {kind}; expected {'a folder' if folder else 'a file'}")
    parent = path if folder else path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise CheckpointError(f"{flag} {str(path)!r} lies below {str(ancestor)!r}, which is a file")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise CheckpointError(f"{flag} {str(path)!r}: no permission to write in {str(ancestor)!r}")
            break
    return path
