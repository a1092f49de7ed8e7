"""DVC stage `validate`: Great Expectations suites on every dataset; a failing expectation stops the pipeline."""

from __future__ import annotations

from latlab.config import Params, section_dict
from latlab.data.records import DATASETS, load_world
from latlab.data.validation import raise_on_failure, validate_datasets, write_report
from latlab.tracking import stage_run
from stages.common import REPORTS_DIR, WORLD_DIR, run_stage, stage_done, write_metrics


def validate(params: Params) -> None:
    summary = validate_datasets(load_world(WORLD_DIR), params.validate_data,
                                sources={name: WORLD_DIR / f"{name}.jsonl" for name in DATASETS})
    json_path, html_path = REPORTS_DIR / "validation.json", REPORTS_DIR / "validation.html"
    write_report(summary, json_path, html_path)
    metrics = {"expectations": summary["evaluated"], "failed": summary["failed"], "success": summary["success"]}
    metrics_path = write_metrics("validate", metrics)
    with stage_run(params.tracking, "validate", section_dict(params, "validate")) as run:
        run.log_metrics({"expectations": summary["evaluated"], "failed": summary["failed"]})
        run.log_artifact(json_path, "validation")
        run.log_artifact(html_path, "validation")
        raise_on_failure(summary)  # inside the run: a failed gate ends it FAILED
    stage_done("validate", [html_path, metrics_path], {"expectations": summary["evaluated"],
                                                      "failed": summary["failed"]})


def main() -> None:
    run_stage("validate", validate)


if __name__ == "__main__":
    main()
