"""The ``caml-rl`` command. Thin: parses, validates, calls the Python API.

Every user error (bad config, bad value, missing run, damaged checkpoint) ends in one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
import warnings
from datetime import datetime
from pathlib import Path

from .checkpoint import CheckpointError, RunDirectoryWarning, atomic_write_json, check_out_path
from .config import ConfigError, load_config
from .distributed import DistributedError, launched_by_torchrun, rank_from_env
from .partition import PartitionError
from .visualize import add_visualize_command, cmd_visualize

USER_ERRORS = (ConfigError, CheckpointError, PartitionError, ValueError, FileNotFoundError, DistributedError)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a policy (default: CAML on 2D navigation)")
    p.add_argument("config", nargs="?", help="YAML config (see experiments/configs/); defaults if omitted")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set adaptation.inner_lr=0.5 (repeatable)",
    )
    p.add_argument("--out", help="run directory (default: runs/<env>_<partition>_<time>)")
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
    p.add_argument("--out", help="where to write the JSON (default: RUN_DIR/eval.json, only if the run has none yet)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="physics vs sampler vs meta-iteration throughput on one batch")
    p.add_argument("--env", default="halfcheetah_vel", help="task distribution (default: halfcheetah_vel)")
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--iterations", type=int, default=3, help="meta-iterations to time")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--method", default="caml", choices=["caml", "maml"])
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
    import json

    from .benchmark import run_benchmark

    for key in ("tasks", "episodes", "horizon", "iterations"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key} {getattr(args, key)} is out of range; allowed: >= 1")
    if any(n < 1 for n in args.worlds or []):
        raise ConfigError(f"--worlds {min(args.worlds)} is out of range; allowed: >= 1")
    result = run_benchmark(
        args.env,
        args.tasks,
        args.episodes,
        args.horizon,
        args.iterations,
        args.device,
        args.method,
        args.preset,
        args.overrides,
        simulator=args.simulator,
        worlds=args.worlds,
    )
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
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (each single-threaded when > 1)")
    p.add_argument("--only", help="glob over run names, e.g. 'navigation/caml_*'")
    p.add_argument("--dry-run", action="store_true", help="only print each run's status")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .sweep import sweep

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs} is out of range; allowed: >= 1")
    sweep(args.suite, args.jobs, args.only, args.dry_run)


def _add_baseline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline",
        help="train an SB3 PPO baseline on a task distribution (fine-tuned at test time, or --oracle)",
    )
    p.add_argument("config", nargs="?", help="YAML config giving env, policy architecture and evaluation")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
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


def cmd_report(args: argparse.Namespace) -> None:
    from .report import report

    if args.steps < 0:
        raise ConfigError(f"--steps {args.steps} is out of range; allowed: >= 0")
    for path in report(args.run_dirs, args.out, args.steps, args.x_key):
        print(f"wrote {path}")
    print((Path(args.out) / "results.md").read_text())


def cmd_train(args: argparse.Namespace) -> None:
    from .trainer import Trainer

    if args.resume:
        if args.config or args.overrides or args.out:
            raise ConfigError("--resume takes its config from the run; only --iterations may change it")
        if args.iterations is not None and args.iterations < 0:
            raise ConfigError(f"--iterations {args.iterations} is out of range; allowed: >= 0")
        trainer = Trainer.resume(args.resume, iterations=args.iterations)
        if trainer.workers.is_main:
            print(f"resuming {args.resume} at iteration {trainer.iteration}/{trainer.config.iterations}")
    else:
        overrides = list(args.overrides)
        for key in ("seed", "device", "iterations"):
            if getattr(args, key) is not None:
                overrides.append(f"{key}={getattr(args, key)}")
        config = load_config(args.config, overrides)
        if launched_by_torchrun() and not args.out:
            raise ConfigError("--out is required under torchrun, so that every worker uses the same run directory")
        out = (
            args.out
            or f"runs/{config.env.name}_{config.adaptation.partition.replace(',', '+')}_"
            + datetime.now().strftime("%Y%m%d-%H%M%S")
        )
        check_out_path(out, "--out", folder=True)
        trainer = Trainer(config, out)  # train() refuses a directory with checkpoints, on every worker
        if trainer.workers.is_main:
            workers = f" ({trainer.workers.world_size} workers)" if trainer.workers.world_size > 1 else ""
            print(
                f"training {config.env.name} (adapt={config.adaptation.partition}) on {trainer.device}, "
                f"{config.iterations} iterations -> {out}{workers}"
            )
    trainer.train(evaluate_at_end=not args.no_eval)


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Never replaces an existing file (above all the run's training-time eval.json) unless
    ``--overwrite`` says so; every flag is checked before the (possibly long) evaluation."""
    from .runs import load_run

    for key in ("tasks", "steps", "episodes"):
        value = getattr(args, key)
        if value is not None and value < (2 if key == "tasks" else 0 if key == "steps" else 1):
            raise ConfigError(
                f"--{key} {value} is out of range; allowed: "
                + {"tasks": ">= 2", "steps": ">= 0", "episodes": ">= 1"}[key]
            )
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise ConfigError(f"--seed {args.seed} is out of range; allowed: an integer >= 0")
    if args.inner_lr is not None and not (math.isfinite(args.inner_lr) and args.inner_lr > 0):
        raise ConfigError(f"--inner-lr {args.inner_lr} is out of range; allowed: a finite number > 0")
    out = check_out_path(args.out or Path(args.run_dir) / "eval.json", "--out", folder=False)
    if out.exists() and not args.overwrite:
        which = "the run's training-time evaluation" if not args.out else "it exists"
        raise ConfigError(
            f"{str(out)!r} exists ({which}); give --out FILE for this evaluation, or --overwrite to replace it"
        )
    run = load_run(args.run_dir, args.checkpoint)
    result = run.evaluate(args.tasks, args.steps, args.episodes, args.seed, args.inner_lr)
    atomic_write_json(out, result.to_dict())
    print(
        f"{result.env} (adapt={result.adapt}), iteration {result.iteration}, {result.num_tasks} new tasks "
        f"x {result.episodes_per_task} episodes, seed {result.seed}:"
    )
    print(result.table())
    print(f"wrote {out}")


