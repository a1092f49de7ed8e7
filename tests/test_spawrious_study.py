"""latlab.report.spawrious_study: the Spawrious grid over seeds as mean, interval and N per cell (issue 18)."""

from __future__ import annotations

import json

import pytest

from latlab.report.spawrious_study import DIAL_TITLE, dial_rho, load_cells, markdown, plot, plot_dial, summarize

BOOTSTRAP = {"samples": 2000, "confidence": 0.95, "seed": 0}
RULES = ("average_val", "worst_class_val", "oracle_worst_group")


def _result(split, method, wga, selected=True):
    test = {"average_accuracy": 0.8, "worst_group_accuracy": wga, "counterfactual_flip_rate": 0.1}
    selection = {rule: {"step": 50 * (i + 1), "val": {}, "test": {**test, "worst_group_accuracy": wga + 0.1 * i}}
                 for i, rule in enumerate(RULES)} if selected else {}
    return {"split": split, "method": method, "test": test, "selection": selection}


def _write(root, seed, result):
    path = root / f"seed_{seed}" / "metrics" / "spawrious_train" / result["split"] / f"{result['method']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_cells_over_seeds_have_mean_interval_and_n(tmp_path):
    for seed, wga in enumerate((0.1, 0.2, 0.3)):
        _write(tmp_path, seed, _result("o2o_easy", "erm", wga))
        _write(tmp_path, seed, _result("m2m_hard", "dfr", 0.5))
    _write(tmp_path, 0, _result("o2o_hard", "jtt", 0.4, selected=False))  # one seed, no held-out set
    rows = {(r["split"], r["method"]): r for r in summarize(load_cells(tmp_path), BOOTSTRAP)}
    erm = rows[("o2o_easy", "erm")]
    assert erm["seeds"] == [0, 1, 2] and erm["worst_group_accuracy"]["n_seeds"] == 3
    assert erm["worst_group_accuracy"]["mean"] == pytest.approx(0.2)
    low, high = erm["worst_group_accuracy"]["ci"]
    assert 0.1 <= low < 0.2 < high <= 0.3  # 3 seeds: the interval lies within their range
    assert erm["selected.oracle_worst_group"]["mean"] == pytest.approx(0.4)
    assert rows[("m2m_hard", "dfr")]["worst_group_accuracy"]["ci"] == pytest.approx([0.5, 0.5])
    lone = rows[("o2o_hard", "jtt")]
    assert lone["seeds"] == [0] and not any(k.startswith("selected.") for k in lone)
    table = markdown(list(rows.values()), 0.95)
    assert "| o2o_easy | erm | 3 | 0.80 [0.80, 0.80] | 0.20 [" in table
    assert "| o2o_hard | jtt | 1 |" in table and table.splitlines()[2].count("WGA sel.") == 3
    lone_line = next(line for line in table.splitlines() if line.startswith("| o2o_hard | jtt"))
    assert lone_line.count("–") == 3  # the lone cell has no selection columns
    order = [line.split(" | ")[0][2:] for line in table.splitlines()[4:]]
    assert order == ["o2o_easy", "o2o_hard", "m2m_hard"]  # O2O first, easy before hard
    plot(list(rows.values()), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_an_empty_workdir_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the grid first"):
        load_cells(tmp_path)


def test_dial_curves_read_rho_from_the_split_names(tmp_path):
    for seed in range(3):
        for percent, wga in ((50, 0.9), (90, 0.6), (99, 0.1)):
            for method in ("erm", "dfr"):
                _write(tmp_path, seed, _result(f"dial_{percent}", method, wga + 0.01 * seed))
    rows = summarize(load_cells(tmp_path), BOOTSTRAP)
    assert sorted({dial_rho(r["split"]) for r in rows}) == [0.5, 0.9, 0.99]
    table = markdown(rows, 0.95, DIAL_TITLE)
    assert table.startswith("Spurious-strength dial") and "| dial_99 | erm | 3 | 0.80 [0.80, 0.80] | 0.11 [" in table
    plot_dial(rows, tmp_path / "dial.png")
    assert (tmp_path / "dial.png").stat().st_size > 0
    with pytest.raises(ValueError, match="'o2o_easy' is not a dial split"):
        dial_rho("o2o_easy")
