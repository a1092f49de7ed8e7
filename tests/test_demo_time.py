"""benchmarks/demo_time.py: the split of `make demo`'s wall time into stage runs and the gaps between them."""

import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from demo_time import breakdown, stage_runs  # noqa: E402


def test_breakdown_splits_wall_time_into_runs_and_gaps(tmp_path):
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE runs (name TEXT, start_time INTEGER, end_time INTEGER, status TEXT)")
        con.executemany("INSERT INTO runs VALUES (?, ?, ?, ?)", [
            ("old", 500, 900, "FINISHED"),  # before the demo: not counted
            ("base", 11_000, 41_000, "FINISHED"), ("refusal", 52_000, 62_000, "FINISHED")])
    runs = stage_runs(db, 1_000)
    assert [r["stage"] for r in runs] == ["base", "refusal"]
    result = breakdown(runs, began_ms=1_000, ended_ms=70_000)
    assert result["wall_s"] == 69.0
    assert result["in_runs_s"] == 40.0  # 30 + 10
    assert result["between_runs_s"] == 29.0  # 10 before base, 11 between, 8 after refusal
    assert result["in_runs_s"] + result["between_runs_s"] == result["wall_s"]
    assert result["largest"][0]["stage"] == "base"
