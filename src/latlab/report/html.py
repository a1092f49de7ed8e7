"""reports/index.html: the one page a researcher opens after a run (issue 17). Self-contained: CSS inline, every
figure a base64 `data:` URI, no script and no CDN, so it opens from disk, from an MLflow artifact and offline.

Each section shows the report tables the stages wrote (reports/*.md, rendered with markdown-it-py, which the
environment already has) and their figures (plots/), and links the stage's MLflow run and its params section.
Nothing here computes a metric; the tables of training compute reuse the README's (latlab.report.readme).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

from latlab.report.readme import compute_table, training_metrics

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em; color: #222; }
nav a { margin-right: 1em; }
section { border-top: 1px solid #ccc; padding-top: 0.5em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f3f3f3; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 560px; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
.meta { font-size: 0.85em; color: #555; }
.missing { color: #a33; }
"""


@dataclass(frozen=True)
class Section:
    """One part of the page: report tables (paths or globs under the run's root), figures, the DVC stages whose
    MLflow runs made them, and the params sections they read."""

    key: str
    title: str
    tables: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    params: tuple[str, ...] = ()


SECTIONS = (
    Section("scorecard", "Science scorecard (seeds study)", ("reports/scorecard.md",), params=("study",)),
    Section("asr", "ASR matrix: adaptive attacks × model", ("reports/asr_matrix.md",),
            ("plots/asr_matrix.png", "plots/evaluate.png"), ("evaluate",), ("evaluate", "attacks")),
    Section("budget", "ASR by attack budget", ("reports/attack_budget.md",), ("plots/attack_budget/*.png",),
            ("attack_budget",), ("attack_budget",)),
    Section("pareto", "Robustness vs over-refusal", ("reports/pareto.md",), ("plots/pareto.png",),
            ("attack_budget",), ("attack_budget",)),
    Section("judges", "Judges", ("reports/judges/judge_set.md", "reports/judges/agreement.md"), (),
            ("evaluate",), ("evaluate",)),
    Section("unlearning", "Unlearning: removed or suppressed", ("reports/unlearning.md",), ("plots/unlearning.png",),
            ("unlearning_eval",), ("unlearn", "unlearning_eval")),
    Section("backdoor", "Backdoor removal without the trigger", ("reports/backdoor.md",), (),
            ("backdoor_report",), ("backdoor_removal",)),
    Section("interpret", "Interpretability: persistence, circuits, steering",
            ("reports/persistence.md", "reports/steering.md"),
            ("plots/interpret/persistence.png", "plots/interpret/faithfulness.png", "plots/interpret/acdc/*.png",
             "plots/interpret/steering/*.png"),
            ("interpret",), ("interpret",)),
    Section("spawrious", "Spawrious track", ("reports/spawrious_results.md",), ("plots/spawrious/*.png",),
            ("spawrious_evaluate",), ("spawrious",)),
    Section("compute", "Training compute and stage times"),
    Section("data", "Data gate (Great Expectations)", (), (), ("validate",), ("validate",)),
    Section("curves", "Training curves", (), ("plots/*_loss.png", "plots/unlearn/*_loss.png",
                                               "plots/backdoor_removal/*_loss.png")),
)

_MARKDOWN = MarkdownIt("commonmark").enable("table")


def markdown_html(text: str) -> str:
    """CommonMark with tables (the reports/*.md tables) as HTML."""
    return _MARKDOWN.render(text)


def page_html(title: str, body: str) -> str:
    """A whole page: `body` under an <h1> title, with the inline CSS and nothing loaded from elsewhere."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}\n</body></html>\n")


def image_html(path: Path, root: Path) -> str:
    """A PNG file as a self-contained <figure> (base64 `data:` URI), captioned with its path relative to `root`."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.relative_to(root).as_posix())
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{name}">'
            f"<figcaption>{name}</figcaption></figure>")


def _paths(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    return [p for pattern in patterns for p in sorted(root.glob(pattern)) if p.is_file()]


def _data_gate(root: Path) -> str:
    path = root / "reports" / "validation.json"
    if not path.exists():
        return '<p class="missing">reports/validation.json not found: run `make demo`.</p>'
    gate = json.loads(path.read_text())
    failed = [r for r in gate.get("results", []) if not r.get("success", True)]
    lines = [f"<p>{gate.get('evaluated', 0)} expectations evaluated, {gate.get('failed', 0)} failed: "
             f"<b>{'passed' if gate.get('success') else 'FAILED'}</b> (full page: reports/validation.html).</p>"]
    lines += [f"<p class=missing>{html.escape(r.get('suite', ''))}: {html.escape(r.get('expectation', ''))}</p>"
              for r in failed]
    return "\n".join(lines)


def _stage_times(stage_runs: dict[str, dict]) -> str:
    rows = [(stage, run.get("duration_s")) for stage, run in stage_runs.items() if run.get("duration_s") is not None]
    if not rows:
        return "<p>No stage runs in the MLflow store.</p>"
    body = "".join(f"<tr><td>{html.escape(s)}</td><td>{d:.0f}</td></tr>" for s, d in sorted(rows, key=lambda r: -r[1]))
    return f"<h3>Stage run times (MLflow)</h3><table><thead><tr><th>stage</th><th>s</th></tr></thead>{body}</table>"


def _compute(root: Path, stage_runs: dict[str, dict]) -> str:
    return markdown_html(compute_table(training_metrics(root / "metrics"))) + _stage_times(stage_runs)


def _links(section: Section, stage_runs: dict[str, dict]) -> str:
    parts = []
    for stage in section.stages:
        run = stage_runs.get(stage)
        if run and run.get("url"):
            parts.append(f'<a href="{html.escape(run["url"])}">MLflow run of {html.escape(stage)}</a>')
        elif stage:
            parts.append(f"stage {html.escape(stage)} (no MLflow run found)")
    if section.params:
        parts.append("params.yaml: " + ", ".join(f"<code>{html.escape(p)}</code>" for p in section.params))
    return f'<p class="meta">{" · ".join(parts)}</p>' if parts else ""


def render_section(section: Section, root: Path, stage_runs: dict[str, dict]) -> str:
    body = [f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>', _links(section, stage_runs)]
    for table in section.tables:
        path = root / table
        body.append(markdown_html(path.read_text()) if path.exists() else
                    f'<p class="missing">{html.escape(table)} not found: run '
                    f'{"`make study`" if section.key == "scorecard" else "`make demo`"}.</p>')
    if section.key == "compute":
        body.append(_compute(root, stage_runs))
    if section.key == "data":
        body.append(_data_gate(root))
    body += [image_html(p, root) for p in _paths(root, section.figures)]
    return "\n".join(body) + "</section>"


def build_report(root: Path, stage_runs: dict[str, dict] | None = None, title: str = "latlab results") -> str:
    """The page for the run whose outputs are under `root`.

    `stage_runs`: DVC stage -> {"url": link to its MLflow run, "duration_s": run seconds} (latlab.tracking
    .latest_stage_runs); without it the page has no run links or stage times."""
    stage_runs = stage_runs or {}
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title.split(":")[0])}</a>' for s in SECTIONS)
    sections = "\n".join(render_section(s, root, stage_runs) for s in SECTIONS)
    return page_html(title, f"<nav>{nav}</nav>\n{sections}")
