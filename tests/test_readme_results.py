"""README.md's results block is generated from the committed metrics and reports (latlab.report.readme)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from latlab.report.readme import BEGIN, END, main, replace_block, results_block

ROOT = Path(__file__).resolve().parents[1]


def test_readme_block_matches_committed_metrics():
    readme = (ROOT / "README.md").read_text()
    assert replace_block(readme, results_block(ROOT)) == readme, (
        "README.md's results block differs from metrics/ and reports/: run `python -m latlab.report.readme`")


def test_block_follows_a_changed_metric(tmp_path):
    for sub in ("metrics", "reports"):
        shutil.copytree(ROOT / sub, tmp_path / sub, ignore=shutil.ignore_patterns("predictions"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--root", str(tmp_path), "--check"]) == 0
    evaluate = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    model = next(iter(evaluate))
    evaluate[model]["benign_compliance"] = 0.123456
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(evaluate))
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert main(["--root", str(tmp_path)]) == 0
    assert "0.123" in (tmp_path / "README.md").read_text()
    assert main(["--root", str(tmp_path), "--check"]) == 0


def test_missing_marker_is_named():
    with pytest.raises(ValueError, match="begin marker"):
        replace_block("no markers here", "x")
    with pytest.raises(ValueError, match="end marker"):
        replace_block(BEGIN + " but no end", "x")
    assert replace_block(f"a {BEGIN} old {END} b", "new") == "a new b"
