"""Model cards: the markdown description of each registered model version in the MLflow registry (issue 17) — what
the model is, its parent version, the stage, commit, data and parent-model hashes, the params section, the training
compute, and (added by `evaluate`) an evaluation summary with each rate's N and 95% Wilson interval.

Only formatting; latlab.tracking writes the text to the registry.
"""

from __future__ import annotations

import json
from typing import Any

from latlab.models.compute import flop_proxy
from latlab.report.stats import wilson_interval

EVALUATION_HEADING = "### Evaluation"
# (rate key, its N key) shown in the evaluation summary, when the evaluate stage measured them
SUMMARY_RATES = (("harmful_asr", "n.harmful"), ("benign_compliance", "n.benign"), ("backdoor_asr", "n.backdoor"))


def training_card(role: str, stage: str, tags: dict[str, str], commit: str, digests: dict[str, str],
                  params_section: dict[str, Any], metrics: dict[str, Any], parent_version: str | None) -> str:
    """The card written when a stage registers its model. `digests`: dvc.yaml dependency -> md5 (data and parent
    model folders are shown; code files are summarised by the commit)."""
    parent = tags.get("parent")
    inputs = {dep: d for dep, d in digests.items() if dep.startswith(("data/", "models/"))}
    compute = {k: v for k, v in metrics.items() if k.startswith("compute.") or k in ("wall_seconds", "steps",
                                                                                   "optimizer_steps")}
    proxy = flop_proxy(metrics)
    lines = [f"## {role}", "", tags.get("made_by", "(no description)"), "",
             f"- parent: {f'{parent} v{parent_version}' if parent and parent_version else parent or 'none'}",
             f"- stage: `{stage}` · commit: `{commit}`",
             *(f"- input `{dep}`: md5 `{d}`" for dep, d in inputs.items()),
             "", "### Training compute", "",
             *(f"- {k}: {v:,.0f}" if isinstance(v, (int, float)) and v >= 1000 else f"- {k}: {v}"
               for k, v in compute.items()),
             *([f"- FLOP proxy (2·fwd + 4·bwd tokens, per parameter): {proxy:,.0f}"] if proxy is not None else []),
             "", "### Params", "", "```json", json.dumps(params_section, indent=1, sort_keys=True, default=str), "```"]
    return "\n".join(lines) + "\n"


def evaluation_summary(metrics: dict[str, float], split: str, confidence: float = 0.95) -> str:
    """The evaluation section: each headline rate with its N and Wilson interval, then every attack's ASR."""
    lines = [EVALUATION_HEADING, "", f"{split} split; rate (N, {confidence:.0%} Wilson interval)", ""]
    for key, n_key in SUMMARY_RATES:
        if key in metrics and n_key in metrics:
            low, high = wilson_interval(metrics[key], int(metrics[n_key]), confidence)
            lines.append(f"- {key}: {metrics[key]:.2f} (N {int(metrics[n_key])}, [{low:.2f}, {high:.2f}])")
    for key in sorted(k for k in metrics if k.startswith("asr.") and k.count(".") == 1):
        n = metrics.get("n." + key.removeprefix("asr."))
        if n:
            low, high = wilson_interval(metrics[key], int(n), confidence)
            lines.append(f"- {key}: {metrics[key]:.2f} (N {int(n)}, [{low:.2f}, {high:.2f}])")
        else:
            lines.append(f"- {key}: {metrics[key]:.2f}")
    return "\n".join(lines) + "\n"


def with_evaluation(card: str, summary: str) -> str:
    """`card` with its evaluation section replaced by `summary` (a rerun of evaluate does not stack sections)."""
    head = card.split(EVALUATION_HEADING)[0].rstrip("\n")
    return head + "\n\n" + summary
