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
