"""DVC stage `backdoor_report`: reports/backdoor.md, one row per entry of the `backdoor_removal` table: each behaviour
before -> after removal, wall time and compute, read from metrics/backdoor_removal/<name>.json."""

from __future__ import annotations

import json

from latlab.config import Params
from latlab.report.tables import backdoor_markdown
from stages.common import METRICS_DIR, REPORTS_DIR, run_stage, stage_done


def backdoor_report(params: Params) -> None:
    metrics = {name: json.loads((METRICS_DIR / "backdoor_removal" / f"{name}.json").read_text())
               for name in params.backdoor_removal}
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    (REPORTS_DIR / "backdoor.md").write_text(backdoor_markdown(metrics, params.evaluate.split))
    stage_done("backdoor_report", [REPORTS_DIR / "backdoor.md"], {"methods": len(metrics)})


def main() -> None:
    run_stage("backdoor_report", backdoor_report)


if __name__ == "__main__":
    main()
