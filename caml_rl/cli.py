"""The ``caml-rl`` command. Thin: parses, checks flags, calls the Python API.

A failure ends as :mod:`caml_rl.errors` decides by its type: caml-rl's own errors in one line
(exit status 2), anything else with its traceback and a request to report it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .algorithm import algorithm_class
from .allocator import keep_freed_memory
from .checkpoint import atomic_write_json, check_out_path
from .config import ConfigError, load_config
from .distributed import launched_by_torchrun, rank_from_env
from .errors import exit_status, show_warnings_in_one_line
from .reproduction import LATER_STEPS_TOLERANCE, disagreements, machine_difference, settings_difference

AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
SEED = (lambda v: 0 <= v < 2**63, "an integer >= 0")
BENCHMARK_BATCH = {"env": "halfcheetah_vel", "tasks": 40, "episodes": 20, "horizon": 200, "method": "caml"}
SET_HELP = "override a config key, e.g. --set adaptation.inner_lr=0.5 (repeatable)"
TASK_SET_HELP = (
    "change a task setting from the trained one, e.g. --set env.settings.goal_norm=1 (repeatable; recorded in the "
    "output; the observation and action sizes must stay)"
)


def check_ranges(args: argparse.Namespace, **rules: tuple[Callable[[Any], bool], str]) -> None:
    """Before any work: one line for the first given flag outside its range, in ``rules``' order
    (a flag that takes several values: its first value outside)."""
    for key, (ok, allowed) in rules.items():
        value = getattr(args, key)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and not ok(v):
                raise ConfigError(f"--{key.replace('_', '-')} {v} is out of range; allowed: {allowed}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a policy (default: CAML on 2D navigation)")
    p.add_argument("config", nargs="?", help="YAML config (see experiments/configs/); defaults if omitted")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--out", help="run directory (default: runs/<env>_<what adapts: context, all, rl2, pearl>_<time>)")
    p.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    p.add_argument("--device", help="shortcut for --set device=D (cpu, cuda, auto)")
    p.add_argument("--iterations", type=int, help="shortcut for --set iterations=N (also extends a resumed run)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="return before and after 1..k inner steps on new tasks")
    p.add_argument("run_dir")
    p.add_argument("--tasks", type=int, help="number of new test tasks (default: config's evaluation.tasks)")
    p.add_argument("--steps", type=int, help="inner steps k (default: evaluation.steps)")
    p.add_argument("--episodes", type=int, help="episodes per task and step (default: evaluation.episodes)")
    p.add_argument("--seed", type=int, help="seed of the test tasks (default: the run's seed)")
    p.add_argument("--inner-lr", type=float, help="inner step size (default: the run's)")
    p.add_argument("--checkpoint", help="a specific checkpoint file (default: the newest)")
    p.add_argument("--set", dest="task_settings", action="append", default=[], metavar="KEY=VALUE", help=TASK_SET_HELP)
    p.add_argument("--out", help="where to write the JSON (default: RUN_DIR/eval.json, only if the run has none yet)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="physics vs sampler vs meta-iteration throughput on one batch")
    p.add_argument("--config", help="benchmark exactly this config file (e.g. a headline config; --set still applies)")
    p.add_argument("--env", help=f"task distribution (default: {BENCHMARK_BATCH['env']})")
    p.add_argument("--tasks", type=int, help=f"default {BENCHMARK_BATCH['tasks']}")
    p.add_argument("--episodes", type=int, help=f"default {BENCHMARK_BATCH['episodes']}")
    p.add_argument("--horizon", type=int, help=f"default {BENCHMARK_BATCH['horizon']}")
    p.add_argument("--iterations", type=int, default=3, help="meta-iterations to time")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--method", choices=["caml", "maml"], help=f"default {BENCHMARK_BATCH['method']}")
    p.add_argument(
        "--preset",
        choices=["paper", "maml-rl"],
        help="paper: horizon 200, 200x200, 50 context; maml-rl: pytorch-maml-rl's batch shape, horizon 100, "
        "with a 100x100 ReLU net (its own is 64x64 tanh); overrides --horizon",
    )
    p.add_argument("--simulator", choices=["batch", "rollout", "warp"], help="MuJoCo backend (env.settings.simulator)")
    p.add_argument("--worlds", type=int, nargs="+", metavar="N", help="also time the physics alone at N simulations")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def cmd_benchmark(args: argparse.Namespace) -> None:
    from .benchmark import run_benchmark

    check_ranges(args, tasks=AT_LEAST_1, episodes=AT_LEAST_1, horizon=AT_LEAST_1, iterations=AT_LEAST_1)
    if any(n < 1 for n in args.worlds or []):
        raise ConfigError(f"--worlds {min(args.worlds)} is out of range; allowed: >= 1")
    given = [f"--{k}" for k in (*BENCHMARK_BATCH, "preset", "simulator") if getattr(args, k) is not None]
    if args.config and given:
        raise ConfigError(
            f"--config benchmarks the config file as it is; drop {', '.join(given)} (change it with --set KEY=VALUE)"
        )
    for key, default in BENCHMARK_BATCH.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    flags = "env tasks episodes horizon iterations device method preset overrides simulator worlds".split()
    kwargs = {flag: getattr(args, flag) for flag in flags}  # named as its parameters
    result = run_benchmark(**kwargs, config_file=args.config)
    if rank_from_env() != 0:  # under torchrun every worker measures; rank 0 reports
        return
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else value
        print(f"{key:>26}  {shown}")


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train every run of a suite, skipping finished ones and resuming the rest")
    p.add_argument("suite", help="suite YAML (see experiments/suites/)")
    p.add_argument("--jobs", type=int, help="runs trained at once on this machine, each on its own CPUs (default 1)")
    p.add_argument("--only", help="glob over run names, e.g. 'navigation/caml_*'")
    p.add_argument("--dry-run", action="store_true", help="only print each run's status")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="one Ray task per run, on the cluster at ADDRESS (default: $RAY_ADDRESS, else a local one); "
        "needs pip install 'caml-rl[ray]'",
    )
    p.add_argument("--slurm", action="store_true", help="one SLURM job per run (submitit); needs 'caml-rl[slurm]'")
    p.add_argument("--cpus", type=float, help="CPUs per run with --ray/--slurm (default: suite resources:, threads)")
    p.add_argument("--gpus", type=float, help="GPUs per run with --ray/--slurm (default: 1 when its device is cuda)")
    p.add_argument("--partition", help="SLURM partition (default: the suite's slurm: partition, else SLURM's)")
    p.add_argument("--time", type=int, metavar="MINUTES", help="SLURM time limit per job (default 60)")
    p.add_argument("--slurm-folder", help="submitit's job files and logs, on shared storage (default: slurm_jobs)")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .launchers import launcher_for
    from .sweep import sweep

    check_ranges(args, jobs=AT_LEAST_1, cpus=(lambda v: v > 0, "> 0"), gpus=AT_LEAST_0, time=AT_LEAST_1)
    flags = ("ray", "slurm", "jobs", "cpus", "gpus", "partition", "time", "slurm_folder")
    launcher = launcher_for(**{flag: getattr(args, flag) for flag in flags}, start=not args.dry_run)
    sweep(args.suite, args.jobs or 1, args.only, args.dry_run, launcher=launcher)


def _add_baseline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline", help="train an SB3 PPO baseline on a task distribution (fine-tuned at test time, or --oracle)"
    )
    p.add_argument("config", nargs="?", help="YAML config giving env, policy architecture and evaluation")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--out", required=True, help="run directory (resumed if it already holds ppo_model.zip)")
    p.add_argument("--oracle", action="store_true", help="give PPO the task parameters in its observation")
    p.add_argument("--timesteps", type=int, default=2_000_000, help="PPO env steps (default: 2,000,000)")
    p.add_argument("--n-envs", type=int, default=8, help="envs stepped together by SB3 (default: 8)")
    p.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")


def cmd_baseline(args: argparse.Namespace) -> None:
    from .ppo_baseline import PPOBaselineRun, PPOSettings

    check_out_path(args.out, "--out", folder=True)
    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    config = load_config(args.config, overrides)
    ppo = PPOSettings(total_timesteps=args.timesteps, n_envs=args.n_envs)
    PPOBaselineRun(config, args.out, ppo, oracle=args.oracle).train(evaluate_at_end=not args.no_eval)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Markdown table and plots from run directories (seeds pooled)")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, help="folder for results.md, results.json and the PNGs")
    p.add_argument("--steps", type=int, default=3, help="inner steps shown in the table")
    p.add_argument(
        "--x",
        dest="x_key",
        metavar="CONFIG_KEY",
        help="also plot the one-step return against this config key, e.g. adaptation.inner_lr",
    )
    p.add_argument(
        "--eval",
        dest="eval_name",
        default="eval.json",
        metavar="FILE",
        help="each run's evaluation file (default eval.json; e.g. eval_iter150.json for a run half-way)",
    )


def cmd_report(args: argparse.Namespace) -> None:
    from .report import report

    check_ranges(args, steps=AT_LEAST_0)
    for path in report(args.run_dirs, args.out, args.steps, args.x_key, args.eval_name):
        print(f"wrote {path}")
    print((Path(args.out) / "results.md").read_text())


def cmd_train(args: argparse.Namespace) -> None:
    from .trainer import Trainer

    if args.resume:
        if args.config or args.overrides or args.out:
            raise ConfigError("--resume takes its config from the run; only --iterations may change it")
        check_ranges(args, iterations=AT_LEAST_0)
        trainer = Trainer.resume(args.resume, iterations=args.iterations)
        if trainer.workers.is_main:
            print(f"resuming {args.resume} at iteration {trainer.iteration}/{trainer.config.iterations}")
    else:
        given = {k: getattr(args, k) for k in ("seed", "device", "iterations")}  # shortcuts, after the --set ones
        config = load_config(args.config, [*args.overrides, *(f"{k}={v}" for k, v in given.items() if v is not None)])
        if launched_by_torchrun() and not args.out:
            raise ConfigError("--out is required under torchrun, so that every worker uses the same run directory")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        label = algorithm_class(config.algorithm).label(config).replace(",", "+")  # what adapts, or the method
        out = args.out or f"runs/{config.env.name}_{label}_{stamp}"
        check_out_path(out, "--out", folder=True)
        if args.config and Path(args.config).resolve() == (Path(out) / "config.yaml").resolve():
            raise ConfigError(
                f"--out {out!r} would overwrite {args.config!r}, the config you train from, with the run's "
                "resolved config.yaml; choose another --out"
            )
        trainer = Trainer(config, out)  # train() refuses a directory with checkpoints, on every worker
        if trainer.workers.is_main:
            workers = f" ({trainer.workers.world_size} workers)" if trainer.workers.world_size > 1 else ""
            print(
                f"training {config.env.name} (adapt={type(trainer.algorithm).label(config)}) on {trainer.device}, "
                f"{config.iterations} iterations -> {out}{workers}"
            )
    trainer.train(evaluate_at_end=not args.no_eval)


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Never replaces an existing file (above all the run's training-time eval.json) unless
    ``--overwrite`` says so; every flag is checked before the (possibly long) evaluation."""
    from .reproduction import machine_record
    from .runs import load_run

    positive = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
    check_ranges(args, tasks=(lambda v: v >= 2, ">= 2"), steps=AT_LEAST_0, episodes=AT_LEAST_1, seed=SEED)
    check_ranges(args, inner_lr=positive)
    out = check_out_path(args.out or Path(args.run_dir) / "eval.json", "--out", folder=False)
    if out.exists() and not args.overwrite:
        which = "the run's training-time evaluation" if not args.out else "it exists"
        raise ConfigError(
            f"{str(out)!r} exists ({which}); give --out FILE for this evaluation, or --overwrite to replace it"
        )
    run = load_run(args.run_dir, args.checkpoint, args.task_settings)
    committed_file = Path(args.run_dir) / "eval.json"
    committed = _readable_eval(committed_file)
    if committed is not None:
        why = machine_difference(committed.get("machine"), machine_record(run.device))
        if why:
            print(
                f"note: {committed_file} comes from another machine, library versions or caml-rl rounding ({why}); "
                "a re-evaluation agrees with it statistically, not bit for bit"
            )
    result = run.evaluate(args.tasks, args.steps, args.episodes, args.seed, args.inner_lr)
    atomic_write_json(out, result.to_dict())
    changed = f", task settings changed: {result.task_settings}" if result.task_settings else ""
    print(
        f"{result.env} (adapt={result.adapt}), iteration {result.iteration}, {result.num_tasks} new tasks "
        f"x {result.episodes_per_task} episodes, seed {result.seed}{changed}:"
    )
    print(result.table())
    print(f"wrote {out}")
    if committed is not None and out.resolve() != committed_file.resolve():
        print(_agreement(committed_file, committed, result.to_dict()))


