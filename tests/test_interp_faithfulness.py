"""Circuit faithfulness (MIB's CPR / CMD) and bootstrap stability (latlab.interp.faithfulness), and fact recall as a
behaviour (issue 19, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latlab.interp.behaviour_circuits import (BehaviourInputs, behaviour_setup, circuit_faithfulness,
                                              edge_attribution, fact_recall_inputs)
from latlab.interp.faithfulness import bootstrap_jaccard, cpr_cmd, faithfulness_curve
from latlab.interp.groundtruth import circuit_edges, planted_circuit_model, planted_dataset
from latlab.interp.render import plot_faithfulness

FRACTIONS = [0.01, 0.02, 0.05, 0.1, 0.5]


@pytest.fixture(scope="module")
def planted():
    model = planted_circuit_model(n_layers=3, n_heads=4, seed=1)
    inputs = BehaviourInputs(planted_dataset(16, seed=1), planted_dataset(16, seed=2), torch.full((16,), 15),
                             torch.zeros(16, dtype=torch.long))
    return model, inputs


def test_cpr_and_cmd_are_the_areas_on_a_hand_curve():
    curve = {"fraction": [0.0, 0.5, 1.0], "faithfulness": [0.0, 1.5, 1.0]}
    # CPR: 0.5 * 1.5 / 2 + 0.5 * 2.5 / 2; CMD: |1 - f| = 1, 0.5, 0 -> 0.5 * 1.5 / 2 + 0.5 * 0.5 / 2
    assert cpr_cmd(curve) == pytest.approx({"cpr": 1.0, "cmd": 0.5})


def test_the_planted_circuit_is_faithful_once_its_edges_are_in(planted):
    model, inputs = planted
    setup = behaviour_setup(model, inputs)
    scores = edge_attribution(model, inputs).score
    curve = faithfulness_curve(setup, scores, FRACTIONS)
    n_truth = len(circuit_edges("corrupted"))
    f = dict(zip(curve["edges"], curve["faithfulness"]))
    assert f[0] == 0.0 and f[setup.em.n_edges] == pytest.approx(1.0)
    # isolated distractors: every budget that holds the circuit's edges reproduces the model (to the ~1e-8 of the
    # planted model's near-identity norms), none below: a partial circuit misses (f = 0 at 3 edges) or overshoots
    # (f = 1.75 with 5 of the 6 edges)
    assert all(value == pytest.approx(1.0, abs=1e-6) for k, value in f.items() if k >= n_truth)
    assert all(abs(value - 1) > 0.1 for k, value in f.items() if k < n_truth)
    summary = cpr_cmd(curve)
    assert summary["cpr"] > 0.9 and summary["cmd"] < 0.1


def test_bootstrap_jaccard_is_one_for_a_circuit_every_resample_finds(planted, tmp_path):
    model, inputs = planted
    n_truth = len(circuit_edges("corrupted"))
    stable = bootstrap_jaccard(lambda index: behaviour_setup(model, inputs, index), len(inputs.clean), n_truth,
                               samples=5, seed=0)
    assert stable == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0, "samples": 5}
    # beyond the circuit every edge scores 0: the tail of a larger top-k is arbitrary ties, not the behaviour
    result = circuit_faithfulness(model, inputs, FRACTIONS, top_k=n_truth, bootstrap_samples=3, seed=0)
    assert result["bootstrap_jaccard"]["mean"] == 1.0 and result["pairs"] == 16
    assert plot_faithfulness({"planted": result}, tmp_path / "f.png").stat().st_size > 0


def test_a_behaviour_the_model_does_not_show_has_no_faithfulness(planted):
    model, inputs = planted
    same = BehaviourInputs(inputs.clean, inputs.corrupted, inputs.target, inputs.target)  # target == foil
    with pytest.raises(ValueError, match="metric is the same"):
        faithfulness_curve(behaviour_setup(model, same), np.ones(behaviour_setup(model, same).em.n_edges), FRACTIONS)


def test_fact_recall_inputs_contrast_two_entities_answers(tiny_world, tiny_tokenizer, tiny_model):
    inputs = fact_recall_inputs(tiny_world, tiny_tokenizer, n=8, seed=0)
    assert inputs is not None and inputs.clean.shape == inputs.corrupted.shape and len(inputs.target) >= 2
    decode = lambda ids: tiny_tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    held_out = {f["prompt"]: f for f in tiny_world["facts"]
                if f["format"] == "free" and f["domain"] == "general" and f["split"] != "train"}
    for clean, corrupted, target, foil in zip(inputs.clean, inputs.corrupted, inputs.target, inputs.foil):
        a, b = held_out[decode(clean)], held_out[decode(corrupted)]
        assert a["entity"] != b["entity"] and target != foil
        assert tiny_tokenizer.convert_ids_to_tokens([int(target), int(foil)]) == [a["answer"].split()[0],
                                                                                  b["answer"].split()[0]]
    scores = edge_attribution(tiny_model, inputs).score
    assert np.isfinite(scores).all()
