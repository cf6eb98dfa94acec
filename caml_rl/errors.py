"""How a failure reaches the user of the ``caml-rl`` command, decided by its type.

* caml-rl's own error classes (:data:`USER_ERRORS`: a bad config, flag or file, a broken task
  distribution or user env, a failed sweep, a lost distributed worker, a diverged training run) and the operating system
  refusing a named file: one line on stderr, exit status 2. Their messages say what to change.
* The reader of our output went away (``caml-rl sweep ... | head``): exit quietly with status 141,
  the shell's code for a broken pipe, as ``cat`` and ``grep`` do.
* Anything else is a bug, in caml-rl or a library: its traceback, a request to report it, exit 1.

``--debug`` adds the traceback to a one-line error too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings

from .algorithm import DivergenceError
from .checkpoint import CheckpointError, RunDirectoryWarning
from .config import ConfigError
from .distributed import DistributedError
from .envs.base import TaskDistributionError
from .partition import PartitionError
from .sweep import SweepError

USER_ERRORS = (
    ConfigError,
    CheckpointError,
    PartitionError,
    TaskDistributionError,  # also EnvFault: a user's env broke the contract or raised
    SweepError,
    DistributedError,  # also WorkerLostError
    DivergenceError,  # training became non-finite: the message says what to lower
)
REPORT_HINT = (
    "caml-rl: internal error: the traceback above is a bug in caml-rl or a library it uses, not a problem "
    "with your input; please report it with the command you ran"
)


def exit_status(exc: BaseException, debug: bool = False) -> int:
    """Print ``exc`` the way its type calls for (see the module docstring); the exit status."""
    if isinstance(exc, KeyboardInterrupt):
        print("caml-rl: interrupted; resume with `caml-rl train --resume RUN_DIR`", file=sys.stderr)
        return 130
    if isinstance(exc, BrokenPipeError):
        _silence_stdout()
        return 141
    if isinstance(exc, USER_ERRORS):
        message = str(exc)
    elif isinstance(exc, OSError) and exc.filename is not None:
        message = f"cannot use {str(exc.filename)!r}: {exc.strerror or exc}"
    else:
        traceback.print_exception(exc)
        print(REPORT_HINT, file=sys.stderr)
        return 1
    if debug:
        traceback.print_exception(exc)
    print(f"caml-rl: error: {message}", file=sys.stderr)
    return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush cannot raise BrokenPipeError again."""
    with contextlib.suppress(OSError, ValueError):  # stdout closed, or not a real file (pytest's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def show_warnings_in_one_line() -> None:
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
