"""Offline `dvc plots diff`: the plot data of two (or more) revisions drawn with matplotlib on one self-contained
HTML page, each plot followed by a table of its values side by side.

    python -m latlab.report.plots_diff REV_A REV_B [--targets asr unlearning ...] [--out reports/plots_diff]
    python -m latlab.report.plots_diff REV          # REV against the workspace, as `dvc plots diff REV` does

A revision is anything `dvc plots diff` takes: a commit, branch or tag, or a DVC experiment name (`dvc exp show`).
By default the results plots of dvc.yaml's top-level `plots:` section (ASR, unlearning, attack budget; written by
the `report` stage, latlab.report.plot_data); `--targets` names other plots (e.g. plots/lat_loss.csv).

Why not DVC's own HTML: `dvc plots show/diff` writes a page that loads Vega, Vega-Lite and Vega-Embed from a CDN, so
offline it renders nothing. DVC's documented remedy is `--html-template` with locally served copies of those
libraries (treeverse/dvc#5679, #5694), which this project does not ship. `dvc plots diff --json --split` instead
prints, per plot, every revision's datapoints (each tagged `rev`) with the plot's title and axis labels; this module
draws those. DVC still resolves the revisions and the plot definitions, so the page shows what `dvc plots diff`
would. Writes OUT/index.html (figures inline as base64) and the PNGs beside it.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from latlab.report.html import image_html, markdown_html, page_html
from latlab.report.plots import legend_outside, plt, save_figure

# dvc.yaml top-level plot ids; "dvc.yaml::" because the bare folder also names its files as raw plots (each twice)
RESULT_PLOTS = ("asr", "unlearning", "dvc.yaml::plots/results/attack_budget")
OUT = Path("reports/plots_diff")
BAR_TEMPLATES = ("bar_horizontal", "bar_horizontal_sorted")  # category on y; any other template: a line in x
_DVC_META = ("rev", "filename", "field", "step")  # fields DVC adds to datapoints


@dataclass
class Plot:
    """One DVC plot: its id (dvc.yaml plot name or file path), labels, data fields and datapoints (dicts with a
    `rev` key; DVC gives values as strings). `bars`: category field on y, value on x (DVC's bar templates)."""

    id: str
    title: str
    x_field: str
    y_field: str
    x_label: str
    y_label: str
    bars: bool
    points: list[dict] = field(default_factory=list)


def dvc_plots_json(revs: list[str], targets: list[str], repo: Path = Path(".")) -> dict:
    """`dvc plots diff --json --split` for `revs` (run in `repo`): {"data": plot id -> [renderer], "errors": [...]}.
    Raises RuntimeError with DVC's message when the command fails (not a repository, unknown revision)."""
    command = [sys.executable, "-m", "dvc", "plots", "diff", "--json", "--split"]
    command += ["--targets", *targets, "--"] if targets else ["--"]
    done = subprocess.run(command + revs, cwd=repo, capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"dvc plots diff {' '.join(revs)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout)


def _encoded_field(spec, axis: str) -> str | None:
    """The data field a Vega-Lite spec encodes on `axis` (searching layers: DVC's line templates put y in a layer)."""
    if isinstance(spec, dict):
        encoding = spec.get("encoding", {})
        if isinstance(encoding.get(axis), dict) and isinstance(encoding[axis].get("field"), str):
            return encoding[axis]["field"]
        spec = list(spec.values())
    if isinstance(spec, list):
        for item in spec:
            found = _encoded_field(item, axis)
            if found:
                return found
    return None


def parse_plots(dvc_json: dict) -> list[Plot]:
    """The vega plots of `dvc_plots_json`'s output (images are skipped), in DVC's order."""
    plots = []
    for plot_id, renderers in dvc_json.get("data", {}).items():
        for renderer in renderers:
            if renderer.get("type") != "vega":
                continue
            content, anchors = renderer["content"], renderer["anchor_definitions"]
            bars = content.get("mark", {}).get("type") == "bar" if isinstance(content.get("mark"), dict) else False
            plots.append(Plot(plot_id, str(anchors.get("<DVC_METRIC_TITLE>") or plot_id),
                              _encoded_field(content, "x") or "", _encoded_field(content, "y") or "",
                              str(anchors.get("<DVC_METRIC_X_LABEL>", "")), str(anchors.get("<DVC_METRIC_Y_LABEL>", "")),
                              bars, list(anchors.get("<DVC_METRIC_DATA>", []))))
    return plots


def revisions(dvc_json: dict, requested: list[str]) -> list[str]:
    """The revisions as DVC names them in the data (one requested revision is compared with "workspace"), in DVC's
    order; `requested` when no plot loaded at all."""
    found = [rev for renderers in dvc_json.get("data", {}).values() for r in renderers for rev in r.get("revisions", [])]
    return list(dict.fromkeys(found)) or requested


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _key(plot: Plot) -> str:
    return plot.y_field if plot.bars else plot.x_field


def _value(plot: Plot) -> str:
    return plot.x_field if plot.bars else plot.y_field


def values_by_rev(plot: Plot, revs: list[str]) -> dict[str, dict[str, float]]:
    """category (bars) or x value (lines) -> rev -> value, in first-seen order; a rev without the row is absent."""
    table: dict[str, dict[str, float]] = {}
    for point in plot.points:
        if point.get("rev") in revs:
            table.setdefault(str(point.get(_key(plot))), {})[point["rev"]] = _number(point.get(_value(plot)))
    return table


def figure(plot: Plot, revs: list[str]):
    """Bars: one horizontal bar per revision in each category. Lines: value against x, one line per revision."""
    table = values_by_rev(plot, revs)
    keys = list(table)
    if plot.bars:
        height = 0.8 / max(1, len(revs))
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.13 * len(keys) * max(1, len(revs))))
        for i, rev in enumerate(revs):
            ax.barh([k + i * height for k in range(len(keys))], [table[k].get(rev, math.nan) for k in keys], height,
                    label=rev)
        ax.set_yticks([k + height * (len(revs) - 1) / 2 for k in range(len(keys))], keys, fontsize=7)
        ax.invert_yaxis()  # the file's first row at the top, as in the tables
        values = [v for row in table.values() for v in row.values() if not math.isnan(v)]
        if values and min(values) >= 0:  # bars from 0; rates on their whole range, so 0 reads as 0, not as -0.04..0.04
            ax.set_xlim(0, 1 if max(values) <= 1 else None)
    else:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for rev in revs:
            xs = [k for k in keys if rev in table[k]]
            ax.plot([_number(x) for x in xs], [table[x][rev] for x in xs], marker="o", label=rev)
    ax.set_xlabel(plot.x_label or plot.x_field)
    ax.set_ylabel(plot.y_label or plot.y_field)
    ax.set_title(plot.title if plot.title == plot.id else f"{plot.title}\n{plot.id}", fontsize=9)
    legend_outside(ax, title="revision")
    fig.tight_layout()
    return fig


