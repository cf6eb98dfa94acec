"""Results tables and plots from run directories: ``caml-rl report RUN_DIRS... --out DIR``.

Runs whose directory names differ only by a ``_seedN`` suffix form one row; they must agree on
everything but the seed. Each cell is the mean over every seed's test tasks with two 95%
t-intervals: over those pooled tasks (the trained policies held fixed) and, for several seeds,
over the seeds' means (which includes how much training itself varies; S - 1 degrees of freedom).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, atomic_write_text, check_out_path, read_json, read_progress, read_yaml_mapping
from .config import ConfigError
from .config_loading import build_config
from .evaluation import mean_ci95
from .reproduction import changed_task_settings
from .run_directory import first_mapping_difference
from .visualize.curves import draw_returns, progress_column

SEED_SUFFIX = re.compile(r"_seed\d+$")
# a row's runs must agree on these eval.json fields and on their config.yaml apart from IGNORED_CONFIG
SAME_EVAL = ("env", "adapt", "num_tasks", "episodes_per_task", "inner_lr", "iteration")
IGNORED_CONFIG = {"seed", "iterations", "device", "torch_threads", "checkpoint_every", "checkpoint_keep"}


@dataclass
class RunGroup:
    label: str
    runs: list[Path] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    progress: list[list[dict]] = field(default_factory=list)


def group_label(run_dir: Path) -> str:
    run_dir = run_dir.resolve()
    return f"{run_dir.parent.name}/{SEED_SUFFIX.sub('', run_dir.name)}"


def collect(run_dirs: list[str | Path], eval_name: str = "eval.json") -> list[RunGroup]:
    groups: dict[str, RunGroup] = {}
    seen: dict[Path, str] = {}
    for given in run_dirs:
        d = Path(given)
        if d.resolve() in seen:
            raise ConfigError(f"run directory {str(given)!r} is given twice (also as {seen[d.resolve()]!r})")
        seen[d.resolve()] = str(given)
        eval_path = d / eval_name
        if not eval_path.is_file():
            raise CheckpointError(
                f"run directory {str(d)!r} has no {eval_name} (train to the end or `caml-rl evaluate` it)"
            )
        evaluation = read_eval(eval_path)
        progress = d / "progress.csv"
        rows = read_progress(progress) if progress.is_file() else []
        # the curve ends at the evaluated iteration, like the table (a run may have trained further)
        rows = [r for r in rows if not r.get("iteration") or int(float(r["iteration"])) <= evaluation["iteration"]]
        g = groups.setdefault(group_label(d), RunGroup(group_label(d)))
        g.runs.append(d)
        g.evals.append(evaluation)
        g.progress.append(rows)
    for g in groups.values():
        check_comparable(g)
    return list(groups.values())


def _config_of(run_dir: Path) -> dict[str, object] | None:
    """The run's settings with today's defaults filled in, so that a run recorded before a setting
    existed compares equal to one that recorded its default (raw when it no longer builds)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    raw = read_yaml_mapping(path, "run config")
    try:
        return build_config(dict(raw)).to_dict()
    except ConfigError:
        return raw


def check_comparable(g: RunGroup) -> None:
    """The seeds of one row must differ only in their seed, or the row would average unlike runs."""
    first, first_config = g.evals[0], _config_of(g.runs[0])
    seeds: dict[object, Path] = {}
    for run, ev in zip(g.runs, g.evals):
        where = f"report row {g.label!r}: {str(run)!r} and {str(g.runs[0])!r}"
        steps = (len(ev["task_returns"]), len(first["task_returns"]))
        if steps[0] != steps[1]:
            raise ConfigError(
                f"{where} were evaluated with {steps[0] - 1} and {steps[1] - 1} inner steps; "
                "re-evaluate them alike (rows average equal runs)"
            )
        changed = (changed_task_settings(ev), changed_task_settings(first))
        if changed[0] != changed[1]:
            raise ConfigError(
                f"{where} were evaluated on different task settings ({changed[0]!r} vs {changed[1]!r}); "
                "a row averages runs that differ only in their seed"
            )
        for key in SAME_EVAL:
            if ev.get(key) != first.get(key):
                raise ConfigError(
                    f"{where} differ in their evaluation's {key} ({ev.get(key)!r} vs {first.get(key)!r});"
                    " a row averages runs that differ only in their seed"
                )
        config = _config_of(run)
        if config is None or first_config is None:
            continue
        difference = first_mapping_difference(config, first_config, IGNORED_CONFIG)
        if difference is not None:
            key, mine, theirs = difference
            raise ConfigError(
                f"{where} differ in config key {key} ({mine!r} vs {theirs!r}); a row averages runs "
                "that differ only in their seed"
            )
        seed = config.get("seed")
        if seed in seeds:
            raise ConfigError(
                f"report row {g.label!r}: {str(run)!r} and {str(seeds[seed])!r} both trained with "
                f"seed {seed!r} (the same run copied?)"
            )
        seeds[seed] = run


