"""The end-of-run summary `make demo` prints: the model comparison table once, then one line per result that a reader
looks for first (attack robustness per model, unlearning verdicts, backdoor removal, Spawrious), the science
scorecard of the last seeds study (one line per claim: verdict, paired effect [95% interval], seeds), then where the
full results are. Everything else stays in metrics/ (`dvc metrics show`), reports/ and MLflow.

    python -m latlab.report.summary [--root DIR]

Reads only files the pipeline wrote; a result whose stage has not run is named as missing, not guessed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latlab.report.plot_data import attack_rates

COMPARE = Path("reports/compare.md")
EVALUATE = Path("metrics/evaluate.json")
UNLEARNING = Path("metrics/unlearning_eval.json")
BACKDOOR = Path("metrics/backdoor_removal")
SPAWRIOUS = Path("metrics/spawrious_evaluate.json")
SCORECARD = Path("metrics/scorecard.json")  # the seeds study's (`make study`), committed; a demo does not rebuild it
LINE = 120  # characters: a summary line fits a terminal
WHERE = ("results: metrics/ (JSON, `dvc metrics show`), reports/*.md (tables), plots/*.png, "
         "reports/validation.html")


def _load(root: Path, path: Path) -> dict | None:
    return json.loads((root / path).read_text()) if (root / path).is_file() else None


def _missing(path: Path) -> str:
    return f"  (no {path}: its stage has not run)"


def robustness_lines(evaluate: dict) -> list[str]:
    """Per evaluated model: harmful ASR without attack, the strongest attack's ASR (and its incoherent rate), benign
    compliance and backdoor ASR."""
    lines = []
    for model, m in evaluate.items():
        attacks = attack_rates(m)
        worst = max(attacks, key=attacks.get, default=None)
        strongest = "no attacks run" if worst is None else (
            f"strongest attack {worst} {attacks[worst]:.2f}"
            + (f" (incoherent {m[f'incoherent.{worst}']:.2f})" if f"incoherent.{worst}" in m else ""))
        lines.append(f"  {model}: harmful ASR {m.get('harmful_asr', float('nan')):.2f}, {strongest}, benign compliance "
                     f"{m.get('benign_compliance', float('nan')):.2f}, backdoor ASR "
                     f"{m.get('backdoor_asr', float('nan')):.2f}")
    return lines


def unlearning_line(unlearning: dict) -> str:
    verdict = unlearning.get("verdict")
    if not verdict:
        return "  no oracle verdict (no oracle model for this run's data)"
    by_label: dict[str, list[str]] = {}
    for method, label in verdict.items():
        by_label.setdefault(label, []).append(method)
    return "  " + "; ".join(f"{label}: {', '.join(methods)}" for label, methods in sorted(by_label.items()))


def backdoor_line(root: Path) -> str:
    cells = []
    for path in sorted((root / BACKDOOR).glob("*.json")):
        m = json.loads(path.read_text())
        if "before.backdoor_asr" in m and "after.backdoor_asr" in m:
            cells.append(f"{path.stem} {m['before.backdoor_asr']:.2f} -> {m['after.backdoor_asr']:.2f}")
    return "  backdoor ASR " + ", ".join(cells) if cells else _missing(BACKDOOR)


def spawrious_line(spawrious: dict) -> str:
    best = max(spawrious.items(), key=lambda item: item[1]["worst_group_accuracy"])
    worst = min(spawrious.items(), key=lambda item: item[1]["worst_group_accuracy"])
    return (f"  worst-group accuracy: best {best[0]} {best[1]['worst_group_accuracy']:.2f}, lowest {worst[0]} "
            f"{worst[1]['worst_group_accuracy']:.2f} ({len(spawrious)} split x method runs)")


def scorecard_lines(scorecard: dict) -> list[str]:
    """The verdict counts, then per claim: verdict, effect [interval] (seeds), the claim cut to fit `LINE`."""
    claims = scorecard.get("claims", [])
    counts: dict[str, int] = {}
    for claim in claims:
        counts[claim["verdict"]] = counts.get(claim["verdict"], 0) + 1
    lines = [f"  study {scorecard.get('study', '?')}, seeds {scorecard.get('seeds', '?')}: "
             + ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))]
    for claim in claims:
        low, high = claim.get("ci") or (float("nan"), float("nan"))
        head = (f"  {claim['verdict']:<12} {claim.get('effect', float('nan')):+.2f} [{low:+.2f}, {high:+.2f}] "
                f"({claim.get('n_seeds', '?')}) ")
        text = claim["claim"]
        lines.append(head + (text if len(head) + len(text) <= LINE else text[:LINE - len(head) - 1] + "…"))
    return lines


def summary_lines(root: Path = Path(".")) -> list[str]:
    compare = (root / COMPARE).read_text().rstrip("\n").splitlines() if (root / COMPARE).is_file() \
        else [_missing(COMPARE)]
    evaluate, unlearning, spawrious, scorecard = (_load(root, p) for p in (EVALUATE, UNLEARNING, SPAWRIOUS, SCORECARD))
    return [f"== models ({COMPARE}) ==", *compare, "",
            f"== robustness ({EVALUATE}) ==", *(robustness_lines(evaluate) if evaluate else [_missing(EVALUATE)]),
            f"== unlearning, against the oracle ({UNLEARNING}) ==",
            unlearning_line(unlearning) if unlearning else _missing(UNLEARNING),
            f"== backdoor removal without the trigger ({BACKDOOR}/) ==", backdoor_line(root),
            f"== Spawrious ({SPAWRIOUS}) ==", spawrious_line(spawrious) if spawrious else _missing(SPAWRIOUS),
            f"== science scorecard, seeds study ({SCORECARD}; `make study` rebuilds it) ==",
            *(scorecard_lines(scorecard) if scorecard else ["  (no metrics/scorecard.json: `make study` writes it)"]),
            "", WHERE]


DOC_HEADER = """# The end of `make demo`, as printed

The closing summary (`python -m latlab.report.summary`) of the committed default run; `make demo` prints it after the
stage lines and writes this page from the same lines (a test checks it against the committed metrics). The compare
table is wide (one column per registered model): scroll right, or read `reports/compare.md`.
"""


def summary_doc(root: Path = Path(".")) -> str:
    """docs/demo_end.md: `DOC_HEADER` and the summary lines in a code block."""
    return DOC_HEADER + "\n```\n" + "\n".join(summary_lines(root)) + "\n```\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the project folder the pipeline ran in")
    parser.add_argument("--write", type=Path, help="also write the summary as a markdown page (docs/demo_end.md)")
    args = parser.parse_args(argv)
    print("\n".join(summary_lines(args.root)))
    if args.write:
        args.write.write_text(summary_doc(args.root))


if __name__ == "__main__":
    main()
