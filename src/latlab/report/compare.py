"""Side-by-side table of registered models: how each was made (tags) and every evaluation metric (the numeric
metrics linked to each version's logged model, latlab.tracking.record_model_evaluation)."""

from __future__ import annotations


def comparison_rows(registered: list[dict]) -> list[dict]:
    rows = []
    for model in registered:
        tags = model["tags"]
        rows.append({"model": model["name"], "version": model["version"], "made_by": tags.get("made_by", ""),
                     "metrics": dict(model.get("eval_metrics", {})),
                     **({"alias": model["alias"]} if model.get("alias") else {})})
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    if not rows:
        return "_No registered models found._\n"
    metrics = sorted({m for row in rows for m in row["metrics"]})
    def column(row: dict) -> str:
        return f"{row['model']} v{row['version']}" + (f" @{row['alias']}" if row.get("alias") else "")

    header = "| metric | " + " | ".join(column(r) for r in rows) + " |"
    lines = [header, "|" + " --- |" * (len(rows) + 1)]
    for metric in metrics:
        cells = [f"{r['metrics'][metric]:.3f}" if metric in r["metrics"] else "–" for r in rows]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- **{column(r)}**: {r['made_by']}" for r in rows]
    return "\n".join(lines) + "\n"


def asr_matrix_markdown(results: dict[str, dict[str, float]], keys: list[str]) -> str:
    """Rows: models; columns: attacks and benign compliance. An attack's cell is "ASR (incoherent rate)" when the
    results carry `incoherent.<attack>`: a low ASR with a high incoherent rate is a broken model, not a robust one."""
    header = "| model | " + " | ".join(k.removeprefix("asr.") for k in keys) + " | benign compliance |"
    lines = [header, "|" + " --- |" * (len(keys) + 2)]

    def cell(metrics: dict[str, float], key: str) -> str:
        text = f"{metrics.get(key, float('nan')):.2f}"
        incoherent = metrics.get("incoherent." + key.removeprefix("asr."))
        return text if incoherent is None or not key.startswith("asr.") else f"{text} ({incoherent:.2f})"

    for role, metrics in results.items():
        cells = [cell(metrics, k) for k in keys + ["benign_compliance"]]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    if any(f"incoherent.{k.removeprefix('asr.')}" in m for m in results.values() for k in keys):
        lines += ["", "Cells: ASR (incoherent rate), both by the primary judge."]
    return "\n".join(lines) + "\n"
