"""Experiment suites: a YAML list of runs, each trained (or resumed) until finished.

``caml-rl sweep SUITE`` skips finished runs (final checkpoint and eval.json present), resumes
interrupted ones from their newest checkpoint and starts the rest, so the same command picks up
where the last working session stopped.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from caml_rl.envs import TaskDistributionError

from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, read_yaml_mapping
from .config import ConfigError, load_config, make_distribution


class SweepError(ValueError):
    """Some runs of a suite failed; their train.log says why."""


@dataclass
class SuiteRun:
    name: str  # run directory relative to the suite's out_root
    config: str
    overrides: list[str] = field(default_factory=list)


def _suite_list(path: Path, where: str, value: object, item: type, what: str) -> list:
    """A list of ``item`` (a YAML string where a list belongs would be read a character at a time)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"suite {str(path)!r} {where} must be a list of {what}; got {value!r}")
    return value


def load_suite(path: str | Path) -> tuple[Path, list[SuiteRun]]:
    """Read a suite; ``seeds: [0, 1, 2]`` on an entry expands it to ``NAME_seedN`` runs. Every
    run directory must lie inside ``out_root`` and be named once."""
    path = Path(path)
    data = read_yaml_mapping(path, "suite file")
    unknown = set(data) - {"out_root", "runs"}
    if unknown:
        raise ConfigError(
            f"unknown suite key {sorted(unknown, key=str)[0]!r} in {str(path)!r}; allowed: out_root, runs"
        )
    out_root = data.get("out_root", "experiments/results")
    if not isinstance(out_root, str) or not out_root.strip():
        raise ConfigError(f"suite {str(path)!r} out_root must be a folder name; got {out_root!r}")
    root = Path(out_root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"suite {str(path)!r} out_root {out_root!r} is a file; expected a folder")
    runs: list[SuiteRun] = []
    for i, entry in enumerate(_suite_list(path, "runs", data.get("runs"), dict, "mappings (name, config, ...)")):
        bad = set(entry) - {"name", "config", "set", "seeds"}
        if bad or "name" not in entry or "config" not in entry:
            raise ConfigError(
                f"suite {str(path)!r} run #{i}: needs name and config; optional set, seeds "
                f"(got {sorted(entry, key=str)})"
            )
        for key in ("name", "config"):
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise ConfigError(f"suite {str(path)!r} run #{i}: {key} must be a non-empty string; got {entry[key]!r}")
        _check_run_name(path, i, root, entry["name"])
        entry["name"] = Path(entry["name"]).as_posix()  # 'x/' and './x' are one directory
        sets = _suite_list(path, f"run {entry['name']!r} set", entry.get("set"), str, "KEY=VALUE strings")
        seeds = entry.get("seeds")
        if seeds is not None:
            seeds = _suite_list(path, f"run {entry['name']!r} seeds", seeds, int, "integers >= 0")
            if any(s < 0 for s in seeds):
                raise ConfigError(f"suite {str(path)!r} run {entry['name']!r} seeds must be integers >= 0; got {seeds}")
        for seed in seeds if seeds is not None else [None]:
            name = entry["name"] if seed is None else f"{entry['name']}_seed{seed}"
            overrides = list(sets) + ([] if seed is None else [f"seed={seed}"])
            try:  # fail now, not an hour in
                make_distribution(load_config(entry["config"], overrides).env)
            except (ConfigError, TaskDistributionError) as exc:
                raise ConfigError(f"suite {str(path)!r} run {name!r}: {exc}") from None
            if any(r.name == name for r in runs):
                raise ConfigError(f"suite {str(path)!r} names run {name!r} twice; each run needs its own directory")
            runs.append(SuiteRun(name, entry["config"], overrides))
    return root, runs


def _check_run_name(path: Path, i: int, root: Path, name: str) -> None:
    """A run's directory is ``out_root/name`` and must stay inside ``out_root``."""
    inside = Path(name).parts and not Path(name).is_absolute() and ".." not in Path(name).parts
    if not inside or not (root / name).resolve().is_relative_to(root.resolve()):
        raise ConfigError(
            f"suite {str(path)!r} run #{i} name {name!r} leaves out_root; use a relative path without '..'"
        )


