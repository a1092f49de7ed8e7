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
    assert result["outside_stages_s"] == 29.0  # 10 before base, 11 between, 8 after refusal
    assert result["largest"][0]["stage"] == "base"


def test_breakdown_with_overlapping_stage_processes(tmp_path):
    """flows.repro runs stages side by side: start-up is process minus run, and idle time is what no process covers."""
    runs = [{"stage": "base", "start_ms": 3_000, "end_ms": 30_000, "status": "FINISHED"},
            {"stage": "oracle", "start_ms": 4_000, "end_ms": 20_000, "status": "FINISHED"}]
    processes = {"base": {"start_s": 0.0, "end_s": 31.0}, "oracle": {"start_s": 0.5, "end_s": 21.0}}
    result = breakdown(runs, began_ms=0, ended_ms=40_000, processes=processes)
    assert result["in_runs_s"] == 43.0  # 27 + 16, more than either alone: they overlapped
    assert {s["stage"]: s["startup_s"] for s in result["stages"]} == {"base": 4.0, "oracle": 4.5}
    assert result["startup_s"] == 8.5
    assert result["outside_stages_s"] == 9.0  # 40 s wall, processes cover 0-31
    assert result["parallelism"] == round((31 + 20.5) / 40, 2)


def test_calibrate_times_a_training_step_at_one_thread_and_restores_the_thread_count():
    import torch

    from demo_time import calibrate

    threads = torch.get_num_threads()
    seconds = calibrate(steps=2)
    assert 0.0 < seconds < 30.0
    assert torch.get_num_threads() == threads
