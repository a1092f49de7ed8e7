"""Headline numbers across the seeds of a study (issue 14): every number of the headline metrics files as its mean over
seeds, a bootstrap interval over seeds, the per-seed values and N (seeds, and prompts per seed for a rate).

Two intervals, each saying what it resamples: `ci_seeds` is the percentile bootstrap of the mean over seeds (the
spread training seeds cause); `ci_pooled` (rates with a known N only) is the Wilson interval of the rate pooled over
prompts x seeds (N = prompts per seed x seeds), which treats every prompt-seed pair as independent and so ignores
the spread between seeds: read it as sampling error of the prompt set, not as a rerun's range.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import fmean
from typing import Any

from latlab.report.stats import bootstrap_mean_ci, wilson_interval

# metrics files (below metrics/) whose numbers are headline numbers; the others are training bookkeeping
HEADLINE_FILES = ("evaluate.json", "attack_budget.json", "unlearning_eval.json", "interpret.json",
                  "spawrious_evaluate.json")
HEADLINE_DIRS = ("backdoor_removal/",)
MAX_METRICS_FILE_BYTES = 1_000_000  # a metrics file is small JSON; anything bigger is not collected


def load_metrics_tree(metrics_dir: Path) -> dict[str, Any]:
    """{path below `metrics_dir` (posix): loaded JSON} for every *.json file under it (one seed's metrics/)."""
    return {path.relative_to(metrics_dir).as_posix(): json.loads(path.read_text())
            for path in sorted(metrics_dir.rglob("*.json")) if path.stat().st_size <= MAX_METRICS_FILE_BYTES}


def flatten_numbers(node: Any, prefix: str = "") -> dict[str, float]:
    """Dotted key -> number for every int/float leaf of a JSON tree (bools and strings skipped)."""
    if isinstance(node, dict):
        flat: dict[str, float] = {}
        for key, value in node.items():
            flat.update(flatten_numbers(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return {prefix: float(node)}
    return {}


def sample_size_key(key: str) -> str | None:
    """The evaluate.json key holding the N of rate `key` (`<model>.<rate>`), or None when the rate has none recorded:
    `asr.<attack>[.eps_<e>]` / `incoherent.<attack>` -> `n.<attack>`, `harmful_*` / `benign_*` -> `n.harmful` /
    `n.benign`, `backdoor_asr` -> `n.backdoor` (written by latlab.evals)."""
    model, _, rate = key.partition(".")
    head, _, rest = rate.partition(".")
    if head in ("asr", "incoherent") and rest:
        return f"{model}.n.{rest.split('.')[0]}"
    for group in ("harmful", "benign", "backdoor"):
        if head.startswith(f"{group}_"):
            return f"{model}.n.{group}"
    return None


def headline(files: dict[str, Any]) -> dict[str, Any]:
    """The headline subset of one seed's metrics tree."""
    return {name: body for name, body in files.items() if name in HEADLINE_FILES or name.startswith(HEADLINE_DIRS)}


def summarize_seeds(per_seed_metrics: dict[int, dict[str, Any]], *, samples: int, confidence: float,
                    seed: int) -> dict[str, dict[str, Any]]:
    """`file:key` -> {mean, ci_seeds, values (per study seed), n_seeds, [n_prompts, ci_pooled]} over the headline
    numbers of every seed. A key some seeds lack is summarised over the seeds that have it (n_seeds says how many).
    `n_prompts` is per seed (from evaluate.json's `n.*` keys), for rates of evaluate.json only."""
    flat = {study_seed: {f"{name}:{key}": value for name, body in headline(files).items()
                         for key, value in flatten_numbers(body).items()}
            for study_seed, files in per_seed_metrics.items()}
    keys = sorted({key for numbers in flat.values() for key in numbers})
    summary: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = {s: numbers[key] for s, numbers in sorted(flat.items()) if key in numbers}
        low, high = bootstrap_mean_ci(list(values.values()), samples, confidence, seed)
        entry: dict[str, Any] = {"mean": fmean(values.values()), "ci_seeds": [low, high],
                                 "values": {str(s): v for s, v in values.items()}, "n_seeds": len(values)}
        name, _, inner = key.partition(":")
        n_key = sample_size_key(inner) if name == "evaluate.json" else None
        sizes = [flat[s].get(f"{name}:{n_key}") for s in values] if n_key else []
        sizes = [None if size is None else int(size) for size in sizes]  # counts (flattened as floats)
        if sizes and all(size is not None for size in sizes) and 0 <= entry["mean"] <= 1:
            entry["n_prompts"] = sizes[0] if len(set(sizes)) == 1 else {str(s): n for s, n in zip(values, sizes)}
            pooled_n = int(sum(sizes))
            pooled_rate = sum(values[s] * n for s, n in zip(values, sizes)) / pooled_n if pooled_n else 0.0
            entry["ci_pooled"] = list(wilson_interval(pooled_rate, pooled_n, confidence))
        summary[key] = entry
    return summary


def rate_cell(entry: dict[str, Any] | None) -> str:
    """`mean [low, high] (N)` of a rate over seeds: the interval is the bootstrap over seeds, N = prompts per seed x
    seeds (`–` when the rate was not measured)."""
    if entry is None:
        return "–"
    n = entry.get("n_prompts")
    prompts = f"{n}×{entry['n_seeds']}" if isinstance(n, (int, float)) else f"{entry['n_seeds']} seeds"
    low, high = entry["ci_seeds"]
    return f"{entry['mean']:.2f} [{low:.2f}, {high:.2f}] ({prompts})"


def seeds_table(summary: dict[str, dict[str, Any]], confidence: float, rows: dict[str, str], columns: list[str],
                corner: str) -> str:
    """A markdown table over seeds: one row per `rows` label, cell = `rate_cell` of summary key `<row prefix><column>`."""
    lines = [f"Mean over seeds [{confidence:.0%} bootstrap interval over seeds] (N = prompts per seed × seeds, or the "
             "number of seeds)", "", f"| {corner} | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for label, prefix in rows.items():
        lines.append(f"| {label} | " + " | ".join(rate_cell(summary.get(f"{prefix}{c}")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def evaluate_markdown(summary: dict[str, dict[str, Any]], confidence: float) -> str:
    """reports/study_evaluate.md: model x (behaviour rates, attack ASRs) of evaluate.json over seeds."""
    prefix = "evaluate.json:"
    keys = [k.removeprefix(prefix) for k in summary if k.startswith(prefix)]
    models = list(dict.fromkeys(k.split(".", 1)[0] for k in keys))
    columns = ["harmful_asr", "benign_compliance", "backdoor_asr"] + sorted(
        {k.split(".", 1)[1] for k in keys if re.fullmatch(r"[^.]+\.asr\.[a-z_]+", k)})
    return seeds_table(summary, confidence, {m: f"{prefix}{m}." for m in models}, columns, "model")


# Lynch et al.'s headline evaluations (unlearning_eval.json `results.<method>.<key>`): what is left of the forget
# domain by each route, and what the method cost elsewhere
UNLEARNING_COLUMNS = ["qa.free_recall", "extract.best_of", "relearn.free_recall", "latent.max_acc",
                      "in_context.free_recall", "general.free_recall", "collateral.free_recall"]
BACKDOOR_COLUMNS = ["after.backdoor_asr", "after.harmful_asr", "after.benign_compliance"]


def unlearning_markdown(summary: dict[str, dict[str, Any]], confidence: float) -> str:
    """reports/study_unlearning.md: method x Lynch et al.'s headline evaluations, over seeds."""
    prefix = "unlearning_eval.json:results."
    methods = list(dict.fromkeys(k.removeprefix(prefix).split(".", 1)[0] for k in summary if k.startswith(prefix)))
    return seeds_table(summary, confidence, {m: f"{prefix}{m}." for m in methods}, UNLEARNING_COLUMNS, "method")


def backdoor_markdown(summary: dict[str, dict[str, Any]], confidence: float) -> str:
    """reports/study_backdoor.md: trigger-free removal method x rates after removal, over seeds."""
    files = sorted({k.split(":", 1)[0] for k in summary if k.startswith("backdoor_removal/")})
    rows = {f.removeprefix("backdoor_removal/").removesuffix(".json"): f"{f}:" for f in files}
    return seeds_table(summary, confidence, rows, BACKDOOR_COLUMNS, "method")
