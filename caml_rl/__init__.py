"""caml-rl: meta-reinforcement learning by fast context adaptation (CAML / CAVIA).

The policy takes the observation plus a small context vector; on each task only the context
adapts, by a policy-gradient step, while the shared weights are meta-trained with TRPO through
that step. MAML (adapt every weight) is the same code with ``adaptation.partition: all``.
"""

__version__ = "0.1.0"

from .config import Config, ConfigError, load_config  # noqa: E402
from .runs import AdaptedPolicy, LoadedRun, load_run  # noqa: E402
from .trainer import Trainer  # noqa: E402


def train(config: Config | None = None, run_dir: str = "runs/caml", quiet: bool = False):
    """Meta-train from a config object (defaults: CAML on 2D navigation); returns the Trainer."""
    trainer = Trainer(config or Config(), run_dir)
    trainer.train(quiet=quiet)
    return trainer


__all__ = ["AdaptedPolicy", "Config", "ConfigError", "LoadedRun", "Trainer", "load_config", "load_run", "train"]
