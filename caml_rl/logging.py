"""Training logs: SB3's logger (CSV + TensorBoard) plus one readable line per iteration.

Column names say what they measure (see docs/command-line.md, "Metrics"); a resumed run keeps the rows up to
its checkpoint and continues the same CSV, with any column logged under an older name renamed.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat

from .checkpoint import atomic_write_text

RENAMED_COLUMNS = {"trpo/backtracks": "trpo/line_search_evaluations"}
"""Old progress.csv column -> its current name (the value is the same quantity)."""


class _SortedColumns(list):
    """SB3 appends a row's new columns as a set (``keys() - self.keys``), whose order changes with
    Python's string hashing from one process to the next; appending them sorted gives every run
    the same column order."""

    def extend(self, keys: Any) -> None:
        super().extend(sorted(keys))


class ResumableCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV writer, but keeping the existing rows with ``iteration <= keep_until`` (columns
    with an old name renamed, so one column holds one quantity from the first row to the last).

    The kept rows replace the file atomically (a temporary file renamed over it), so a resume
    that dies while rewriting leaves the old progress.csv whole; new rows are then appended."""

    def __init__(self, filename: str, keep_until: int | None = None):
        rows, header = [], []
        path = Path(filename)
        if keep_until is not None and path.is_file():
            with path.open() as f:
                reader = csv.DictReader(f)
                header = [RENAMED_COLUMNS.get(k, k) for k in reader.fieldnames or []]
                rows = [
                    {RENAMED_COLUMNS.get(k, k): v for k, v in r.items()}
                    for r in reader
                    if r.get("iteration") and float(r["iteration"]) <= keep_until
                ]
        if not header:  # a new run (or a file without rows): SB3 starts it
            super().__init__(filename)
            self.keys = _SortedColumns()
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")  # SB3 ends its rows with \n too
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, text.getvalue())
        self.file = open(filename, "r+")  # what SB3's __init__ sets, without truncating the file
        self.file.seek(0, io.SEEK_END)
        self.keys, self.separator, self.quotechar = _SortedColumns(header), ",", '"'


def make_logger(run_dir: Path, keep_until: int | None = None) -> Logger:
    """CSV at ``RUN_DIR/progress.csv`` and TensorBoard events under ``RUN_DIR/tb``."""
    run_dir = Path(run_dir)
    outputs = [
        ResumableCSVOutputFormat(str(run_dir / "progress.csv"), keep_until),
        TensorBoardOutputFormat(str(run_dir / "tb")),
    ]
    return Logger(str(run_dir), outputs)


class ProgressLine:
    """``iter 12/150 | <the algorithm's summary> | 1.2 s/it | ETA 2m30s``."""

    def __init__(
        self, total: int, summary: Callable[[dict[str, Any]], str], start: int = 0, stream: TextIO | None = None
    ):
        self.total, self.summary, self.start, self.stream = total, summary, start, stream or sys.stdout
        self.t0 = time.perf_counter()

    def update(self, iteration: int, metrics: dict[str, Any]) -> None:
        done = iteration - self.start
        per_it = (time.perf_counter() - self.t0) / max(done, 1)
        eta = per_it * (self.total - iteration)
        print(
            f"iter {iteration:>4}/{self.total} | {self.summary(metrics)} | {per_it:5.2f} s/it | ETA {_fmt(eta)}",
            file=self.stream,
            flush=True,
        )


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
