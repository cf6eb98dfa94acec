"""Experiment suites: a YAML list of runs, each trained (or resumed) until finished.

``caml-rl sweep SUITE`` skips finished runs (final checkpoint and eval.json present), resumes
interrupted ones from their newest checkpoint and starts the rest, so the same command picks up
where the last working session stopped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from caml_rl.envs import TaskDistributionError

from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, read_yaml_mapping
from .config import ConfigError, load_config, make_distribution


class SweepError(ValueError):
    """Some runs of a suite failed; their train.log says why."""


SUITE_KEYS = ("out_root", "runs", "resources", "slurm")
RESOURCE_KEYS = ("cpus", "gpus")  # per run, on a Ray cluster or SLURM (default: the run's threads and device)
SLURM_KEYS = ("partition", "time", "cpus", "gpus", "mem_gb", "account", "qos", "constraint")


@dataclass
class SuiteRun:
    name: str  # run directory relative to the suite's out_root
    config: str
    overrides: list[str] = field(default_factory=list)
    resources: dict = field(default_factory=dict)  # the suite's resources: entry
    slurm: dict = field(default_factory=dict)  # the suite's slurm: entry


def _suite_mapping(path: Path, key: str, value: object, allowed: tuple[str, ...]) -> dict:
    """A suite-level mapping (resources:, slurm:) of known keys with numbers or names as values."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"suite {str(path)!r} {key} must be a mapping of {', '.join(allowed)}; got {value!r}")
    for k, v in value.items():
        if k not in allowed:
            raise ConfigError(f"unknown suite {key} key {k!r} in {str(path)!r}; allowed: {', '.join(allowed)}")
        text = k in ("partition", "account", "qos", "constraint")
        ok = isinstance(v, str) and v.strip() if text else isinstance(v, int | float) and not isinstance(v, bool)
        if not ok or (not text and (v < 0 or (k != "gpus" and v == 0))):
            what = "a name" if text else ("a number >= 0" if k == "gpus" else "a number > 0")
            raise ConfigError(f"suite {str(path)!r} {key}.{k} must be {what}; got {v!r}")
    return dict(value)


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
    unknown = set(data) - set(SUITE_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown suite key {sorted(unknown, key=str)[0]!r} in {str(path)!r}; allowed: {', '.join(SUITE_KEYS)}"
        )
    out_root = data.get("out_root", "experiments/results")
    if not isinstance(out_root, str) or not out_root.strip():
        raise ConfigError(f"suite {str(path)!r} out_root must be a folder name; got {out_root!r}")
    root = Path(out_root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"suite {str(path)!r} out_root {out_root!r} is a file; expected a folder")
    resources = _suite_mapping(path, "resources", data.get("resources"), RESOURCE_KEYS)
    slurm = _suite_mapping(path, "slurm", data.get("slurm"), SLURM_KEYS)
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
            runs.append(SuiteRun(name, entry["config"], overrides, resources, slurm))
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


def sweep(
    suite: str | Path,
    jobs: int = 1,
    only: str | None = None,
    dry_run: bool = False,
    launcher: Launcher | None = None,
    progress_every: float = 300.0,
) -> dict[str, str]:
    """Bring every run of the suite to completion: ``jobs`` at a time on this machine (each on its
    own CPUs), or through ``launcher`` (a Ray cluster, SLURM; caml_rl/launchers.py)."""
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
            todo.append((run, run_dir, st, iterations, at))
    if dry_run:
        return status
    launcher = launcher or LocalLauncher(jobs)
    launcher.prepare([run for run, *_ in todo])
    running: dict[object, tuple[SuiteRun, Path, int, int, float]] = {}
    failed = []
    shown = time.monotonic()
    with _remembered_ctrl_c() as pressed:
        try:
            while todo or running:
                while todo and len(running) < launcher.capacity:
                    run, run_dir, st, iterations, at = todo.pop(0)
                    run_dir.mkdir(parents=True, exist_ok=True)
                    cmd = command_for(run, run_dir, st)
                    print(f"starting {run.name}: {' '.join(cmd[1:])}{launcher.where(run)}", flush=True)
                    running[launcher.submit(run, run_dir, st)] = (run, run_dir, iterations, at, time.monotonic())
                for handle, outcome in launcher.wait(list(running), timeout=2.0):
                    run, run_dir, *_ = running.pop(handle)
                    ok = outcome == 0
                    status[run.name] = "done" if ok else f"failed ({outcome})"
                    why = "" if ok else f": {last_line(run_dir / 'train.log')}"
                    print(f"{status[run.name]:>8}  {run.name}{why}", flush=True)
                    if not ok:
                        failed.append(run.name)
                if pressed.is_set():
                    raise KeyboardInterrupt
                if running and time.monotonic() - shown >= progress_every:
                    shown = time.monotonic()
                    for run, run_dir, iterations, at, started in running.values():
                        print(progress_line(run.name, run_dir, iterations, at, started), flush=True)
        except KeyboardInterrupt:
            launcher.cancel(list(running))  # each run keeps its checkpoints; the next sweep resumes it
            raise
    if failed:
        raise SweepError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their train.log")
    return status


