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
"""

from __future__ import annotations

import os
import time
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

from .checkpoint import CheckpointError, atomic_write_json, atomic_write_text, checkpoint_path, save_checkpoint
from .config import Config, ConfigError
from .evaluation import EvalResult
from .logging import ResumableCSVOutputFormat
from .policies import ACTIVATIONS, ContextMLPPolicy, make_policy
from .runs import load_run
from .trainer import library_versions

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

    def validate(self) -> None:
        for key in ("total_timesteps", "n_envs", "n_steps", "batch_size", "n_epochs", "save_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"PPO setting {key}={value!r} is out of range; allowed: an integer >= 1")


def baseline_config(config: Config, oracle: bool) -> Config:
    """The caml-rl config a PPO baseline run records: no context, fine-tuning on all weights."""
    config.policy.context_size = 0
    config.adaptation.partition = "all"
    if oracle and config.env.name != "task_in_observation":
        config.env.settings = {"base": config.env.name, "base_settings": dict(config.env.settings)}
        config.env.name = "task_in_observation"
    config.validate()
    return config


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
        self.config, self.ppo = baseline_config(config, oracle), ppo
        self.oracle = self.config.env.name == "task_in_observation"
        self.run_dir = Path(run_dir)
        self.distribution = envs.make(self.config.env.name, **self.config.env.settings)
        self.config.env.settings = self.distribution.settings()
        self._wall0, self._t0 = 0.0, time.perf_counter()
        self.model = self._load_or_create()

    def _make_env(self):
        dist = self.distribution
        return make_vec_env(lambda: envs.SingleTaskEnv(dist), n_envs=self.ppo.n_envs, seed=self.config.seed)

    def _load_or_create(self) -> PPO:
        path = self.run_dir / MODEL_FILE
        if path.is_file():
            try:
                model = PPO.load(path, env=self._make_env(), device="cpu")
            except Exception as exc:  # SB3 raises many kinds for damaged or foreign files
                raise CheckpointError(
                    f"PPO model {str(path)!r} is damaged or does not fit this config ({type(exc).__name__}); "
                    "delete it to restart the baseline"
                ) from None
            state = self.run_dir / "ppo_state.yaml"
            self._wall0 = float(yaml.safe_load(state.read_text())["wall_time"]) if state.is_file() else 0.0
            return model
        act, hidden = ACTIVATIONS[self.config.policy.activation], list(self.config.policy.hidden_sizes)
        return PPO(
            "MlpPolicy",
            self._make_env(),
            n_steps=self.ppo.n_steps,
            batch_size=self.ppo.batch_size,
            n_epochs=self.ppo.n_epochs,
            learning_rate=self.ppo.learning_rate,
            gamma=self.ppo.gamma,
            gae_lambda=self.ppo.gae_lambda,
            policy_kwargs={"net_arch": {"pi": hidden, "vf": hidden}, "activation_fn": act},
            seed=self.config.seed,
            device="cpu",
        )

    @property
    def iteration(self) -> int:
        """PPO rollouts done, derived from the model's env steps so it cannot drift from the resume point."""
        return self.model.num_timesteps // (self.model.n_steps * self.model.n_envs)

    def wall_time(self) -> float:
        return self._wall0 + time.perf_counter() - self._t0

    def save(self) -> Path:
        """The SB3 model (resume point) and the actor as a caml-rl checkpoint, both atomically."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f".{MODEL_FILE}.tmp.zip"
        self.model.save(tmp)
        os.replace(tmp, self.run_dir / MODEL_FILE)
        state = {"iteration": self.iteration, "wall_time": self.wall_time(), "env_steps": self.model.num_timesteps}
        atomic_write_text(self.run_dir / "ppo_state.yaml", yaml.safe_dump(state))
        dist = self.distribution
        policy = copy_actor(self.model, make_policy(self.config.policy, dist.observation_space, dist.action_space))
        path = checkpoint_path(self.run_dir, self.iteration)
        save_checkpoint(
            path,
            {
                "iteration": self.iteration,
                "config": self.config.to_dict(),
                "policy": policy.state_dict(),
                "rng": {},
                "env_steps": self.model.num_timesteps,
                "wall_time": self.wall_time(),
            },
        )
        return path

    def write_run_record(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        record: dict[str, Any] = {
            "baseline": "ppo_oracle" if self.oracle else "ppo",
            "env": self.config.env.name,
            "env_settings": self.distribution.settings(),
            "task_names": list(self.distribution.task_names),
            "ppo": vars(self.ppo),
            "versions": library_versions(),
        }
        atomic_write_json(self.run_dir / "run.json", record)

    def train(self, evaluate_at_end: bool = True, verbose: bool = True) -> EvalResult | None:
        self.write_run_record()
        outputs = [
            ResumableCSVOutputFormat(str(self.run_dir / "progress.csv"), keep_until=self.iteration),
            TensorBoardOutputFormat(str(self.run_dir / "tb")),
        ]
        self.model.set_logger(Logger(str(self.run_dir), outputs))
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
        atomic_write_json(self.run_dir / "eval.json", result.to_dict())
        if verbose:
            print(result.table())
        return result
