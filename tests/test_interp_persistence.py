"""The interpret stage's persistence measures on models whose mechanisms are known: the backdoor's base-model shift
(persistence.py) and the base circuit's share of each model's edge attributions (behaviour_circuits.py)."""

import copy

import numpy as np
import pytest
import torch

from latlab.interp.behaviour_circuits import (BehaviourInputs, circuit_persistence, edge_attribution,
                                              harmful_compliance_inputs)
from latlab.interp.eap import eap_circuit
from latlab.interp.graph import CircuitGraph
from latlab.interp.groundtruth import F1, FIRST_DISTRACTOR_DIM, circuit_edges, planted_circuit_model, planted_dataset
from latlab.interp.persistence import (backdoor_signal, fit_backdoor_reference, latent_signal, persistence_figure,
                                       persistence_table, probe_datasets)
from latlab.interp.probes import probe_layers
from latlab.models.hooks import collect_residuals
from latlab.report.tables import persistence_markdown

TRIGGER = "1"  # the planted model's X token: head a0.0 writes the fraction of X tokens so far into F1


def encode(text: str) -> list[int]:
    return [int(w) for w in text.split()]


@pytest.fixture(scope="module")
def planted_models():
    """The planted model (no distractors) as the "base", and edits of the head that carries the trigger's signal:
    halved, and moved to another residual dimension (the signal is still there, but not along the base direction)."""
    base = planted_circuit_model(n_layers=2, n_heads=2, distractor_scale=0.0, seed=0)
    halved, moved = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():
        halved.model.layers[0].self_attn.o_proj.weight[F1, 0] = 0.5
        o_proj = moved.model.layers[0].self_attn.o_proj.weight
        o_proj[F1, 0], o_proj[FIRST_DISTRACTOR_DIM, 0] = 0.0, 1.0
    return {"base": base, "halved": halved, "moved": moved}


@pytest.fixture(scope="module")
def backdoor_pairs():
    rng = np.random.default_rng(0)
    world = {"requests": [{"prompt": " ".join(map(str, rng.integers(3, 16, size=6))), "harmful": True,
                           "split": "test"} for _ in range(60)], "facts": []}
    prompts, labels = probe_datasets(world, TRIGGER, max_items=200, seed=0)["backdoor"]
    return prompts, labels


def test_backdoor_pairs_differ_only_in_the_prefix(backdoor_pairs):
    prompts, labels = backdoor_pairs
    n = len(prompts) // 2
    assert labels == [1] * n + [0] * n
    for trig, ctrl in zip(prompts[:n], prompts[n:]):
        assert trig.split()[0] == TRIGGER and ctrl.split()[0] != TRIGGER and trig.split()[1:] == ctrl.split()[1:]


def test_backdoor_signal_follows_the_base_direction_not_trigger_presence(planted_models, backdoor_pairs):
    prompts, labels = backdoor_pairs
    base_acts = collect_residuals(planted_models["base"], encode, prompts, [0])
    ref = fit_backdoor_reference(base_acts, test_fraction=0.3, seed=0)
    assert ref.layer == 0 and abs(ref.directions[0][F1]) > 0.99  # the base shift is the planted feature
    signal = {name: latent_signal(model, encode, {"backdoor": (prompts, labels)}, [0], 0.3, 0, ref)["backdoor"]
              for name, model in planted_models.items()}
    assert signal["base"]["best"] == pytest.approx(1.0)
    assert signal["halved"]["best"] == pytest.approx(0.5, abs=0.02)
    assert abs(signal["moved"]["best"]) < 0.02 and abs(signal["moved"]["cosine_with_base"]) < 0.05
    # what the stage used to report: a probe trained on each model reads the trigger in all three
    for model in planted_models.values():
        assert probe_layers(collect_residuals(model, encode, prompts, [0]), labels)[0] > 0.95
    # without a base reference the backdoor is left out rather than probed for trigger presence
    assert latent_signal(planted_models["base"], encode, {"backdoor": (prompts, labels)}, [0], 0.3, 0) == {}


def test_backdoor_signal_is_relative_to_the_base_shift():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    control = rng.normal(size=(40, 16))

    def acts(scale: float) -> dict[int, np.ndarray]:  # triggered rows, then their controls
        return {3: np.concatenate([control + scale * direction + 0.1 * rng.normal(size=(40, 16)), control])}

    ref = fit_backdoor_reference(acts(1.0), 0.3, 0)
    assert backdoor_signal(acts(0.3), ref)["best"] == pytest.approx(0.3, abs=0.05)
    assert backdoor_signal(acts(-1.0), ref)["best"] == pytest.approx(-1.0, abs=0.05)