def _readable_eval(path: Path) -> dict | None:
    """A run's eval.json to compare with, or None (absent or unreadable: then there is nothing to compare)."""
    from .checkpoint import CheckpointError, read_json

    try:
        data = read_json(path, "evaluation") if path.is_file() else None
    except CheckpointError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("returns"), list) else None


def _agreement(path: Path, committed: dict, result: dict) -> str:
    """One line: does this evaluation reproduce the run's eval.json (bit for bit, or within tolerance)?"""
    if settings_difference(committed, result):
        return f"not compared with {path}: {settings_difference(committed, result)}"
    problems = disagreements(committed, result)
    if problems:
        return f"differs from {path}: " + "; ".join(problems)
    if machine_difference(committed.get("machine"), result.get("machine", {})) is None:
        return f"reproduces {path} bit for bit"
    return (
        f"reproduces {path} within the statistical tolerance (steps 0-1 inside its 95% CI, "
        f"later steps within {LATER_STEPS_TOLERANCE} x)"
    )


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="figures and videos of the adapted policy after each inner step")
    p.add_argument("run_dir")
    p.add_argument("--tasks", type=int, help="number of test tasks to show (default 4; evaluation's seed stream)")
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one given task instead, e.g. --task goal_x=0.3 --task goal_y=-0.2 (every key of the env)",
    )
    p.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 3], help="inner steps to show (default 0 1 2 3)")
    p.add_argument("--episodes", type=int, help="episodes per task and step (default: evaluation.episodes)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/visualize)")
    p.add_argument(
        "--format", dest="fmt", choices=["mp4", "gif"], default="mp4", help="video format (envs that render)"
    )
    p.add_argument("--seed", type=int, help="seed of the test tasks and episodes (default: the run's seed)")
    p.add_argument("--checkpoint", help="a specific checkpoint file (default: the newest)")
    p.add_argument("--set", dest="task_settings", action="append", default=[], metavar="KEY=VALUE", help=TASK_SET_HELP)