def run_status(run_dir: Path, iterations: int) -> tuple[str, int]:
    """``done``, ``partial`` (resumable) or ``new``, and the newest checkpoint's iteration; a damaged
    newest checkpoint is an error naming it (starting the run afresh would be refused, and would
    hide the damage)."""
    if not list_checkpoints(run_dir):
        return "new", 0
    iteration = int(load_checkpoint(latest_checkpoint(run_dir))["iteration"])
    done = iteration >= iterations and (run_dir / "eval.json").is_file()
    return ("done" if done else "partial"), iteration


def command_for(run: SuiteRun, run_dir: Path, status: str) -> list[str]:
    base = [sys.executable, "-m", "caml_rl", "train"]
    if status == "partial":
        iterations = load_config(run.config, run.overrides).iterations
        return base + ["--resume", str(run_dir), "--iterations", str(iterations)]
    return base + [run.config, "--out", str(run_dir), *sum((["--set", o] for o in run.overrides), [])]


def cpu_slots(jobs: int) -> list[list[int]]:
    """This process's CPUs dealt into ``jobs`` disjoint sets (shared round-robin when there are fewer
    CPUs than jobs), one per run trained at once."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if jobs > len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(jobs)]
    return [cpus[i::jobs] for i in range(jobs)]


def _start(cmd: list[str], log: IO[str], cpus: list[int] | None) -> subprocess.Popen:
    """Start one training. Side by side, each run keeps to its own CPUs, so its simulator and torch
    size their thread pools to them (a resumed run's config keeps torch_threads 0 = all cores):
    threads of two runs on one core wait on each other at every simulator step and OpenMP barrier."""
    if cpus is None:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    env = {**os.environ, "OMP_NUM_THREADS": str(len(cpus))}
    pin = (lambda: os.sched_setaffinity(0, cpus)) if hasattr(os, "sched_setaffinity") else None
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)


def sweep(suite: str | Path, jobs: int = 1, only: str | None = None, dry_run: bool = False) -> dict[str, str]:
    """Bring every run of the suite to completion, ``jobs`` at a time (each on its own CPUs)."""
    root, runs = load_suite(suite)
    if only:
        chosen = [r for r in runs if fnmatch.fnmatch(r.name, only)]
        if not chosen:
            names = ", ".join(r.name for r in runs)
            raise SweepError(f"--only {only!r} matches no run of {str(suite)!r}; its runs: {names}")
        runs = chosen
    todo, status = [], {}
    for run in runs:
        run_dir = root / run.name
        iterations = load_config(run.config, run.overrides).iterations
        st, at = run_status(run_dir, iterations)
        status[run.name] = st
        print(f"{st:>8}  {run.name}" + (f"  (checkpoint {at}/{iterations})" if st == "partial" else ""))
        if st != "done":
            todo.append((run, run_dir, st))
    if dry_run:
        return status
    slots = cpu_slots(jobs)
    running: list[tuple[subprocess.Popen, str, int]] = []
    failed = []
    while todo or running:
        while todo and len(running) < jobs:
            run, run_dir, st = todo.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = command_for(run, run_dir, st)
            slot = min(set(range(jobs)) - {s for _, _, s in running})
            log = open(run_dir / "train.log", "a")
            print(f"starting {run.name}: {' '.join(cmd[1:])}", flush=True)
            running.append((_start(cmd, log, slots[slot] if jobs > 1 else None), run.name, slot))
        time.sleep(2)
        for proc, name, slot in list(running):
            if proc.poll() is not None:
                running.remove((proc, name, slot))
                ok = proc.returncode == 0
                status[name] = "done" if ok else f"failed ({proc.returncode})"
                print(f"{status[name]:>8}  {name}", flush=True)
                if not ok:
                    failed.append(name)
    if failed:
        raise SweepError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their train.log")
    return status
