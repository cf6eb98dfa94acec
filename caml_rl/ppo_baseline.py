"""Stable-Baselines3 PPO baselines on a task distribution, written as caml-rl run directories.

Two non-meta baselines for the results tables (the MAML paper's "pretrained" line and an oracle):

* ``oracle=False``: PPO trained on episodes of randomly drawn tasks without being told the task,
  then fine-tuned at test time with the same 0..k policy-gradient steps as MAML, on all of its
  own weights (``adaptation.partition: all``).
* ``oracle=True``: PPO given the task parameters in its observation (``task_in_observation``),
  an upper line that needs no adaptation.

The PPO actor has the config's policy architecture, so after training it is copied into a
:class:`ContextMLPPolicy` (context size 0) and saved as a caml-rl checkpoint: ``caml-rl evaluate``,
``report`` and ``visualize`` then treat the baseline exactly like a meta-trained run. Training
resumes from ``RUN_DIR/ppo_model.zip`` when interrupted.

``ppo_model.zip`` is SB3's own format (``PPO.load`` reads it), but caml-rl never calls
``PPO.load``, which unpickles the zip's ``data`` part and so runs whatever a crafted file holds:
it rebuilds the model from its own settings and loads only the weights and optimizer state with
``torch.load(weights_only=True)`` and the step counters from the JSON part. As with ``train``, a
new run directory is written only after the first rollout succeeded, and a directory holding
anything but a PPO baseline run is refused.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat

from caml_rl import envs

from .checkpoint import (
    CheckpointError,
    atomic_write_text,
    first_line,
    read_json,
    read_progress,
    read_yaml_mapping,
)
from .config import Config, ConfigError, EnvConfig, make_distribution, resolved_settings
from .evaluation import EvalResult
from .logging import ResumableCSVOutputFormat
from .memory import check_memory
from .policies import ACTIVATIONS, ContextMLPPolicy, make_policy
from .run_directory import RunDirectory, first_difference
from .runs import load_run, space_dims

MODEL_FILE = "ppo_model.zip"


@dataclass
class PPOSettings:
    """SB3 PPO hyperparameters (SB3's defaults, except where MuJoCo locomotion needs otherwise)."""

    total_timesteps: int = 2_000_000
    """Env steps of PPO training (the baseline's whole budget)."""
    n_envs: int = 8
    """Single-task envs stepped by SB3's DummyVecEnv, each drawing a new task every episode."""
    n_steps: int = 512
    """Steps per env per rollout (rollout size n_envs * n_steps)."""
    batch_size: int = 256
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    save_every: int = 20
    """Rollouts between checkpoints (the resume point)."""

    def sb3_arguments(self) -> dict[str, Any]:
        """The settings that are SB3 ``PPO`` arguments of the same name (the rest size the run)."""
        run_only = ("total_timesteps", "n_envs", "save_every")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in run_only}

    def validate(self) -> None:
        for key in ("total_timesteps", "n_envs", "n_steps", "batch_size", "n_epochs", "save_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
                raise ConfigError(f"PPO setting {key}={value!r} is out of range; allowed: an integer >= 1")
        for key, low, high in (("learning_rate", 0, math.inf), ("gamma", 0, 1), ("gae_lambda", 0, 1)):
            value = getattr(self, key)
            ok = isinstance(value, int | float) and math.isfinite(value) and low < value <= high
            if not ok or isinstance(value, bool):
                raise ConfigError(f"PPO setting {key}={value!r} is out of range; allowed: a number in ({low}, {high}]")


# settings that must match the ones a resumed ppo_model.zip was trained with (SB3 keeps them in ``data``)
RESUME_KEYS = ("n_envs", "n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda")


def load_ppo_zip(path: Path, model: PPO, ppo: PPOSettings) -> None:
    """Load SB3's ``ppo_model.zip`` into ``model`` (built from our own settings) without
    unpickling anything: weights and optimizer state with ``weights_only=True``, the step counters
    from the JSON ``data`` part, whose pickled (``:serialized:``) entries are never decoded."""

    def bad(why: str, fix: str = "delete it to restart the baseline") -> CheckpointError:
        return CheckpointError(f"PPO model {str(path)!r} {why}; {fix}")

    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            missing = sorted({"data", "policy.pth"} - names)
            if missing:
                raise bad(f"lacks {', '.join(missing)}: not an SB3 PPO model")
            data = json.loads(z.read("data").decode("utf-8"))
            weights = torch.load(io.BytesIO(z.read("policy.pth")), map_location="cpu", weights_only=True)
            optimizer = None
            if "policy.optimizer.pth" in names:
                blob = z.read("policy.optimizer.pth")
                optimizer = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile, json and torch raise many kinds for damaged or crafted files
        raise bad(f"is damaged or not a PPO model ({first_line(exc, 100)})") from None
    steps = data.get("num_timesteps") if isinstance(data, dict) else None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise bad("has no valid num_timesteps in its data part")
    for key in RESUME_KEYS:
        if key in data and isinstance(data[key], int | float) and data[key] != getattr(ppo, key):
            fix = "resume with the same settings (--n-envs too), or give another --out"
            raise bad(f"was trained with {key}={data[key]!r}, not {getattr(ppo, key)!r}", fix)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise bad("holds policy weights that are not a mapping of tensors")
    if not all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()):
        raise bad("holds non-finite policy weights")
    try:
        model.policy.load_state_dict(weights)
        if optimizer is not None:
            model.policy.optimizer.load_state_dict(optimizer)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise bad(f"does not fit this config's policy ({first_line(exc, 100)})") from None
    model.num_timesteps = steps
    updates = data.get("_n_updates", 0)
    model._n_updates = updates if isinstance(updates, int) and not isinstance(updates, bool) else 0