def parse_task(items: list[str], names: tuple[str, ...], env: str) -> list[float]:
    """``["goal_x=0.3", "goal_y=-0.2"]`` -> ``[0.3, -0.2]`` in ``names`` order, or one line naming
    the bad item and the allowed keys."""
    allowed = ", ".join(names)
    values: dict[str, float] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--task {item!r} is not KEY=VALUE; allowed keys for env {env!r}: {allowed}")
        if key not in names:
            raise ConfigError(f"--task key {key!r} is unknown for env {env!r}; allowed: {allowed}")
        if key in values:
            raise ConfigError(f"--task key {key!r} is given twice; give each of {allowed} once")
        try:
            values[key] = float(text)
        except ValueError:
            raise ConfigError(f"--task {key}={text!r} is not a number") from None
        if not math.isfinite(values[key]):
            raise ConfigError(f"--task {key}={text!r} is not finite")
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"--task lacks {', '.join(missing)} for env {env!r}; give every one of: {allowed}")
    return [values[n] for n in names]


def cmd_visualize(args: argparse.Namespace) -> list[Path]:
    from .runs import load_run
    from .visualize import visualize

    if args.task and args.tasks is not None:
        raise ConfigError("give either --tasks N or --task KEY=VALUE ..., not both")
    steps = (lambda v: 0 <= v <= 50, "integers from 0 to 50")
    check_ranges(args, tasks=AT_LEAST_1, episodes=AT_LEAST_1, steps=steps, seed=SEED)
    if args.out:
        check_out_path(args.out, "--out", folder=True)
    run = load_run(args.run_dir, args.checkpoint, args.task_settings)
    task = parse_task(args.task, run.distribution.task_names, run.config.env.name) if args.task else None
    paths = visualize(
        run,
        tasks=args.tasks or 4,
        task=task,
        steps=args.steps,
        out=args.out,
        fmt=args.fmt,
        seed=args.seed,
        episodes=args.episodes,
    )
    for path in paths:
        print(f"wrote {path}")
    return paths


