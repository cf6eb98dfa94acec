"""progress.csv: a resumed run keeps its rows, under the current column names."""

import csv

from caml_rl.logging import ResumableCSVOutputFormat


def test_resume_keeps_rows_and_renames_old_columns(tmp_path):
    path = tmp_path / "progress.csv"
    path.write_text("iteration,trpo/backtracks\n1,1\n2,3\n3,2\n")
    out = ResumableCSVOutputFormat(str(path), keep_until=2)
    out.close()
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"iteration": "1", "trpo/line_search_evaluations": "1"},
        {"iteration": "2", "trpo/line_search_evaluations": "3"},
    ]


def test_columns_come_in_one_order_whatever_the_string_hashing(tmp_path):
    """SB3 adds a row's new columns as a set, ordered by the process's string hashing; a run's
    columns must not depend on it (a new run and a resumed one append them sorted)."""
    columns = [f"group{i % 3}/metric_{name}" for i, name in enumerate("qwertyuiopasdfgh")]
    path = tmp_path / "progress.csv"
    out = ResumableCSVOutputFormat(str(path))
    out.write({"iteration": 1, **dict.fromkeys(columns[:8], 0.5)}, {})
    out.close()
    out = ResumableCSVOutputFormat(str(path), keep_until=1)
    out.write({"iteration": 2, **dict.fromkeys(columns, 0.25)}, {})
    out.close()
    with path.open() as f:
        header = next(csv.reader(f))
    assert header == sorted(["iteration", *columns[:8]]) + sorted(columns[8:])
