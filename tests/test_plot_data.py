"""Results as DVC plot data (latlab.report.plot_data, written by the `report` stage) and their offline comparison
across revisions (latlab.report.plots_diff, from `dvc plots diff --json`)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from latlab.report.plot_data import write_result_plots

ROOT = Path(__file__).resolve().parents[1]


def _metrics(folder: Path, gcg_asr: float) -> Path:
    """The three metrics files the plot data comes from, tiny: two models, one unlearned method, one budget curve."""
    folder.mkdir(parents=True, exist_ok=True)
    evaluate = {"rt": {"asr.gcg": 1.0, "incoherent.gcg": 0.0, "asr.latent": 0.5, "asr.latent.eps_1": 0.9,
                       "benign_compliance": 1.0},
                "rt-lat": {"asr.gcg": gcg_asr, "incoherent.gcg": 0.125, "asr.latent": 0.0}}
    unlearning = {"results": {"ga": {"qa.free_recall": 0.4, "general.perplexity": 1.06, "extract.best_of": 0.6},
                              "oracle": {"qa.free_recall": 0.0, "extract.best_of": 0.05}},
                  "summary": {"ga": {"values": {"qa.free_recall": 0.4, "extract.best_of": 0.6}, "label": "suppressed"}}}
    budget = {"rt-lat": {"gcg_steps": {"budgets": [0, 5, 10], "asr": [0.0, gcg_asr, 0.5],
                                       "incoherent": [1.0, 0.0, 0.0], "auc": 0.3}}}
    for name, data in (("evaluate.json", evaluate), ("unlearning_eval.json", unlearning),
                       ("attack_budget.json", budget)):
        (folder / name).write_text(json.dumps(data))
    return folder


def _csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_plot_data_follows_from_the_metrics(tmp_path):
    out = tmp_path / "plots" / "results"
    (out / "attack_budget" / "gone_curve").mkdir(parents=True)  # a curve no longer in the metrics: removed
    written = write_result_plots(_metrics(tmp_path / "metrics", gcg_asr=0.25), out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "asr.csv", "attack_budget/gcg_steps/rt-lat.csv", "unlearning.csv"]
    assert not (out / "attack_budget" / "gone_curve").exists()
    # one row per model x attack; asr.latent.eps_1 is a sub-result of `latent`, not an attack; no incoherent: empty
    assert _csv(out / "asr.csv") == [
        {"model_attack": "rt / gcg", "model": "rt", "attack": "gcg", "asr": "1.0", "incoherent": "0.0"},
        {"model_attack": "rt / latent", "model": "rt", "attack": "latent", "asr": "0.5", "incoherent": ""},
        {"model_attack": "rt-lat / gcg", "model": "rt-lat", "attack": "gcg", "asr": "0.25", "incoherent": "0.125"},
        {"model_attack": "rt-lat / latent", "model": "rt-lat", "attack": "latent", "asr": "0.0", "incoherent": ""}]
    # the evaluations the verdict judged on (summary), for every model incl. the oracle; perplexity is not one
    assert [(r["method_evaluation"], float(r["value"])) for r in _csv(out / "unlearning.csv")] == [
        ("ga / qa.free_recall", 0.4), ("ga / extract.best_of", 0.6),
        ("oracle / qa.free_recall", 0.0), ("oracle / extract.best_of", 0.05)]
    assert _csv(out / "attack_budget" / "gcg_steps" / "rt-lat.csv") == [
        {"budget": "0", "asr": "0.0", "incoherent": "1.0"}, {"budget": "5", "asr": "0.25", "incoherent": "0.0"},
        {"budget": "10", "asr": "0.5", "incoherent": "0.0"}]


def test_committed_plot_data_is_what_the_committed_metrics_give(tmp_path):
    """plots/results/ is committed like metrics/: it must be the report stage's output for metrics/."""
    write_result_plots(ROOT / "metrics", tmp_path)
    committed = ROOT / "plots" / "results"
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.csv")}
    assert fresh == {p.relative_to(committed): p.read_text() for p in committed.rglob("*.csv")}, \
        "plots/results/ is stale: rerun the report stage (dvc repro report)"


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _row(page: str, first_cell: str) -> list[str]:
    """The other cells of the (first) table row of `page` that starts with `first_cell`."""
    row = re.search(rf"<tr>\s*<td>{re.escape(first_cell)}</td>(.*?)</tr>", page, re.S).group(1)
    return re.findall(r"<td>(.*?)</td>", row)


def test_plots_diff_shows_both_revisions_values_offline(tmp_path, monkeypatch):
    """Two commits of plot data, this repository's dvc.yaml `plots:` definitions: the page has both revisions'
    values and their difference, and loads nothing from the network."""
    from latlab.report import plots_diff

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    plots_section = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots_section}))
    revs = []
    for gcg_asr in (0.25, 0.75):
        write_result_plots(_metrics(tmp_path / f"metrics_{gcg_asr}", gcg_asr), repo / "plots" / "results")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", f"gcg {gcg_asr}")
        revs.append(_git(repo, "rev-parse", "--short", "HEAD"))
    monkeypatch.chdir(repo)
    plots_diff.main([*revs, "--out", str(tmp_path / "diff")])
    page = (tmp_path / "diff" / "index.html").read_text()
    asr, budget = page.split("<h2>plots/results/attack_budget/gcg_steps/rt-lat.csv</h2>")
    assert _row(asr, "rt-lat / gcg") == ["0.25", "0.75", "+0.5"]  # first revision, second, difference
    assert _row(asr, "rt / gcg") == ["1", "1", "+0"]
    assert _row(budget, "5") == ["0.25", "0.75", "+0.5"]
    assert all(rev in page for rev in revs)
    assert "https://" not in page and "<script" not in page
    assert len(list((tmp_path / "diff").glob("*.png"))) == 3  # asr, unlearning, one budget curve


def test_plots_diff_bars_of_rates_span_zero_to_one_even_when_all_are_zero():
    """All-zero ASR bars (an untrained smoke model) were drawn on an autoscaled -0.04..0.04 axis."""
    from latlab.report.plots_diff import Plot, figure

    points = [{"rev": rev, "model_attack": f"rt / {attack}", "asr": "0"} for rev in ("a", "b")
              for attack in ("direct", "gcg")]
    plot = Plot("asr", "ASR", "asr", "model_attack", "ASR", "model / attack", True, points)
    assert figure(plot, ["a", "b"]).axes[0].get_xlim() == (0.0, 1.0)
    plot.points = [{**p, "asr": "3.5"} for p in points]  # not a rate: from 0 to what the data needs
    low, high = figure(plot, ["a", "b"]).axes[0].get_xlim()
    assert low == 0.0 and high >= 3.5
