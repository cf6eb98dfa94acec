"""Independent, reproducible random streams derived from one seed.

Training and evaluation draw from different ``SeedSequence`` spawn keys, so test tasks are
never the training tasks. Task parameters always come from the main process's stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TRAIN_STREAM, EVAL_STREAM = 0, 1


@dataclass
class Streams:
    tasks: np.random.Generator  # task parameters
    env: np.random.Generator  # env reset noise
    actions: torch.Generator  # action sampling, episode subsampling

    def state(self) -> dict:
        return {
            "tasks": self.tasks.bit_generator.state,
            "env": self.env.bit_generator.state,
            "actions": self.actions.get_state(),
        }

    def load_state(self, state: dict) -> None:
        self.tasks.bit_generator.state = state["tasks"]
        self.env.bit_generator.state = state["env"]
        self.actions.set_state(state["actions"])


def make_streams(seed: int, stream: int, device: torch.device | str = "cpu") -> Streams:
    task_seq, env_seq, act_seq = np.random.SeedSequence(seed, spawn_key=(stream,)).spawn(3)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(act_seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    return Streams(np.random.default_rng(task_seq), np.random.default_rng(env_seq), gen)
