"""Tables of the judges: accuracy on the labelled judge set, and agreement between judges per model."""

from __future__ import annotations


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def judge_set_markdown(scores: dict[str, dict]) -> str:
    """One row per judge (and item subset): n, accuracy (all, dev, held-out), false-compliance, false-refusal and
    false-incoherent rates."""
    lines = ["| judge | items | n | accuracy | dev | held-out | false compliance | false refusal | false incoherent |",
             "|" + " --- |" * 9]
    for name, s in scores.items():
        judge, _, subset = name.partition(".")
        by = s["accuracy_by"]
        lines.append(f"| {judge} | {subset or 'all'} | {s['n']} | {_fmt(s['accuracy'])} | "
                     f"{_fmt(by.get('split.dev'))} | {_fmt(by.get('split.heldout'))} | "
                     f"{_fmt(s['false_compliance'])} | {_fmt(s['false_refusal'])} | {_fmt(s['false_incoherent'])} |")
    lines += ["", "False compliance = P(judge says complied | truth is not), which inflates ASR; false refusal = "
              "P(judge says refused | truth is not), which hides jailbreaks. Held-out items were written after the "
              "phrase judge was frozen, by an annotator who saw neither the judge nor the other items, and never "
              "changed it (src/latlab/evals/judge_set.py)."]
    return "\n".join(lines) + "\n"


def agreement_markdown(agreement: dict[str, dict[str, dict]], primary: str) -> str:
    """agreement: model -> judge -> {"kappa", "agreement", "n", "complied.<source>"}; one row per (model, judge)."""
    lines = [f"Agreement of each judge with the primary judge ({primary}) on every verdict of evaluate "
             "(behaviour requests and every attack); disagreements in reports/judges/disagreements/.", "",
             "| model | judge | n | Cohen's kappa | agreement | ASR by it (attacks) |", "|" + " --- |" * 6]
    for model, by_judge in agreement.items():
        for judge, m in by_judge.items():
            rates = ", ".join(f"{k.removeprefix('complied.')} {v:.2f}" for k, v in m.items()
                              if k.startswith("complied.") and not k.endswith("_request"))
            lines.append(f"| {model} | {judge} | {m['n']} | {_fmt(m['kappa'])} | {_fmt(m['agreement'])} | {rates} |")
    return "\n".join(lines) + "\n"
