"""DVC stage `compare`: the models this pipeline produced, side by side (markdown + JSON).

The set is declared, not discovered: every role of params `evaluate.models`, the oracle and every entry of the
`unlearn` and `backdoor_removal` tables. Each role's model card (models/<role>/latlab_model.json, written when the
model was registered; its folder is a dvc.yaml dep of this stage) names the registered version, whose tags (made_by,
eval.* metrics) MLflow supplies. Versions registered by anything else (sweeps, reruns, other work directories) are
never listed, so the table is the same whenever the stage runs.

Outside DVC, the versions an alias names (latlab.tracking.version_aliases: `<study>-seed<s>` in a seed study,
`dvc-exp-<name>` in a DVC experiment) side by side, e.g. two seeds of a study in a shared MLflow server:

    python -m stages.compare --alias seeds-seed0 seeds-seed1 [--out reports/compare_seeds.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latlab.config import Params
from latlab.report.compare import comparison_markdown, comparison_rows
from latlab.tracking import MODEL_CARD, cards_by_alias, model_versions, stage_run
from stages.common import MODELS_DIR, REPORTS_DIR, run_stage, stage_done


def compared_roles(params: Params) -> list[str]:
    """The model folders below models/ that the pipeline declares (docs/naming.md)."""
    return [*params.evaluate.models, "oracle", *(f"unlearn/{name}" for name in params.unlearn),
            *(f"backdoor_removal/{name}" for name in params.backdoor_removal)]


def model_cards(roles: list[str]) -> list[dict]:
    cards = []
    for role in roles:
        path = MODELS_DIR / role / MODEL_CARD
        if not path.exists():
            raise FileNotFoundError(f"{path}: no model card (run the stage that produces models/{role} first)")
        cards.append(json.loads(path.read_text()))
    return cards


def compare(params: Params) -> None:
    roles = compared_roles(params)
    rows = comparison_rows(model_versions(params.tracking, model_cards(roles)))
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    (REPORTS_DIR / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    (REPORTS_DIR / "compare.md").write_text(comparison_markdown(rows))
    with stage_run(params.tracking, "compare", {"models": roles}) as run:
        run.log_metrics({"compared_models": len(rows)})
        run.log_artifact(REPORTS_DIR / "compare.md", "compare")
        run.log_artifact(REPORTS_DIR / "compare.json", "compare")
    # the table itself is printed once, by the end-of-run summary (`python -m latlab.report.summary`)
    stage_done("compare", [REPORTS_DIR / "compare.md", REPORTS_DIR / "compare.json"], {"models": len(rows)})


def compare_aliases(params: Params, aliases: list[str], out: Path | None = None) -> str:
    """The markdown table of every `latlab-*` version holding one of `aliases`, grouped by alias (printed, and
    written to `out`); ConfigError naming an alias no model holds."""
    cards = [card for alias in aliases for card in cards_by_alias(params.tracking, alias)]
    table = comparison_markdown(comparison_rows(model_versions(params.tracking, cards)))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
    print(table, end="")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--alias", nargs="+", metavar="ALIAS",
                        help="compare the registered versions holding these aliases, not this pipeline's models")
    parser.add_argument("--out", type=Path, help="with --alias: also write the table here")
    args = parser.parse_args(argv)
    if args.alias:
        run_stage("compare", lambda params: compare_aliases(params, args.alias, args.out))
    else:
        run_stage("compare", compare)


if __name__ == "__main__":
    main()
