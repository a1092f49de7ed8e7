"""docs/pipeline.md is generated from dvc.yaml (scripts/pipeline_doc.py), so its stage table cannot drift."""

from __future__ import annotations

import shutil

import yaml

from scripts.pipeline_doc import DOC, main, render
from scripts.stage_deps import ROOT


def test_docs_pipeline_md_matches_dvc_yaml():
    assert main(["--check"]) == 0, "docs/pipeline.md is stale: python -m scripts.pipeline_doc --write"


def test_every_stage_is_a_row_with_what_it_reads_and_writes():
    text = render()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in stages:
        assert f"| `{name}` |" in text, name
    row = next(line for line in text.splitlines() if line.startswith("| `spawrious_evaluate` |"))
    assert "`metrics/spawrious_train`" in row and "`reports/spawrious_results.md`" in row
    assert "src/latlab" not in text.split("| --- |")[-1]  # code deps are not rows' content


def test_a_changed_dvc_yaml_makes_the_check_fail(tmp_path, capsys):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "docs").mkdir()
    assert main(["--root", str(tmp_path), "--write"]) == 0
    assert main(["--root", str(tmp_path), "--check"]) == 0
    dvc = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    dvc["stages"]["compare"]["outs"] = ["reports/compare.html"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert f"{DOC}: out of date with dvc.yaml" in capsys.readouterr().out