def read_eval(path: Path) -> dict:
    """An eval.json with the fields the report uses, or one line naming the file and the field."""
    data = read_json(path, "evaluation")

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"evaluation {str(path)!r} {what}; re-run `caml-rl evaluate` to replace it")

    if not isinstance(data, dict):
        raise bad("is not a JSON object")
    for key, kind in (("env", str), ("adapt", str), ("iteration", int), ("num_tasks", int)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise bad(f"has {key}={data.get(key)!r}; expected {kind.__name__}")
    returns = data.get("task_returns")
    if not isinstance(returns, list) or not returns or not all(isinstance(r, list) and r for r in returns):
        raise bad("has no task_returns list of per-step lists")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for r in returns for x in r):
        raise bad("has task_returns that are not finite numbers")
    return data


def _row_at(progress: list[dict], iteration: int) -> dict:
    """The progress row of the evaluated iteration."""
    return next((r for r in progress if r.get("iteration") and int(float(r["iteration"])) == iteration), progress[-1])


def _mean_of(progress: list[list[dict]], column: str) -> float:
    """Mean of a progress column over every iteration of every seed (NaN when no run logs it)."""
    values = np.concatenate([progress_column(p, column) for p in progress if p] or [np.array([])])
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def episodes_seen(evaluation: dict) -> list[int]:
    """Episodes of each new task seen before each point of the curve; files written before this was
    recorded are gradient-step curves: ``k x episodes_per_task``."""
    seen = evaluation.get("episodes_seen")
    if isinstance(seen, list) and len(seen) == len(evaluation["task_returns"]):
        return [int(x) for x in seen]
    return [k * int(evaluation.get("episodes_per_task", 0)) for k in range(len(evaluation["task_returns"]))]


def _env_label(ev: dict) -> str:
    """The evaluated task distribution, with the task settings changed from the trained ones if any."""
    return ev["env"] + "".join(f" {key}={value}" for key, value in changed_task_settings(ev).items())


def group_row(g: RunGroup, steps: int) -> dict:
    """One table row: per inner step the pooled mean, its interval over the pooled tasks and, for
    several seeds, its interval over the seeds' means."""
    pooled, over_seeds, seed_means = [], [], []
    for k in range(steps + 1):
        if k >= len(g.evals[0]["task_returns"]):  # evaluated with fewer steps than the table shows
            pooled.append((math.nan, math.nan))
            over_seeds.append(math.nan)
            seed_means.append([])
            continue
        per_seed = [np.asarray(e["task_returns"][k], dtype=np.float64) for e in g.evals]
        pooled.append(mean_ci95(np.concatenate(per_seed)))
        means = np.array([r.mean() for r in per_seed])
        seed_means.append(means.tolist())
        over_seeds.append(mean_ci95(means)[1] if len(means) > 1 else float("nan"))
    last = [_row_at(p, e["iteration"]) for p, e in zip(g.progress, g.evals) if p]
    return {
        "label": g.label,
        "env": _env_label(g.evals[0]),
        "adapt": g.evals[0]["adapt"],
        "seeds": len(g.runs),
        "tasks": sum(e["num_tasks"] for e in g.evals),
        "iterations": sorted({e["iteration"] for e in g.evals}),
        "env_steps": float(np.mean(progress_column(last, "time/env_steps"))) if last else float("nan"),
        "wall_hours": float(np.mean(progress_column(last, "time/total_seconds"))) / 3600 if last else float("nan"),
        "update_seconds": _mean_of(g.progress, "time/update_seconds"),
        "episodes_seen": episodes_seen(g.evals[0])[: steps + 1],
        "returns": [m for m, _ in pooled],
        "ci95": [c for _, c in pooled],
        "ci95_over_seeds": over_seeds,
        "seed_returns": seed_means,
    }


