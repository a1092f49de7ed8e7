"""DVC stage `compare`: reads the MLflow model registry and writes a comparison table (markdown + JSON)."""

from __future__ import annotations

import json

from latlab.config import Params, section_dict
from latlab.report.compare import comparison_markdown, comparison_rows
from latlab.tracking import registered_models, stage_run
from stages.common import REPORTS_DIR, run_stage


def compare(params: Params) -> None:
    rows = comparison_rows(registered_models(params.tracking, params.compare.name_prefix))
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    (REPORTS_DIR / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    markdown = comparison_markdown(rows)
    (REPORTS_DIR / "compare.md").write_text(markdown)
    print(markdown)
    with stage_run(params.tracking, "compare", section_dict(params, "compare")) as run:
        run.log_metrics({"registered_models": len(rows)})
        run.log_artifact(REPORTS_DIR / "compare.md", "compare")
        run.log_artifact(REPORTS_DIR / "compare.json", "compare")


def main() -> None:
    run_stage("compare", compare)


if __name__ == "__main__":
    main()