def values_markdown(plot: Plot, revs: list[str]) -> str:
    """The plot's values, one column per revision ("–": absent there), and with two revisions the difference
    (second - first)."""
    table = values_by_rev(plot, revs)
    two = len(revs) == 2
    header = f"| {_key(plot)} | " + " | ".join(revs) + (" | Δ |" if two else " |")
    lines = [header, "|" + " --- |" * (len(revs) + 1 + two)]
    for key, by_rev in table.items():
        cells = ["–" if math.isnan(by_rev.get(r, math.nan)) else f"{by_rev[r]:.3g}" for r in revs]
        if two:
            delta = by_rev.get(revs[1], math.nan) - by_rev.get(revs[0], math.nan)
            cells.append("–" if math.isnan(delta) else f"{delta:+.3g}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _slug(plot_id: str) -> str:
    return re.sub(r"[^\w.-]+", "_", plot_id).strip("_")


def write_comparison(dvc_json: dict, revs: list[str], out: Path) -> Path:
    """out/index.html (and out/<plot>.png): every plot of `dvc_json` for `revs` with its values table; DVC's load
    errors (a plot absent in a revision, e.g. one older than the plot) listed at the top. Returns the page."""
    plots = parse_plots(dvc_json)
    out.mkdir(parents=True, exist_ok=True)
    body = [f"<p>Revisions: {', '.join(f'<code>{html.escape(r)}</code>' for r in revs)} "
            f"(<code>dvc plots diff --json</code>, drawn offline by latlab.report.plots_diff).</p>"]
    body += [f'<p class="missing">{html.escape(e.get("rev", "?"))}: {html.escape(e.get("name", "?"))}: '
             f'{html.escape(str(e.get("msg", e.get("type", ""))).splitlines()[0])}</p>'
             for e in dvc_json.get("errors", [])]
    for plot in plots:
        png = out / f"{_slug(plot.id)}.png"
        save_figure(figure(plot, revs), png)
        body += [f"<section><h2>{html.escape(plot.id)}</h2>", image_html(png, out),
                 markdown_html(values_markdown(plot, revs)), "</section>"]
    page = out / "index.html"
    page.write_text(page_html(f"dvc plots diff {' '.join(revs)}", "\n".join(body)))
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+", help="revisions or DVC experiment names; one: compared with the workspace")
    parser.add_argument("--targets", nargs="*", default=list(RESULT_PLOTS), help="plot ids or files (dvc.yaml)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for index.html and the PNGs")
    args = parser.parse_args(argv)
    dvc_json = dvc_plots_json(args.revs, args.targets)
    revs = revisions(dvc_json, args.revs)
    page = write_comparison(dvc_json, revs, args.out)
    print(f"{page}: {len(parse_plots(dvc_json))} plots, revisions {' vs '.join(revs)}, "
          f"{len(dvc_json.get('errors', []))} load errors")


if __name__ == "__main__":
    main()