def baseline_config(config: Config, oracle: bool) -> Config:
    """The caml-rl config a PPO baseline run records (a new one; ``config`` is not modified): no
    context, fine-tuning on all weights, and with ``oracle`` the task in the observation."""
    env = config.env
    if oracle and env.name != "task_in_observation":
        env = EnvConfig("task_in_observation", {"base": env.name, "base_settings": dict(env.settings)})
    baseline = dataclasses.replace(
        config,
        env=env,
        policy=dataclasses.replace(config.policy, context_size=0),
        adaptation=dataclasses.replace(config.adaptation, partition="all"),
    )
    baseline.validate()
    return baseline


def build_ppo(config: Config, distribution: envs.TaskDistribution, ppo: PPOSettings) -> PPO:
    """A fresh SB3 PPO with the config's policy architecture on single-task envs of ``distribution``."""
    act, hidden = ACTIVATIONS[config.policy.activation], list(config.policy.hidden_sizes)
    env = make_vec_env(lambda: envs.SingleTaskEnv(distribution), n_envs=ppo.n_envs, seed=config.seed)
    policy_kwargs = {"net_arch": {"pi": hidden, "vf": hidden}, "activation_fn": act}
    return PPO("MlpPolicy", env, **ppo.sb3_arguments(), policy_kwargs=policy_kwargs, seed=config.seed, device="cpu")


def copy_actor(model: PPO, policy: ContextMLPPolicy) -> ContextMLPPolicy:
    """Copy an SB3 actor (``mlp_extractor.policy_net`` + ``action_net`` + ``log_std``) into ``policy``."""
    sb3 = model.policy.state_dict()
    layers = [m for m in policy.mlp if isinstance(m, torch.nn.Linear)]
    hidden = [k for k in sb3 if k.startswith("mlp_extractor.policy_net.") and k.endswith(".weight")]
    if len(hidden) != len(layers) - 1:
        raise ConfigError(f"PPO actor has {len(hidden)} hidden layers; the policy config has {len(layers) - 1}")
    state = {}
    for i, key in enumerate(sorted(hidden, key=lambda k: int(k.split(".")[2]))):
        state[f"mlp.{2 * i}.weight"], state[f"mlp.{2 * i}.bias"] = sb3[key], sb3[key.replace("weight", "bias")]
    last = 2 * (len(layers) - 1)
    state[f"mlp.{last}.weight"], state[f"mlp.{last}.bias"] = sb3["action_net.weight"], sb3["action_net.bias"]
    if not policy.discrete:
        state["log_std"] = sb3["log_std"]
    policy.load_state_dict(state)
    return policy


