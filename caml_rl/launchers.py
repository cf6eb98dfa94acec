"""Launchers that hand a sweep's runs to a cluster engine: Ray (``caml-rl sweep SUITE --ray``) and
SLURM through submitit (``--slurm``). :func:`caml_rl.sweep.sweep` decides what is pending and reports
it; each remote run calls :func:`caml_rl.sweep.train_run`, which starts or resumes the run as its
directory finds it then, so a retried task or a requeued job resumes from the newest checkpoint.

Run directories and config files must be on storage every node sees, under the same path: the
suite's ``out_root`` says where the runs go, and relative paths are made absolute here.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import signal
import subprocess
from pathlib import Path

from .config import ConfigError, load_config
from .sweep import Launcher, SuiteRun, SweepError, train_run


def needs(run: SuiteRun, cpus: float | None = None, gpus: float | None = None) -> tuple[float, float]:
    """CPUs and GPUs of one run: the command line's, else the suite's ``resources:``, else the run's
    own: ``torch_threads`` CPUs (1 when 0 = all cores) and one GPU when its device is cuda."""
    config = load_config(run.config, run.overrides)
    own_cpus = config.torch_threads or 1
    own_gpus = 1 if config.device.startswith("cuda") else 0
    cpus = cpus if cpus is not None else run.resources.get("cpus", own_cpus)
    gpus = gpus if gpus is not None else run.resources.get("gpus", own_gpus)
    return cpus, gpus


def _absolute(run: SuiteRun) -> SuiteRun:
    return dataclasses.replace(run, config=str(Path(run.config).resolve()))


def _missing_extra(extra: str, module: str) -> SweepError:
    return SweepError(f"--{extra} needs the {module!r} package; install it with: pip install 'caml-rl[{extra}]'")


# ------------------------------------------------------------------ Ray
def _ray_train(run: SuiteRun, run_dir: str, threads: int) -> int:
    return train_run(run, run_dir, threads)


class RayLauncher(Launcher):
    """Each run is one Ray task holding its CPUs and GPUs; Ray queues what the cluster cannot hold
    yet. A task is not retried: a lost worker leaves a partial run that the next sweep resumes."""

    def __init__(self, address: str | None = None, cpus: float | None = None, gpus: float | None = None):
        try:
            import ray
        except ImportError:
            raise _missing_extra("ray", "ray") from None
        self.ray = ray
        self.cpus, self.gpus = cpus, gpus
        if not ray.is_initialized():
            ray.init(address=address or None)
        self.remote = ray.remote(max_retries=0)(_ray_train)

    def prepare(self, runs: list[SuiteRun]) -> None:
        cluster = self.ray.cluster_resources()
        for run in runs:
            cpus, gpus = needs(run, self.cpus, self.gpus)
            for what, want, key in (("CPUs", cpus, "CPU"), ("GPUs", gpus, "GPU")):
                if want > cluster.get(key, 0):
                    raise SweepError(
                        f"run {run.name!r} needs {want:g} {what}; the Ray cluster has {cluster.get(key, 0):g} "
                        "(set the suite's resources: or --cpus/--gpus)"
                    )

    def where(self, run: SuiteRun) -> str:
        cpus, gpus = needs(run, self.cpus, self.gpus)
        return f"  [ray: {cpus:g} CPU" + (f", {gpus:g} GPU]" if gpus else "]")

    def submit(self, run: SuiteRun, run_dir: Path, status: str) -> object:
        cpus, gpus = needs(run, self.cpus, self.gpus)
        threads = max(1, int(cpus))
        task = self.remote.options(num_cpus=cpus, num_gpus=gpus)
        return task.remote(_absolute(run), str(Path(run_dir).resolve()), threads)

    def wait(self, handles: list, timeout: float) -> list[tuple[object, int | str]]:
        if not handles:
            return []
        ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=timeout)
        done = []
        for ref in ready:
            try:
                done.append((ref, self.ray.get(ref)))
            except self.ray.exceptions.RayError as exc:  # the worker or its node died
                done.append((ref, f"ray: {type(exc).__name__}"))
        return done

    def cancel(self, handles: list) -> None:
        for ref in handles:  # force: the worker dies, its training gets SIGINT and stops like Ctrl-C
            self.ray.cancel(ref, force=True)


# ------------------------------------------------------------------ SLURM (submitit)
class TrainJob:
    """A SLURM job's callable. On a time-out or preemption submitit calls :meth:`checkpoint`: the
    training stops (its checkpoints stay) and the job is requeued with this same callable, which
    resumes the run from its newest checkpoint (submitit's Checkpointable protocol)."""

    def __init__(self, run: SuiteRun, run_dir: str, threads: int):
        self.run, self.run_dir, self.threads = run, run_dir, threads
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_proc": None}

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    def __call__(self) -> int:
        return train_run(self.run, self.run_dir, self.threads, on_start=self._started)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # as Ctrl-C: it stops between checkpoint writes
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        return DelayedSubmission(TrainJob(self.run, self.run_dir, self.threads), *args, **kwargs)


class SlurmLauncher(Launcher):
    """One SLURM job per run through submitit, with partition, time (minutes), CPUs and GPUs from
    the command line, else the suite's ``slurm:`` entry, else the run's own needs. ``cluster`` is
    submitit's (``None``: SLURM; ``"local"``: its local executor, for tests)."""

    def __init__(self, folder: str | Path, cluster: str | None = None, **options):
        try:
            import submitit
        except ImportError:
            raise _missing_extra("slurm", "submitit") from None
        if cluster is None and shutil.which("sbatch") is None:
            raise SweepError("--slurm needs SLURM's sbatch on PATH; run the sweep on the cluster's login node")
        self.submitit = submitit
        self.folder, self.cluster = Path(folder), cluster or "slurm"
        self.options = {k: v for k, v in options.items() if v is not None}
        self.jobs: dict[object, str] = {}

    def _parameters(self, run: SuiteRun) -> tuple[dict, int]:
        given = {**run.slurm, **self.options}
        cpus, gpus = needs(run, given.get("cpus"), given.get("gpus"))
        params = {"timeout_min": int(given.get("time", 60)), "cpus_per_task": max(1, int(cpus)), "name": run.name}
        if gpus:
            params["gpus_per_node"] = math.ceil(gpus)  # SLURM hands out whole GPUs
        if "mem_gb" in given:
            params["mem_gb"] = given["mem_gb"]
        for key in ("partition", "account", "qos", "constraint"):
            if key in given:
                params[f"slurm_{key}"] = given[key]
        params["slurm_signal_delay_s"] = 120  # USR2 this long before the time limit: stop, requeue, resume
        return params, max(1, int(cpus))

    def where(self, run: SuiteRun) -> str:
        params, _ = self._parameters(run)
        shown = ", ".join(f"{k.removeprefix('slurm_')}={v}" for k, v in params.items() if k != "name")
        return f"  [{self.cluster}: {shown}]"

    def submit(self, run: SuiteRun, run_dir: Path, status: str) -> object:
        params, threads = self._parameters(run)
        executor = self.submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        executor.update_parameters(**params)
        job = executor.submit(TrainJob(_absolute(run), str(Path(run_dir).resolve()), threads))
        self.jobs[job] = run.name
        return job

    def wait(self, handles: list, timeout: float) -> list[tuple[object, int | str]]:
        import time

        time.sleep(timeout)
        done = []
        for job in handles:
            if job.done():
                try:
                    done.append((job, job.result()))
                except Exception as exc:  # the job failed, timed out too often or was cancelled
                    done.append((job, f"slurm job {job.job_id}: {str(exc).strip().splitlines()[-1][:200]}"))
        return done

    def cancel(self, handles: list) -> None:
        for job in handles:
            job.cancel(check=False)


def launcher_for(
    ray: str | None = None,
    slurm: bool = False,
    jobs: int | None = None,
    cpus: float | None = None,
    gpus: float | None = None,
    partition: str | None = None,
    time: int | None = None,
    slurm_folder: str | None = None,
    start: bool = True,
) -> Launcher | None:
    """The launcher the command line asks for (``None``: the local one with ``--jobs``), its flags
    checked first; ``start=False`` (a dry run) checks them only."""
    if ray is not None and slurm:
        raise ConfigError("--ray and --slurm exclude each other; pick one")
    if (ray is not None or slurm) and jobs is not None:
        engine = "--slurm" if slurm else "--ray"
        raise ConfigError(
            f"--jobs {jobs} is for the local sweep; with {engine} the cluster decides how many runs train at once "
            "(set --cpus/--gpus per run)"
        )
    if not slurm:
        for flag, value in (("--partition", partition), ("--time", time), ("--slurm-folder", slurm_folder)):
            if value is not None:
                raise ConfigError(f"{flag} {value!r} needs --slurm")
    if ray is None and not slurm:
        for flag, value in (("--cpus", cpus), ("--gpus", gpus)):
            if value is not None:
                raise ConfigError(f"{flag} {value!r} needs --ray or --slurm (the local sweep uses --jobs)")
        return None
    if not start:
        return None
    if ray is not None:
        return RayLauncher(ray or None, cpus, gpus)
    return SlurmLauncher(
        Path(slurm_folder or "slurm_jobs").resolve(), cpus=cpus, gpus=gpus, partition=partition, time=time
    )
