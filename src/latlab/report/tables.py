"""Markdown tables of the reports (reports/*.md): what the stages write for people to read. The numbers come from
the evaluation modules; nothing here computes a metric."""

from __future__ import annotations

from collections.abc import Sequence

from latlab.evals.unlearning import KNOWLEDGE_KEYS, TABLE_KEYS


def backdoor_markdown(metrics_by_method: dict[str, dict], split: str) -> str:
    """One row per backdoor-removal method: each behaviour measured before and after (`before.<key>` and
    `after.<key>` in its metrics) as before -> after, wall time and compute. Sample sizes (`before.n.<what>`) are not
    behaviours: left out of the columns."""
    first = next(iter(metrics_by_method.values()), {})
    reported = [k.removeprefix("before.") for k in first if k.startswith("before.") and not k.startswith("before.n.")]
    rows = ["| method | " + " | ".join(reported) + " | wall s | forward tokens |",
            "|" + " --- |" * (len(reported) + 3)]
    for method, m in metrics_by_method.items():
        cells = [f"{m[f'before.{k}']:.2f} → {m[f'after.{k}']:.2f}" for k in reported]
        tokens = m.get("compute.forward_tokens")
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {m['wall_seconds']:.0f} | "
                    + (f"{tokens:.3g} |" if tokens is not None else f"{m['compute.sequences']:.0f} sequences |"))
    return f"Backdoor removal without the trigger, from RT ({split} split; before → after)\n\n" + "\n".join(rows) + "\n"

def unlearning_markdown(results_by_model: dict[str, dict[str, float]], summary: dict[str, dict] | None,
                        tolerance: float, keys: Sequence[str] = TABLE_KEYS,
                        not_measured: dict[str, str] | None = None) -> str:
    """The model x evaluation table ("–" where a metric was not measured), what was not measured and why, then the
    removed/suppressed verdict per unlearned model with its numbers (none without an oracle: `summary` None)."""
    lines = ["| model | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for name, res in results_by_model.items():
        lines.append(f"| {name} | " + " | ".join(f"{res[k]:.3f}" if k in res else "–" for k in keys) + " |")
    if not_measured:
        lines += ["", "Not measured:", *(f"- {name}: {why}" for name, why in not_measured.items())]
    if summary is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"Verdict: **removed** when every knowledge metric ({', '.join(KNOWLEDGE_KEYS)}) is at most the "
              f"oracle's + {tolerance}; otherwise **suppressed** (the metrics above it are listed).", ""]
    for name, row in summary.items():
        above = ", ".join(f"{k} {row['values'][k]:.2f} vs oracle {row['oracle'][k]:.2f}" for k in row["above_oracle"])
        lines.append(f"- {name}: **{row['label']}**" + (f" ({above})" if above else ""))
    return "\n".join(lines) + "\n"


def persistence_markdown(rows: list[dict]) -> str:
    def cell(row: dict, key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "–"

    lines = ["| model | behaviour | behaviour rate | latent signal (block) | measure | base-circuit top-k overlap "
             "| attribution mass on base circuit |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['behaviour']} | {r['behaviour_rate']:.2f} | {r['latent_signal']:.2f} "
              f"(block {r['layer']}) | {r['measure']} | {cell(r, 'circuit_overlap')} | {cell(r, 'circuit_mass')} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def steering_markdown(by_kind: dict[str, dict[str, dict]], layer: int) -> str:
    """One row per steering vector kind and persona concept (interpret's `steering_by_concept` result): the behaviour
    rate unsteered without a persona prompt and under the persona's / its opposite's system prompt, the steering
    effect at block `layer` in logits (mean / median steerability, anti-steerable fraction) and in behaviour (rate at
    the smallest -> largest multiplier), the spurious factors' R², the mean ID/OOD rank correlation over the four
    prompt variants, and the block of the largest mean steerability in the layer sweep. N = test questions."""
    lines = [f"| vector | concept | N | behaviour rate: no prompt / persona / opposite | steerability mean (median), "
             f"block {layer} | anti-steerable | behaviour rate, min -> max multiplier | R² positive-is-A / -yes "
             "| ID-OOD Spearman (mean of 4) | best block (steerability) |", "|" + " --- |" * 10]
    for kind, concepts in by_kind.items():
        for concept, r in concepts.items():
            base, spurious = r["baseline"], r.get("spurious", {})
            rho = r.get("id_ood_spearman") or {}
            sweep = r.get("layer_sweep") or {}
            best = max(sweep, key=lambda k: sweep[k]["steerability_mean"]) if sweep else None
            rho_cell = f"{sum(rho.values()) / len(rho):.2f}" if rho else "–"
            best_cell = f"{best} ({sweep[best]['steerability_mean']:.3f})" if best is not None else "–"
            persona = r.get("system_positive", {}).get("behaviour_rate")
            opposite = r.get("system_negative", {}).get("behaviour_rate")
            rates = " / ".join("–" if v is None else f"{v:.2f}" for v in (base["behaviour_rate"], persona, opposite))
            lines.append(f"| {kind} | {concept} | {base['n']} | {rates} | {base['steerability_mean']:.3f} "
                         f"({base['steerability_median']:.3f}) | {base['anti_steerable_fraction']:.2f} | "
                         f"{base['behaviour_rate_at_min']:.2f} -> {base['behaviour_rate_at_max']:.2f} | "
                         f"{spurious.get('r2_positive_is_A', float('nan')):.2f} / "
                         f"{spurious.get('r2_positive_is_yes', float('nan')):.2f} | {rho_cell} | {best_cell} |")
    return "\n".join(lines) + "\n"
