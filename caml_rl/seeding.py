"""Independent, reproducible random streams derived from one seed.

Training and evaluation draw from different ``SeedSequence`` spawn keys, so test tasks are
never the training tasks. Task parameters always come from the main process's stream.

The action stream is a ``torch.Generator`` on the run's device; its saved state belongs to that
device's kind of generator (a CPU Mersenne Twister, or a CUDA Philox seed and offset). A run
resumed on another device (``device: auto`` on a machine with or without a GPU) restores the
stream on the device that saved it, and the sampler draws there and copies the noise over, so
the resumed run continues the saved stream; a CUDA stream on a machine without CUDA cannot be
restored, which :meth:`Streams.load_state` says in one line (:class:`StreamDeviceError`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TRAIN_STREAM, EVAL_STREAM = 0, 1
_CPU_STATE_BYTES = torch.Generator().get_state().numel()  # the Mersenne Twister's state
_CUDA_STATE_BYTES = 16  # Philox: seed and offset


class StreamDeviceError(Exception):
    """A saved random stream belongs to a device this machine does not have (a one-line message)."""


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
            "actions_device": self.actions.device.type,
        }

    def load_state(self, state: dict) -> None:
        """Every stream as saved; the action stream on the kind of device that saved it (the run's
        own generator when the kinds agree)."""
        self.actions = restore_generator(state["actions"], state.get("actions_device"), self.actions)
        self.tasks.bit_generator.state = state["tasks"]
        self.env.bit_generator.state = state["env"]


def saved_device(state: torch.Tensor, device: str | None) -> str:
    """The kind of device a generator state was saved on: as recorded, or (checkpoints written
    before it was) from the state's size."""
    if device is not None:
        return str(device)
    sizes = {_CPU_STATE_BYTES: "cpu", _CUDA_STATE_BYTES: "cuda"}
    size = state.numel() if isinstance(state, torch.Tensor) else None
    if size not in sizes:
        raise ValueError(f"a generator state of {size} bytes is neither a CPU nor a CUDA one")
    return sizes[size]


def restore_generator(state: torch.Tensor, device: str | None, current: torch.Generator) -> torch.Generator:
    """A generator holding ``state`` on the kind of device it was saved on: ``current`` when that is
    its kind, else a new one there. A CUDA state without CUDA raises :class:`StreamDeviceError`."""
    kind = saved_device(state, device)
    if kind == current.device.type:
        gen = current
    elif kind == "cpu":
        gen = torch.Generator()
    elif kind == "cuda" and torch.cuda.is_available():
        gen = torch.Generator(device="cuda")
    else:
        raise StreamDeviceError(
            f"its action stream was saved on a {kind} device and this machine has none ({current.device.type} "
            f"only), so its random draws cannot continue here; resume it on a machine with {kind}"
        )
    gen.set_state(state)
    return gen


def make_streams(seed: int, stream: int, device: torch.device | str = "cpu") -> Streams:
    task_seq, env_seq, act_seq = np.random.SeedSequence(seed, spawn_key=(stream,)).spawn(3)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(act_seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    return Streams(np.random.default_rng(task_seq), np.random.default_rng(env_seq), gen)