class _Checkpointer(BaseCallback):
    """Logs iteration/env steps/wall time per rollout and saves the resume point every few rollouts."""

    def __init__(self, run: PPOBaselineRun):
        super().__init__()
        self.run = run

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        run = self.run
        run.start_files()  # the first rollout worked: now the run's files may be written
        self.logger.record("iteration", run.iteration)
        self.logger.record("time/env_steps", self.model.num_timesteps)
        self.logger.record("time/total_seconds", run.wall_time())
        if run.iteration % run.ppo.save_every == 0:
            run.save()


class PPOBaselineRun:
    """One PPO baseline run directory: train (or resume), then save and evaluate like a caml-rl run."""

    def __init__(self, config: Config, run_dir: str | Path, ppo: PPOSettings, oracle: bool = False):
        ppo.validate()
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        config = baseline_config(config, oracle)
        self.ppo = ppo
        self.oracle = config.env.name == "task_in_observation"
        self.run_dir = Path(run_dir)
        self.files = RunDirectory(self.run_dir)
        self.distribution = make_distribution(config.env)
        resolved_env = dataclasses.replace(config.env, settings=resolved_settings(self.distribution, config.env.name))
        self.config = dataclasses.replace(config, env=resolved_env)
        obs_dim, act_dim = space_dims(self.distribution)
        policy, horizon = self.config.policy, self.distribution.horizon
        check_memory(policy, obs_dim, act_dim, ppo.n_steps, (ppo.n_envs, 1), "cpu", "a PPO rollout", "--n-envs")
        batch = (self.config.evaluation.tasks, self.config.evaluation.episodes)
        check_memory(policy, obs_dim, act_dim, horizon, batch, "cpu", "the evaluation", "evaluation.tasks or episodes")
        self.resumed = self.check_run_dir()
        self._wall0, self._t0 = 0.0, time.perf_counter()
        self._started = False
        self.model = self._load_or_create()
        self._resumed_from = self.iteration if self.resumed else None

    def check_run_dir(self) -> bool:
        """Whether this continues a baseline run. Refuses a directory that holds another kind of
        run, or a baseline whose recorded config (config.yaml) differs from this one."""
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise CheckpointError(f"--out {str(d)!r} is a file; expected a folder")
        if not (d / MODEL_FILE).exists():
            if self.files.checkpoints():
                raise ConfigError(
                    f"run directory {str(d)!r} already holds a run (checkpoints/ without {MODEL_FILE}); "
                    "give the baseline another --out"
                )
            return False
        if self.files.record_file.exists():
            record = read_json(self.files.record_file, "run record")
            if not isinstance(record, dict) or "baseline" not in record:
                raise ConfigError(
                    f"run directory {str(d)!r} is not a PPO baseline run (its run.json names no baseline); "
                    "give the baseline another --out"
                )
        if self.files.config_file.exists():
            try:
                recorded = self.files.recorded_config()
                # settings added to the env since the run started are compared at their defaults
                settings = make_distribution(recorded.env).settings()
                recorded = dataclasses.replace(recorded, env=dataclasses.replace(recorded.env, settings=settings))
            except (ConfigError, envs.TaskDistributionError) as exc:
                raise CheckpointError(f"run config {str(self.files.config_file)!r} is damaged: {exc}") from None
            difference = first_difference(self.config, recorded)
            if difference is not None:
                key, mine, theirs = difference
                raise ConfigError(
                    f"baseline run {str(d)!r} was trained with {key}={theirs!r}, this command asks for {mine!r}; "
                    "resume with the same config and flags (--oracle too), or give another --out"
                )
        if self.files.progress_file.exists():
            read_progress(self.files.progress_file)
        return True

    def _load_or_create(self) -> PPO:
        """A PPO model built from this run's settings; resumed runs then load their weights safely."""
        path = self.run_dir / MODEL_FILE
        model = build_ppo(self.config, self.distribution, self.ppo)
        if path.exists():
            if not path.is_file():
                raise CheckpointError(f"PPO model {str(path)!r} is not a file; delete it to restart the baseline")
            load_ppo_zip(path, model, self.ppo)
            state = self.run_dir / "ppo_state.yaml"
            if state.is_file():
                wall = read_yaml_mapping(state, "PPO state").get("wall_time", 0.0)
                if isinstance(wall, bool) or not isinstance(wall, int | float) or not math.isfinite(wall) or wall < 0:
                    raise CheckpointError(f"PPO state {str(state)!r} has wall_time={wall!r}; expected a number >= 0")
                self._wall0 = float(wall)
        return model

    @property
    def iteration(self) -> int:
        """PPO rollouts done, derived from the model's env steps so it cannot drift from the resume point."""
        return self.model.num_timesteps // (self.model.n_steps * self.model.n_envs)

    def wall_time(self) -> float:
        return self._wall0 + time.perf_counter() - self._t0

    def save(self) -> Path:
        """The SB3 model (resume point) and the actor as a caml-rl checkpoint, both atomically."""
        self.start_files()
        tmp = self.run_dir / f".{MODEL_FILE}.tmp.zip"
        self.model.save(tmp)
        os.replace(tmp, self.run_dir / MODEL_FILE)
        state = {"iteration": self.iteration, "wall_time": self.wall_time(), "env_steps": self.model.num_timesteps}
        atomic_write_text(self.run_dir / "ppo_state.yaml", yaml.safe_dump(state))
        dist = self.distribution
        policy = copy_actor(self.model, make_policy(self.config.policy, dist.observation_space, dist.action_space))
        env_steps, wall_time = self.model.num_timesteps, self.wall_time()
        return self.files.save(self.iteration, self.config, policy, rng={}, env_steps=env_steps, wall_time=wall_time)

    def write_run_record(self) -> None:
        details = {"baseline": "ppo_oracle" if self.oracle else "ppo", "ppo": vars(self.ppo)}
        self.files.write_record(self.config, self.distribution, details, self._resumed_from)

    def start_files(self) -> None:
        """Write the run record and attach progress.csv and tb/ to the logger, once: after the
        first rollout (or at the first save), so a run that fails before leaves no files."""
        if self._started:
            return
        self._started = True
        self.write_run_record()
        self.model.logger.output_formats += [
            ResumableCSVOutputFormat(str(self.run_dir / "progress.csv"), keep_until=self._resumed_from),
            TensorBoardOutputFormat(str(self.run_dir / "tb")),
        ]

    def train(self, evaluate_at_end: bool = True, verbose: bool = True) -> EvalResult | None:
        self.model.set_logger(Logger(None, []))  # outputs are attached by start_files()
        remaining = self.ppo.total_timesteps - self.model.num_timesteps
        if remaining > 0:
            if verbose:
                name = "PPO (oracle)" if self.oracle else "PPO"
                print(f"{name} on {self.config.env.name}: {remaining:,} env steps left")
            self.model.learn(remaining, callback=_Checkpointer(self), reset_num_timesteps=False)
        self.save()
        if not evaluate_at_end:
            return None
        result = load_run(self.run_dir).evaluate()
        self.files.write_eval(result)
        if verbose:
            print(result.table())
        return result
