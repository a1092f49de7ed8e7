"""DVC stage spawrious_generate: render every split of the grid from the SCM, check its manifest with Great
Expectations, write data/spawrious/<split>/ and a counterfactual preview."""

from __future__ import annotations

import json
from pathlib import Path

from latlab.config import Params
from latlab.data.validation import DataValidationError
from latlab.report.spawrious import counterfactual_preview
from latlab.tracking import stage_run
from latlab.vision.benchmark import generate_split, save_split
from latlab.vision.splits import split_definition
from latlab.vision.validation import failure_message, validate_manifest, write_summary
from stages.common import run_stage, stage_done

DATA = Path("data/spawrious")
METRICS = Path("metrics/spawrious_generate.json")
PREVIEW = Path("plots/spawrious/counterfactuals.png")


def generate(params: Params) -> None:
    cfg, tracking = params.spawrious, params.tracking
    metrics, failures, first = {}, [], None
    with stage_run(tracking, "spawrious_generate", cfg.data.model_dump(mode="json") | {"splits": cfg.splits}) as run:
        for name in cfg.splits:
            data = generate_split(name, cfg.data)
            first = data if first is None else first
            save_split(data, DATA / name)
            summary = validate_manifest(data.manifest, split_definition(name), cfg.data.per_env_total,
                                        cfg.data.test_per_group)
            write_summary(summary, DATA / name / "validation.json")
            run.log_artifact(DATA / name / "validation.json", artifact_path=f"validation/{name}")
            metrics[name] = {"train_images": int(data.part("train").sum()), "test_images": int(data.part("test").sum()),
                             "groups": len(summary["groups"]), "gx_success": int(summary["success"])}
            if not summary["success"]:
                failures.append(failure_message(summary, DATA / name / "manifest.csv"))
        counterfactual_preview(first.counterfactual, first.manifest[first.part("test")]["label"].to_numpy(), PREVIEW)
        run.log_artifact(PREVIEW)
        run.log_metrics(metrics)
        METRICS.parent.mkdir(parents=True, exist_ok=True)
        METRICS.write_text(json.dumps(metrics, indent=2))
        if failures:  # inside the run: a failed gate ends it FAILED
            raise DataValidationError("Great Expectations manifest check failed (see "
                                      f"{DATA}/<split>/validation.json):\n" + "\n".join(failures))
    stage_done("spawrious_generate", [DATA, PREVIEW, METRICS], {"splits": len(metrics)})


def main() -> None:
    run_stage("spawrious_generate", generate)


if __name__ == "__main__":
    main()