def _number(x: float, digits: int) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"  # a run that did not log it


def markdown_table(rows: list[dict], steps: int) -> str:
    head = ["run", "env", "adapt", "seeds", "test tasks", "iterations", "env steps (M)", "wall h", "update s/it"]
    head += ["before adaptation"] + [f"after {k} step{'s' if k > 1 else ''}" for k in range(1, steps + 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        its = ",".join(map(str, r["iterations"]))
        cells = [
            r["label"],
            r["env"],
            r["adapt"],
            str(r["seeds"]),
            str(r["tasks"]),
            its,
            _number(r["env_steps"] / 1e6, 1),
            _number(r["wall_hours"], 2),
            _number(r["update_seconds"], 2),
        ]
        seeds = r.get("ci95_over_seeds") or [math.nan] * len(r["returns"])
        cells += [
            f"{m:.2f} ± {c:.2f}" + (f" [± {s:.2f}]" if math.isfinite(s) else "")
            for m, c, s in zip(r["returns"], r["ci95"], seeds)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(groups: list[RunGroup], rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    axes = {  # file name -> (progress column for x, None: the iteration; x label)
        "learning_curves.png": (None, "meta-iteration"),
        "learning_curves_env_steps.png": ("time/env_steps", "env steps (millions, before + after adaptation)"),
        "learning_curves_wall_time.png": ("time/total_seconds", "wall-clock hours (as measured by each run)"),
    }
    for name, (column, xlabel) in axes.items():
        fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
        for group in groups:
            meta = [p for p in group.progress if p and "return/after_adaptation" in p[0]]  # baselines have none
            if not meta:
                continue
            after = [progress_column(p, "return/after_adaptation") for p in meta]
            before = [progress_column(p, "return/before_adaptation") for p in meta]
            n = min(map(len, after))  # equal for a row's seeds (same evaluated iteration) unless a log is short
            x = progress_column(meta[0], "iteration")[:n]
            if column is not None:  # the seeds' mean x at each iteration
                x = np.mean([progress_column(p, column)[:n] for p in meta], axis=0)
                x = x / (1e6 if column == "time/env_steps" else 3600)
            draw_returns(ax, x, before, after, label=group.label)
        ax.set(xlabel=xlabel, ylabel="mean episode return", title="Learning curves (training tasks)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        paths.append(out / name)
        fig.tight_layout()
        fig.savefig(paths[-1])
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for r in rows:
        k = np.arange(len(r["returns"]))
        ax.errorbar(k, r["returns"], yerr=r["ci95"], marker="o", capsize=3, label=r["label"])
    ax.set(
        xlabel="inner gradient steps on the test task",
        ylabel="mean episode return (95% CI)",
        title="Adaptation on new tasks",
    )
    ax.set_xticks(range(max(len(r["returns"]) for r in rows)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    paths.append(out / "adaptation_curves.png")
    fig.tight_layout()
    fig.savefig(paths[-1])
    plt.close(fig)
    paths.append(plot_episodes_seen(rows, out))
    return paths


def plot_episodes_seen(rows: list[dict], out: Path) -> Path:
    """Every method on one axis: return on new tasks against the episodes of the task it had seen
    (gradient methods: k steps x episodes; RL²: its episode index in the trial)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for r in rows:
        n = min(len(r["episodes_seen"]), len(r["returns"]))
        ax.errorbar(
            r["episodes_seen"][:n], r["returns"][:n], yerr=r["ci95"][:n], marker="o", capsize=3, label=r["label"]
        )
    ax.set_xscale("symlog", linthresh=1)  # 0, 1, 2 episodes (RL²) and 20, 40, 60 (20 per gradient step) alike
    ax.set(
        xlabel="episodes of the new task seen (0 = before adapting)",
        ylabel="mean episode return (95% CI)",
        title="Adaptation on new tasks against the experience it used",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = out / "adaptation_vs_episodes_seen.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def config_value(run_dir: Path, key: str) -> float:
    """A (dotted) key of a run's resolved config, e.g. ``adaptation.inner_lr``."""
    node = read_yaml_mapping(run_dir / "config.yaml", "run config")
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"--x {key!r}: run {str(run_dir)!r} has no such config key")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node):
        raise ConfigError(f"--x {key!r}: run {str(run_dir)!r} has {key}={node!r}, not a finite number to plot against")
    return float(node)


def plot_sensitivity(groups: list[RunGroup], rows: list[dict], key: str, out: Path, step: int = 1) -> Path:
    """Return after ``step`` inner steps against a config value, one line per partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float, float]]] = {}
    for g, r in zip(groups, rows):
        series.setdefault(r["adapt"], []).append((config_value(g.runs[0], key), r["returns"][step], r["ci95"][step]))
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for adapt, points in sorted(series.items()):
        x, y, c = map(np.array, zip(*sorted(points)))
        ax.errorbar(x, y, yerr=c, marker="o", capsize=3, label=f"adapt = {adapt}")
    xs = [p[0] for pts in series.values() for p in pts]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=f"mean return after {step} inner step(s) (95% CI)", title=f"Sensitivity to {key}")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / f"sensitivity_{key.replace('.', '_')}.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report(
    run_dirs: list[str | Path],
    out: str | Path,
    steps: int = 3,
    x_key: str | None = None,
    eval_name: str = "eval.json",
) -> list[Path]:
    """Write ``results.md`` (+ ``results.json``), learning curves and adaptation curves to ``out``;
    with ``x_key`` also the one-step return against that config value. ``eval_name`` picks each
    run's evaluation file (e.g. ``eval_iter150.json`` for a run half-way)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"--steps {steps!r} is out of range; allowed: >= 0")
    if x_key and steps < 1:  # the sensitivity plot shows the one-step return
        raise ConfigError(f"--x {x_key} needs --steps >= 1 (the plot shows the one-step return); got --steps {steps}")
    if Path(eval_name).name != eval_name or not eval_name.endswith(".json"):
        raise ConfigError(f"--eval {eval_name!r} must be a .json file name inside each run directory, e.g. eval.json")
    out = check_out_path(out, "--out", folder=True)
    groups = collect(run_dirs, eval_name)
    rows = [group_row(g, steps) for g in groups]
    if x_key:
        for g in groups:  # every run must have the key before anything is written
            config_value(g.runs[0], x_key)
    table = markdown_table(rows, steps)
    if any(len(g.runs) > 1 for g in groups):  # and each seed on its own row
        table = (
            "Mean over every seed's test tasks ± the 95% t-interval over those pooled tasks "
            "[± the 95% t-interval over the seeds' means, which includes seed-to-seed variation].\n\n" + table
        )
        singles = [
            RunGroup(
                f"{g.runs[i].resolve().parent.name}/{g.runs[i].resolve().name}",
                [g.runs[i]],
                [g.evals[i]],
                [g.progress[i]],
            )
            for g in groups
            for i in range(len(g.runs))
        ]
        tasks = sorted({e["num_tasks"] for g in singles for e in g.evals})
        table += f"\nPer seed (95% t-intervals over each run's {'/'.join(map(str, tasks))} test tasks):\n\n"
        table += markdown_table([group_row(g, steps) for g in singles], steps)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    paths = [out / "results.md", out / "results.json", *plot_curves(groups, rows, out)]
    if x_key:
        paths.append(plot_sensitivity(groups, rows, x_key, out))
    return paths
