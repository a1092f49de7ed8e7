"""DVC stage `report`: reports/index.html, the self-contained results page (latlab.report.html) built from every
report, figure and metrics file of the run, with links to each stage's MLflow run; logged to MLflow as an artifact.
Also the results as DVC plot data, plots/results/ (latlab.report.plot_data: ASR, unlearning, attack budget), derived
here from the committed metrics so that adding or changing them reruns only this cheap stage."""

from __future__ import annotations

from pathlib import Path

from latlab.config import Params
from latlab.report.html import SECTIONS, build_report
from latlab.report.plot_data import write_result_plots
from latlab.tracking import latest_stage_runs, stage_run
from stages.common import METRICS_DIR, PLOTS_DIR, REPORTS_DIR, run_stage, stage_done

PAGE = REPORTS_DIR / "index.html"
RESULT_PLOTS = PLOTS_DIR / "results"  # dvc.yaml top-level `plots:` draws these


def report(params: Params) -> None:
    plot_files = write_result_plots(METRICS_DIR, RESULT_PLOTS)
    runs = latest_stage_runs(params.tracking)  # before this stage's own run opens
    page = build_report(Path("."), runs, title=f"latlab results ({params.tracking.experiment})")
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(page)
    with stage_run(params.tracking, "report", {"sections": [s.key for s in SECTIONS]}) as run:
        run.log_artifact(PAGE)
    stage_done("report", [PAGE, RESULT_PLOTS], {"sections": len(SECTIONS), "linked_runs": len(runs),
                                                "plot_files": len(plot_files),
                                                "kB": round(PAGE.stat().st_size / 1024)})


def main() -> None:
    run_stage("report", report)


if __name__ == "__main__":
    main()