def cmd_envs(args: argparse.Namespace) -> None:
    from caml_rl import envs

    for name, factory in sorted(envs.registered().items()):
        try:
            dist = factory()
            settings = ", ".join(f"{k}={v}" for k, v in dist.settings().items())
            print(f"{name}\n    tasks: {', '.join(dist.task_names)}\n    settings: {settings}")
        except Exception as exc:  # an optional dependency may be missing
            print(f"{name}\n    unavailable: {str(exc).splitlines()[0]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caml-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_evaluate, _add_benchmark, _add_sweep, _add_report, _add_baseline, _add_visualize):
        add(sub)
    sub.add_parser("envs", help="list the registered task distributions and their settings")
    for command in sub.choices.values():  # every command may need a user's task distributions
        command.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            metavar="MODULE",
            help="import MODULE first, e.g. the one that registers your task distribution (repeatable; "
            "also $CAML_RL_IMPORT=mod1,mod2)",
        )
        command.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    return parser


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "envs": cmd_envs,
    "benchmark": cmd_benchmark,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "baseline": cmd_baseline,
    "visualize": cmd_visualize,
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    show_warnings_in_one_line()
    keep_freed_memory()  # page faults cost MAML a third of its time otherwise (caml_rl/allocator.py)
    try:
        if args.imports or os.environ.get("CAML_RL_IMPORT"):
            from caml_rl.envs import import_user_modules

            import_user_modules(args.imports)
        COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's last flush
    except (Exception, KeyboardInterrupt) as exc:
        sys.exit(exit_status(exc, args.debug))
