"""Where an update's time goes: named sections, timed only while :func:`recording` is active.

``caml-rl benchmark`` records one run of iterations and reports each section's seconds in units
of one policy forward + backward. Outside a recording a section costs one global lookup. On CUDA
each recorded section waits for the device at both ends, so its time is the device's, not the
launch's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_active: dict[str, list[float]] | None = None


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def section(name: str) -> Iterator[None]:
    """Time the block under ``name`` when a recording is active (nested sections count in both)."""
    if _active is None:
        yield
        return
    _sync()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _sync()
        if _active is not None:
            _active.setdefault(name, []).append(time.perf_counter() - t0)


@contextmanager
def recording() -> Iterator[dict[str, list[float]]]:
    """Collect every section's durations, ``{name: [seconds, ...]}``, while the block runs."""
    global _active
    outer, _active = _active, {}
    try:
        yield _active
    finally:
        _active = outer
