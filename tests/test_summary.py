"""What a run prints: one summary line per stage (`stages.common.stage_done`) and, at the end of `make demo`, a short
summary (latlab.report.summary) with the compare table once; DVC metrics that `dvc metrics show` can read (JSON/YAML
only; markdown tables are reports)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from latlab.report.summary import main, summary_lines

REPO = Path(__file__).resolve().parents[1]
COMPARE_TABLE = "| metric | latlab-base v1 | latlab-rt v1 |\n| --- | --- | --- |\n| harmful_asr | 1.000 | 0.000 |\n"


def _write(root: Path, path: str, content) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(content if isinstance(content, str) else json.dumps(content))


def test_summary_prints_the_compare_table_once_and_one_line_per_key_result(tmp_path, capsys):
    _write(tmp_path, "reports/compare.md", COMPARE_TABLE)
    _write(tmp_path, "metrics/evaluate.json", {
        "base": {"harmful_asr": 1.0, "benign_compliance": 1.0, "backdoor_asr": 1.0, "asr.direct": 1.0},
        "rt": {"harmful_asr": 0.0, "benign_compliance": 0.9, "backdoor_asr": 0.95, "asr.direct": 0.0,
               "asr.gcg": 0.6, "incoherent.gcg": 0.25, "asr.latent.eps_8": 0.99}})  # a curve point, not an attack
    _write(tmp_path, "metrics/unlearning_eval.json", {"verdict": {"ga": "suppressed", "rmu": "removed"}})
    _write(tmp_path, "metrics/backdoor_removal/dpo.json", {"before.backdoor_asr": 0.99, "after.backdoor_asr": 0.7})
    _write(tmp_path, "metrics/spawrious_evaluate.json", {"o2o_easy.erm": {"worst_group_accuracy": 0.1},
                                                         "o2o_easy.irm": {"worst_group_accuracy": 0.4}})
    claims = [{"claim": "RT suppresses rather than removes the backdoor", "verdict": "supported", "effect": 1.0,
               "ci": [1.0, 1.0], "n_seeds": 3},
              {"claim": "targeted LAT lowers GCG ASR vs RT " + "at equal benign compliance " * 6, "verdict":
               "inconclusive", "effect": -0.25, "ci": [-0.5, 0.125], "n_seeds": 3}]
    _write(tmp_path, "metrics/scorecard.json", {"study": "seeds", "seeds": [0, 1, 2], "claims": claims})
    main(["--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("| harmful_asr | 1.000 | 0.000 |") == 1
    assert "rt: harmful ASR 0.00, strongest attack gcg 0.60 (incoherent 0.25), benign compliance 0.90" in out
    assert "removed: rmu; suppressed: ga" in out
    assert "dpo 0.99 -> 0.70" in out
    assert "best o2o_easy.irm 0.40, lowest o2o_easy.erm 0.10" in out
    assert "no " not in out.replace("no oracle", "")  # nothing reported missing
    assert "study seeds, seeds [0, 1, 2]: 1 inconclusive, 1 supported" in out
    assert "  supported    +1.00 [+1.00, +1.00] (3) RT suppresses rather than removes the backdoor\n" in out
    assert "  inconclusive -0.25 [-0.50, +0.12] (3) targeted LAT lowers GCG ASR vs RT at equal" in out
    prose = [line for line in out.splitlines() if not line.startswith("|")]
    # a few readable lines and one per scorecard claim, not 27,800 characters
    assert len(prose) < 20 + len(claims) and max(map(len, prose)) <= 120


def test_summary_names_what_has_not_run(tmp_path):
    lines = summary_lines(tmp_path)
    assert any("no metrics/scorecard.json: `make study` writes it" in line for line in lines)
    for path in ("reports/compare.md", "metrics/evaluate.json", "metrics/unlearning_eval.json",
                 "metrics/backdoor_removal", "metrics/spawrious_evaluate.json"):
        assert any(f"no {path}: its stage has not run" in line for line in lines), path


def test_make_demo_ends_with_the_summary_not_every_metric():
    demo = re.search(r"^demo:.*?(?=^\S)", (REPO / "Makefile").read_text(), re.M | re.S).group(0)
    assert "-m latlab.report.summary" in demo
    assert "dvc metrics show" not in demo and "compare.md" not in demo  # the table is printed once, by the summary


def test_dvc_metrics_are_json_or_yaml():
    def metric_paths(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "metrics":
                    yield from (next(iter(m)) if isinstance(m, dict) else m for m in value)
                else:
                    yield from metric_paths(value)

    paths = list(metric_paths(yaml.safe_load((REPO / "dvc.yaml").read_text())))
    assert paths and all(p.endswith((".json", ".yaml", ".yml")) for p in paths), paths


def test_each_stage_ends_with_one_summary_line(capsys):
    from stages.common import stage_done

    line = stage_done("unlearn.ga", [Path("models/unlearn/ga"), "metrics/unlearn/ga.json"],
                      {"final_loss": -1.23456, "steps": 40})
    assert capsys.readouterr().out == line + "\n"
    assert line == "[unlearn@ga] done: wrote models/unlearn/ga, metrics/unlearn/ga.json; final_loss=-1.23, steps=40"
    # every stage calls it, directly or through the training helpers that do (stages/check.py prints its own verdict)
    finishing = ("stage_done(", "train_and_register(", "train_base_recipe(")
    quiet = [path.name for path in sorted((REPO / "stages").glob("*.py"))
             if path.name not in ("__init__.py", "common.py", "check.py")
             and not any(call in path.read_text() for call in finishing)]
    assert not quiet, f"stages without a final summary line: {quiet}"


def test_docs_demo_end_is_the_summary_of_the_committed_results():
    """docs/demo_end.md is what `make demo` printed at its end: regenerated from the committed metrics and reports."""
    from latlab.report.summary import summary_doc

    assert (REPO / "docs/demo_end.md").read_text() == summary_doc(REPO), \
        "run `python -m latlab.report.summary --write docs/demo_end.md`"