@contextlib.contextmanager
def _remembered_ctrl_c():
    """Ctrl-C raises KeyboardInterrupt as always and is also remembered, so the sweep loop raises it
    again after the launcher's wait. An engine can swallow the exception where the signal lands (one
    raised inside a finalizer or an engine's callback is only printed). Only in the main thread, and
    only over Python's own handler: a program that set its own keeps it."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield pressed
        return

    def handler(signum, frame):
        pressed.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def last_line(log: Path) -> str:
    """The last non-empty line of a run's train.log (what a failed run said last)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no train.log)"
    return lines[-1] if lines else "(train.log is empty)"


def checkpoint_iteration(run_dir: Path) -> int:
    """The newest checkpoint's iteration, from its file name (cheap enough to ask every few seconds)."""
    found = list_checkpoints(run_dir) if run_dir.is_dir() else []
    return int(found[-1].stem.split("_")[-1]) if found else 0


def progress_line(name: str, run_dir: Path, iterations: int, at: int, started: float) -> str:
    """``running  NAME  iteration I/N  ETA ...``: the ETA extrapolates this session's checkpoints."""
    now = checkpoint_iteration(run_dir)
    elapsed = time.monotonic() - started
    if now > at:
        left = elapsed / (now - at) * (iterations - now)
        eta = f"{left / 3600:.1f} h" if left >= 3600 else f"{left / 60:.0f} min"
    else:
        eta = "unknown (no new checkpoint yet)"
    return f"{'running':>8}  {name}  iteration {now}/{iterations}  ETA {eta}"


def train_run(run: SuiteRun, run_dir: str | Path, threads: int = 0, on_start=None) -> int:
    """Start or resume one run as its directory finds it *now*, appending its output to train.log,
    and wait for it: what a Ray task or a SLURM job runs (a retried or requeued one resumes). The
    training dies with the calling process (a lost worker or a cancelled task), so a run never goes
    on unwatched and writes into a directory that the next sweep resumes. Its exit status."""
    run_dir = Path(run_dir)
    st, _ = run_status(run_dir, load_config(run.config, run.overrides).iterations)
    if st == "done":
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = command_for(run, run_dir, st)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(run_dir / "train.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        if on_start is not None:
            on_start(proc)
        return proc.wait()


def _die_with_parent() -> None:
    """In the child: SIGINT (as Ctrl-C: it stops between checkpoint writes) once its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


class Launcher(ABC):
    """Where a sweep's runs train. :func:`sweep` decides what is pending and how each run starts or
    resumes, prints its progress and reports it; a launcher only starts runs, says which finished,
    and cancels the rest on Ctrl-C."""

    capacity: float = float("inf")  # runs handed over at once (the engine queues the rest)

    def prepare(self, runs: list[SuiteRun]) -> None:
        """Check, before anything starts, that every run can be placed."""

    def where(self, run: SuiteRun) -> str:
        """Appended to the ``starting`` line: the resources the run asked for."""
        return ""

    @abstractmethod
    def submit(self, run: SuiteRun, run_dir: Path, status: str) -> object:
        """Start (or resume, per ``status``) one run; a handle for :meth:`wait` and :meth:`cancel`."""

    @abstractmethod
    def wait(self, handles: list, timeout: float) -> list[tuple[object, int | str]]:
        """The runs among ``handles`` that finished within ``timeout`` seconds, each with its exit
        status (0 = finished) or a word for what happened to it."""

    def cancel(self, handles: list) -> None:
        """Stop these runs; their checkpoints stay."""


class LocalLauncher(Launcher):
    """``jobs`` runs at once on this machine, each pinned to its own share of the CPUs."""

    def __init__(self, jobs: int = 1):
        self.capacity = jobs
        self.jobs = jobs
        self.slots = cpu_slots(jobs)
        self.slot_of: dict[subprocess.Popen, int] = {}

    def submit(self, run: SuiteRun, run_dir: Path, status: str) -> subprocess.Popen:
        slot = min(set(range(self.jobs)) - set(self.slot_of.values()))
        with open(run_dir / "train.log", "a") as log:
            proc = _start(command_for(run, run_dir, status), log, self.slots[slot] if self.jobs > 1 else None)
        self.slot_of[proc] = slot
        return proc

    def wait(self, handles: list, timeout: float) -> list[tuple[object, int | str]]:
        time.sleep(timeout)
        done = [(proc, proc.returncode) for proc in handles if proc.poll() is not None]
        for proc, _ in done:
            self.slot_of.pop(proc, None)
        return done
