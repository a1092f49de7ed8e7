"""latlab.report.plots: axis scales chosen per series, labels with units, legends outside the data, and the ASR
matrix drawn as a heatmap (the Figure objects are inspected, nothing is compared pixel by pixel)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latlab.report.plots import asr_heatmap_figure, metric_bars_figure, plt, training_curve_figure, y_scale


def _history(**series: list[float]) -> list[dict]:
    steps = len(next(iter(series.values())))
    return [{"step": i, "lr": 1e-3, **{k: v[i] for k, v in series.items()}} for i in range(steps)]


def _legend_outside(fig, ax) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend()
    return legend is not None and legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1



@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_a_negative_loss_gets_a_linear_axis_and_a_positive_one_a_log_axis():
    # gradient ascent on the forget set: the total loss goes negative (it was invisible on the old log axis)
    ascent = training_curve_figure(_history(loss=[0.5, -0.4, -2.0], forget_ce=[2.0, 3.1, 4.5], retain=[1.0, .9, .8]),
                                   "unlearn@ga")
    (ax,) = ascent.axes
    assert ax.get_yscale() == "linear"
    assert {line.get_label() for line in ax.get_lines()} == {"loss", "forget_ce", "retain"}
    descent = training_curve_figure(_history(loss=[3.0, 1.0, 0.2], retain=[1.0, 0.5, 0.1]), "refusal")
    assert descent.axes[0].get_yscale() == "log"
    assert y_scale({"loss": [1.0, float("nan"), 0.5]}, losses=True) == "log"  # a missing value does not count
    assert y_scale({"loss": [1.0, 0.0]}, losses=True) == "linear"


def test_preference_accuracy_and_margin_are_not_drawn_as_losses():
    fig = training_curve_figure(_history(loss=[0.7, 0.5, 0.3], dpo=[0.69, 0.5, 0.3], pref_acc=[0.4, 0.7, 0.9],
                                         margin=[-0.1, 0.4, 1.2]), "backdoor_removal@dpo_lat")
    by_series = {line.get_label(): ax for ax in fig.axes for line in ax.get_lines()}
    assert by_series["loss"] is by_series["dpo"]
    assert by_series["pref_acc"] is not by_series["loss"] and by_series["margin"] is not by_series["loss"]
    assert by_series["pref_acc"].get_yscale() == by_series["margin"].get_yscale() == "linear"
    assert "accuracy" in by_series["pref_acc"].get_ylabel() and "(fraction)" in by_series["pref_acc"].get_ylabel()
    assert "margin" in by_series["margin"].get_ylabel() and "loss" not in by_series["margin"].get_ylabel()
    assert "loss" in by_series["loss"].get_ylabel() and "nats" in by_series["loss"].get_ylabel()
    assert fig.axes[-1].get_xlabel() == "optimizer step"
    assert fig.get_suptitle() == "backdoor_removal@dpo_lat"
    for ax in fig.axes:
        assert ax.get_title() and ax.get_ylabel()
        assert _legend_outside(fig, ax)


def test_behaviour_bars_have_labels_units_and_an_outside_legend():
    results = {"base": {"harmful_asr": 0.9, "benign_compliance": 1.0},
               "rt": {"harmful_asr": 0.1, "benign_compliance": 0.8}}
    fig = metric_bars_figure(results, ["harmful_asr", "benign_compliance"], "behaviour", "rate (fraction)")
    (ax,) = fig.axes
    assert ax.get_title() == "behaviour"
    assert ax.get_xlabel() == "metric" and ax.get_ylabel() == "rate (fraction)"
    assert _legend_outside(fig, ax)


def test_asr_matrix_is_a_models_by_attacks_heatmap_with_asr_and_incoherent_rate_in_each_cell():
    results = {"base": {"asr.direct": 0.9, "incoherent.direct": 0.0, "asr.gcg": 1.0, "incoherent.gcg": 0.05},
               "rt": {"asr.direct": 0.1, "incoherent.direct": 0.2, "asr.gcg": 0.4, "incoherent.gcg": 0.3},
               "rt-lat": {"asr.direct": 0.0, "incoherent.direct": 0.1}}  # gcg not run on it
    fig = asr_heatmap_figure(results, ["direct", "gcg"], "ASR")
    ax = fig.axes[0]
    (image,) = ax.get_images()
    cells = np.ma.filled(image.get_array(), np.nan)
    assert cells.shape == (3, 2)
    assert cells[1, 1] == pytest.approx(0.4) and math.isnan(float(cells[2, 1]))
    assert image.get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["base", "rt", "rt-lat"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["direct", "gcg"]
    texts = {t.get_text() for t in ax.texts}
    assert {"0.40\nincoh. 0.30", "0.10\nincoh. 0.20", "n/a"} <= texts
    assert ax.get_xlabel() == "attack" and ax.get_ylabel() == "model" and ax.get_title() == "ASR"
    assert "fraction" in fig.axes[1].get_ylabel()  # the colour bar says what the colour means

