"""Experiment suites: a YAML list of runs, each trained (or resumed) until finished.

``caml-rl sweep SUITE`` skips finished runs (final checkpoint and eval.json present), resumes
interrupted ones from their newest checkpoint and starts the rest, so the same command picks up
where the last working session stopped.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from .config import ConfigError, load_config


class SweepError(ValueError):
    """Some runs of a suite failed; their train.log says why."""


@dataclass
class SuiteRun:
    name: str  # run directory relative to the suite's out_root
    config: str
    overrides: list[str] = field(default_factory=list)


def load_suite(path: str | Path) -> tuple[Path, list[SuiteRun]]:
    """Read a suite; ``seeds: [0, 1, 2]`` on an entry expands it to ``NAME_seedN`` runs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"out_root", "runs"}
    if unknown:
        raise ConfigError(f"unknown suite key {sorted(unknown)[0]!r} in {path}; allowed: out_root, runs")
    root = Path(data.get("out_root", "experiments/results"))
    runs: list[SuiteRun] = []
    for i, entry in enumerate(data.get("runs") or []):
        bad = set(entry) - {"name", "config", "set", "seeds"}
        if bad or "name" not in entry or "config" not in entry:
            raise ConfigError(
                f"suite {path} run #{i}: needs name and config; optional set, seeds (got {sorted(entry)})"
            )
        seeds = entry.get("seeds")
        for seed in seeds if seeds is not None else [None]:
            name = entry["name"] if seed is None else f"{entry['name']}_seed{seed}"
            overrides = list(entry.get("set") or []) + ([] if seed is None else [f"seed={seed}"])
            load_config(entry["config"], overrides)  # fail now, not an hour in
            runs.append(SuiteRun(name, entry["config"], overrides))
    return root, runs


def run_status(run_dir: Path, iterations: int) -> str:
    """``done``, ``partial`` (resumable) or ``new``."""
    try:
        iteration = int(load_checkpoint(latest_checkpoint(run_dir))["iteration"])
    except CheckpointError:
        return "new"
    return "done" if iteration >= iterations and (run_dir / "eval.json").is_file() else "partial"


def command_for(run: SuiteRun, run_dir: Path, status: str) -> list[str]:
    base = [sys.executable, "-m", "caml_rl", "train"]
    if status == "partial":
        iterations = load_config(run.config, run.overrides).iterations
        return base + ["--resume", str(run_dir), "--iterations", str(iterations)]
    return base + [run.config, "--out", str(run_dir), *sum((["--set", o] for o in run.overrides), [])]


def sweep(suite: str | Path, jobs: int = 1, only: str | None = None, dry_run: bool = False) -> dict[str, str]:
    """Bring every run of the suite to completion, ``jobs`` at a time (one torch thread each)."""
    root, runs = load_suite(suite)
    if only:
        runs = [r for r in runs if fnmatch.fnmatch(r.name, only)]
    todo, status = [], {}
    for run in runs:
        run_dir = root / run.name
        st = run_status(run_dir, load_config(run.config, run.overrides).iterations)
        status[run.name] = st
        print(f"{st:>8}  {run.name}")
        if st != "done":
            todo.append((run, run_dir, st))
    if dry_run:
        return status
    running: list[tuple[subprocess.Popen, str]] = []
    failed = []
    while todo or running:
        while todo and len(running) < jobs:
            run, run_dir, st = todo.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = command_for(run, run_dir, st)
            if jobs > 1 and st == "new":
                cmd += ["--set", "torch_threads=1"]
            log = open(run_dir / "train.log", "a")
            print(f"starting {run.name}: {' '.join(cmd[1:])}", flush=True)
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), run.name))
        time.sleep(2)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                ok = proc.returncode == 0
                status[name] = "done" if ok else f"failed ({proc.returncode})"
                print(f"{status[name]:>8}  {name}", flush=True)
                if not ok:
                    failed.append(name)
    if failed:
        raise SweepError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their train.log")
    return status
