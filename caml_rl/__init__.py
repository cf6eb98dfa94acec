"""caml-rl: meta-reinforcement learning by fast context adaptation (CAML / CAVIA).

The policy takes the observation plus a small context vector; on each task only the context
adapts, by a policy-gradient step, while the shared weights are meta-trained with TRPO through
that step. MAML (adapt every weight) is the same code with ``adaptation.partition: all``.
"""

from . import meta_gradient, pearl, rl2  # noqa: F401  (the built-in algorithms register themselves)
from .config import Config, ConfigError, load_config
from .runs import AdaptedPolicy, LoadedRun, load_run
from .trainer import Trainer
from .version import __version__


def train(config: Config | None = None, run_dir: str = "runs/caml", quiet: bool = False):
    """Meta-train from a config object (defaults: CAML on 2D navigation); returns the Trainer."""
    trainer = Trainer(config or Config(), run_dir)
    trainer.train(quiet=quiet)
    return trainer


__all__ = [
    "__version__",
    "AdaptedPolicy",
    "Config",
    "ConfigError",
    "LoadedRun",
    "Trainer",
    "load_config",
    "load_run",
    "train",
]