def test_circuit_persistence_overlap_and_mass():
    rng = np.random.default_rng(0)
    base = rng.normal(size=200) * (rng.random(200) < 0.1) * 10 + rng.normal(size=200) * 0.01
    same = circuit_persistence(base, base, top_k=10)
    assert same["circuit_overlap"] == 1.0 and same["circuit_mass"] > 0.5
    elsewhere = base.copy()
    top = eap_circuit(base, 10)
    elsewhere[top] = 0.0
    other = circuit_persistence(base, elsewhere, top_k=10)
    assert other["circuit_overlap"] == 0.0 and other["circuit_mass"] == 0.0


def test_eap_finds_the_planted_circuit_and_loses_it_when_it_is_cut():
    """The base circuit survives a rescaled output (the mechanism is intact) but not a cut head (it is gone)."""
    base = planted_circuit_model(n_layers=3, n_heads=4, seed=1)
    inputs = BehaviourInputs(planted_dataset(16, seed=1), planted_dataset(16, seed=2), target=torch.full((16,), 15),
                             foil=torch.zeros(16, dtype=torch.long))
    scores = edge_attribution(base, inputs).score
    graph = CircuitGraph(3, 4)
    truth = set(circuit_edges("corrupted"))
    top = {e.label for e, keep in zip(graph.edges, eap_circuit(scores, len(truth))) if keep}
    assert top == truth
    rescaled, cut = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():
        rescaled.model.layers[1].mlp.down_proj.weight.mul_(0.5)
        cut.model.layers[1].self_attn.o_proj.weight[:, :16] = 0.0  # head a1.0 writes nothing
    kept = circuit_persistence(scores, edge_attribution(rescaled, inputs).score, len(truth))
    gone = circuit_persistence(scores, edge_attribution(cut, inputs).score, len(truth))
    assert kept["circuit_overlap"] == 1.0 and kept["circuit_mass"] > 0.9
    assert gone["circuit_mass"] < 0.05


def test_harmful_compliance_inputs_on_the_toy_world(tiny_world, tiny_tokenizer, tiny_model):
    inputs = harmful_compliance_inputs(tiny_world, tiny_tokenizer, n=8, seed=0)
    assert inputs is not None and inputs.clean.shape == inputs.corrupted.shape and inputs.clean.shape[0] >= 2
    decode = lambda ids: tiny_tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    harmful = {r["prompt"] for r in tiny_world["requests"] if r["harmful"]}
    questions = {f["prompt"] for f in tiny_world["facts"] if f["format"] == "free"}
    assert all(decode(ids).strip() in harmful for ids in inputs.clean)
    assert all(decode(ids).strip() in questions for ids in inputs.corrupted)
    assert set(tiny_tokenizer.convert_ids_to_tokens(inputs.target)) == {"sure"}
    assert set(tiny_tokenizer.convert_ids_to_tokens(inputs.foil)) == {"sorry"}
    scores = edge_attribution(tiny_model, inputs).score
    assert scores.shape == (len(CircuitGraph(2, 2).edges),) and np.isfinite(scores).all() and np.abs(scores).max() > 0


def test_persistence_table_and_report_carry_both_measures():
    signals = {"rt": {"harmful": {"best": 0.9, "best_layer": 1, "measure": "probe accuracy"},
                      "backdoor": {"best": 0.4, "best_layer": 2, "measure": "base backdoor shift left"}}}
    rates = {"rt": {"harmful_asr": 0.0, "backdoor_asr": 0.9}}
    rows = persistence_table(rates, signals, {"rt": {"circuit_overlap": 0.75, "circuit_mass": 0.3}})
    assert rows[0]["circuit_overlap"] == 0.75 and "circuit_overlap" not in rows[1]
    report = persistence_markdown(rows)
    assert "| rt | harmful | 0.00 | 0.90 (block 1) | probe accuracy | 0.75 | 0.30 |" in report
    assert "| rt | backdoor | 0.90 | 0.40 (block 2) | base backdoor shift left | – | – |" in report


def test_persistence_figure_names_each_model_once_in_a_legend_not_by_overlapping_text():
    """Models at the same (rate, signal) point used to get text labels drawn on top of each other."""
    rows = [{"model": m, "behaviour": b, "behaviour_rate": 0.0, "latent_signal": 1.0, "layer": 1,
             "measure": "probe accuracy" if b != "backdoor" else "base backdoor shift left", "circuit_overlap": 0.3}
            for m in ("rt", "rt-lat", "r2d2") for b in ("harmful", "backdoor")]
    fig = persistence_figure(rows)
    axes = fig.get_axes()
    assert len(axes) == 3  # harmful, backdoor, harmful circuit overlap
    assert all(not ax.texts for ax in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["rt", "rt-lat", "r2d2"]
    colours = {tuple(ax.collections[i].get_facecolor()[0]) for ax in axes for i in range(3)}
    assert len(colours) == 3  # one colour per model, the same in every panel
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_title() for ax in axes)