def cmd_envs(args: argparse.Namespace) -> None:
    from caml_rl import envs

    for name, factory in sorted(envs.registered().items()):
        try:
            dist = factory()
            settings = ", ".join(f"{k}={v}" for k, v in dist.settings().items())
            tasks = ", ".join(dist.task_names)
            print(f"{name}\n    tasks: {tasks}\n    settings: {settings}")
        except Exception as exc:  # an optional dependency may be missing
            print(f"{name}\n    unavailable: {str(exc).splitlines()[0]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caml-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_benchmark(sub)
    _add_sweep(sub)
    _add_report(sub)
    _add_baseline(sub)
    add_visualize_command(sub)
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


def _one_line_warnings() -> None:
    """Show caml-rl's own warnings (e.g. stray files ignored in checkpoints/) as one line."""
    show = warnings.showwarning
    if getattr(show, "caml_rl", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, RunDirectoryWarning):
            print(f"caml-rl: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning.caml_rl = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    try:
        if args.imports or os.environ.get("CAML_RL_IMPORT"):
            from caml_rl.envs import import_user_modules

            import_user_modules(args.imports)
        COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        if args.debug:
            traceback.print_exc()
        print(f"caml-rl: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a file that cannot be read or written: name it, no traceback
        if args.debug:
            traceback.print_exc()
        where = f" {str(exc.filename)!r}" if exc.filename else ""
        print(f"caml-rl: error: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("caml-rl: interrupted; resume with `caml-rl train --resume RUN_DIR`", file=sys.stderr)
        sys.exit(130)
