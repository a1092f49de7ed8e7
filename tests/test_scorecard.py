"""latlab.report.scorecard on synthetic per-seed metrics laid out as the pipeline writes them (metrics/evaluate.json,
unlearning_eval.json, backdoor_removal/<m>.json, interpret.json, spawrious_evaluate.json, lat.json, r2d2.json):
claims that hold on every seed are supported, reversed ones refuted, mixed ones inconclusive, missing metrics named."""

import pytest

from latlab.report.scorecard import CLAIMS, build_scorecard, metric, MissingMetric, scorecard_markdown
from latlab.report.stats import INCONCLUSIVE, REFUTED, SUPPORTED

BOOTSTRAP = {"samples": 2000, "confidence": 0.95, "seed": 0, "min_seeds": 3}
UNLEARNING = ("ga", "graddiff", "npo", "simnpo", "whp", "rmu")  # the methods with a LAT twin
ANTI_STEERABLE = "Steering vectors are unreliable: where a vector steers on average, some inputs are anti-steerable"


def steering_result(anti: float, behaviour_effect: float, spearman: dict) -> dict:
    """One (vector, concept) analysis of interpret.json: its anti-steerable fraction, behaviour rates 0.3 and
    0.3 + behaviour_effect at the smallest and largest multiplier, ID/OOD Spearman per variant."""
    return {"baseline": {"anti_steerable_fraction": anti, "behaviour_rate_at_min": 0.3,
                         "behaviour_rate_at_max": 0.3 + behaviour_effect}, "id_ood_spearman": spearman}


def seed_metrics(holds: int, jitter: float) -> dict:
    """One seed's metrics tree where every claim holds (holds=+1) or is reversed (holds=-1), each value moved by
    `jitter` (a seed's noise, much smaller than the effects)."""
    g, j = holds, jitter
    rt = {"asr.prefill": 0.5 + j, "asr.gcg_individual": 0.5 + j, "asr.latent": 0.5 + j, "benign_compliance": 0.9 + j,
          "backdoor_asr": 0.5 + 0.4 * g + j, "harmful_asr": 0.5 - 0.4 * g + j, "n.prefill": 40}
    lat = {"asr.prefill": 0.5 - 0.4 * g + j, "asr.gcg_individual": 0.5 - 0.4 * g + j, "asr.latent": 0.5 - 0.4 * g + j,
           "benign_compliance": 0.9 + 0.1 * g + j}
    unlearned = {m: {"relearn.free_recall": 0.5 + j, "extract.best_of": 0.5 + 0.4 * g + j,
                     "latent.max_acc": 0.6 + 0.2 * g + j} for m in UNLEARNING}
    unlearned |= {f"{m}_lat": {"relearn.free_recall": 0.5 - 0.4 * g + j} for m in UNLEARNING}
    unlearned["oracle"] = {"extract.best_of": 0.5, "latent.max_acc": 0.6}
    removal = {f"backdoor_removal/{m}.json": {"after.backdoor_asr": 0.5 + j} for m in ("sft", "dpo")}
    removal |= {f"backdoor_removal/{m}_lat.json": {"after.backdoor_asr": 0.5 - 0.4 * g + j} for m in ("sft", "dpo")}
    r2d2_tokens = 1e5 * (2.0 if g > 0 else 0.5) * (1 + j)
    return {
        "evaluate.json": {"rt": rt, "rt-lat": lat, "r2d2": {"asr.gcg_individual": 0.5 + j}},
        "lat.json": {"compute.forward_tokens": 1e5, "compute.backward_tokens": 1e5},
        "r2d2.json": {"compute.forward_tokens": r2d2_tokens, "compute.backward_tokens": r2d2_tokens},
        **removal,
        "unlearning_eval.json": {"results": unlearned, "verdict": {"whp": "suppressed"}},
        "interpret.json": {"steering": {"sycophancy": steering_result(0.3 if g > 0 else 0.0, 0.2,
                                                                      {"system_positive": 0.9 - 0.3 * g + j,
                                                                       "user_negative": 0.9 - 0.2 * g + j}),
                                        # moves no behaviour: its noise-level anti-steerable fraction must not count
                                        "power_seeking": steering_result(0.6, 0.0, {"system_positive": 0.9})},
                           "steering_persona_prompt": {"sycophancy": steering_result(
                               0.1 if g > 0 else 0.0, 0.5, {"system_positive": 0.9 - 0.3 * g + j})},
                           "tracr": {"reverse": {"acdc_auc": 0.9 + 0.08 * g + j / 10},
                                     "frac_prevs": {"acdc_auc": 0.9 + 0.09 * g + j / 10}}},
        "spawrious_evaluate.json": {"m2m_easy.groupdro": {"average_accuracy": 0.5 + j},
                                    "m2m_hard.groupdro": {"average_accuracy": 0.5 - 0.4 * g + j},
                                    "o2o_easy.erm": {"worst_group_accuracy": 0.2 + j},
                                    "o2o_easy.dfr": {"worst_group_accuracy": 0.2 + 0.3 * g + j}},
    }


def by_claim(rows):
    return {row["claim"]: row for row in rows}


def test_at_least_ten_claims_each_with_the_scorecard_fields():
    rows = build_scorecard({s: seed_metrics(+1, 0.01 * s) for s in range(3)}, **BOOTSTRAP)
    assert len(rows) == len(CLAIMS) >= 10
    for row in rows:
        assert {"claim", "source", "metric", "effect", "ci", "n_seeds", "verdict"} <= set(row), row["claim"]
        assert row["n_seeds"] == 3 and row["ci"][0] <= row["effect"] <= row["ci"][1]
        assert row["source"] and row["metric"]


def test_claims_that_hold_on_every_seed_are_supported():
    rows = build_scorecard({s: seed_metrics(+1, 0.01 * s) for s in range(3)}, **BOOTSTRAP)
    assert {r["claim"]: r["verdict"] for r in rows} == {r["claim"]: SUPPORTED for r in rows}


def test_reversed_claims_are_refuted():
    rows = by_claim(build_scorecard({s: seed_metrics(-1, 0.01 * s) for s in range(3)}, **BOOTSTRAP))
    # a fraction of 0 cannot lie below 0: "no input anti-steerable" leaves the claim unproven, not refuted
    assert rows.pop(ANTI_STEERABLE)["verdict"] == INCONCLUSIVE
    assert {c: r["verdict"] for c, r in rows.items()} == {c: REFUTED for c in rows}


def test_seeds_that_disagree_leave_every_claim_inconclusive():
    rows = build_scorecard({0: seed_metrics(+1, 0.0), 1: seed_metrics(-1, 0.01), 2: seed_metrics(+1, 0.02)},
                           **BOOTSTRAP)
    assert {r["claim"]: r["verdict"] for r in rows} == {r["claim"]: INCONCLUSIVE for r in rows}
    assert all(r["ci"][0] < r["effect"] < r["ci"][1] for r in rows if r["claim"] != ANTI_STEERABLE)


def test_effect_is_the_paired_within_seed_difference():
    rows = by_claim(build_scorecard({s: seed_metrics(+1, 0.1 * s) for s in range(3)}, **BOOTSTRAP))
    prefill = rows["Targeted LAT lowers prefill ASR relative to RT"]
    # both models move by the same seed noise (0, 0.1, 0.2): the difference is -0.4 on every seed
    assert prefill["per_seed"] == pytest.approx({"0": -0.4, "1": -0.4, "2": -0.4})
    assert prefill["ci"] == pytest.approx([-0.4, -0.4]) and prefill["verdict"] == SUPPORTED


def test_a_missing_metric_is_named_and_leaves_the_row_inconclusive():
    seeds = {s: seed_metrics(+1, 0.01 * s) for s in range(3)}
    for metrics in seeds.values():
        metrics["spawrious_evaluate.json"].pop("m2m_hard.groupdro")  # the default splits have no hard split
    del seeds[2]["backdoor_removal/dpo_lat.json"]
    seeds[1]["evaluate.json"]["rt-lat"]["asr.latent"] = float("nan")
    seeds[2]["evaluate.json"]["rt-lat"]["asr.latent"] = None
    rows = by_claim(build_scorecard(seeds, **BOOTSTRAP))
    hard = rows["Hard Spawrious splits defeat group-robust methods: GroupDRO accuracy drops from easy to hard"]
    assert hard["verdict"] == INCONCLUSIVE and hard["n_seeds"] == 0 and hard["effect"] is None
    assert "m2m_hard.groupdro" in hard["missing"]["0"] and "fewer than 3" in hard["reason"]
    dpo = rows["Trigger-free DPO removal with LAT lowers backdoor ASR more than without"]
    # two seeds agree, yet two runs are no verdict (study.min_seeds 3)
    assert dpo["n_seeds"] == 2 and dpo["verdict"] == INCONCLUSIVE and "not produced" in dpo["missing"]["2"]
    assert "fewer than 3" in dpo["reason"]
    latent = rows["Targeted LAT lowers latent ASR relative to RT"]
    assert latent["n_seeds"] == 1 and latent["verdict"] == INCONCLUSIVE and "finite" in latent["missing"]["1"]
    table = scorecard_markdown(list(rows.values()), 0.95, 3)  # header, separator, one line per claim
    assert table.count("\n| ") == len(CLAIMS) + 2 and "missing: seed 0: spawrious_evaluate.json" in table


def test_metric_lookup_names_file_and_key():
    with pytest.raises(MissingMetric, match=r"evaluate.json: rt.asr.gcg"):
        metric({"evaluate.json": {"rt": {}}}, "evaluate.json", "rt", "asr.gcg")
    assert metric({"a.json": {"x": {"y": 2}}}, "a.json", "x", "y") == 2.0


def test_asr_claims_show_each_models_incoherent_rate_beside_the_verdict():
    """A defence that 'wins' by breaking the model is visible: the incoherent rates ride beside the ASR claims (mean
    over the seeds that have them, with its bootstrap interval and N) and leave the verdict alone."""
    seeds = {s: seed_metrics(+1, 0.01 * s) for s in range(3)}
    for s, metrics in seeds.items():
        metrics["evaluate.json"]["rt-lat"]["incoherent.gcg_individual"] = 0.9 + 0.03 * s
        metrics["evaluate.json"]["rt"]["incoherent.gcg_individual"] = 0.1
    del seeds[2]["evaluate.json"]["rt"]["incoherent.gcg_individual"]
    rows = by_claim(build_scorecard(seeds, **BOOTSTRAP))
    gcg = rows["Targeted LAT lowers gcg_individual ASR relative to RT"]
    expected = {"incoherent rt-lat": (0.93, [0.9, 0.96], 3), "incoherent rt": (0.1, [0.1, 0.1], 2)}
    for name, (mean, ci, n) in expected.items():
        value = gcg["beside"][name]
        assert (value["mean"], value["ci"], value["n_seeds"]) == (pytest.approx(mean), pytest.approx(ci), n)
    assert gcg["verdict"] == SUPPORTED  # beside values do not enter the verdict
    assert "beside" not in rows["Targeted LAT lowers prefill ASR relative to RT"]  # no rates in these metrics
    assert ("incoherent rt-lat 0.930 [0.900, 0.960] (3), incoherent rt 0.100 [0.100, 0.100] (2) |"
            in scorecard_markdown(list(rows.values()), 0.95, 3))


def test_steering_claims_read_only_vectors_that_steer():
    """A vector that moves no behaviour has slopes of noise (half "anti-steerable", ranks uncorrelated): the steering
    claims read the (vector, concept) pairs whose behaviour rate moves by STEERS or more, and name the absence when
    none does."""
    seeds = {s: seed_metrics(+1, 0.01 * s) for s in range(3)}
    rows = by_claim(build_scorecard(seeds, **BOOTSTRAP))
    # caa/sycophancy (0.3) and persona_prompt/sycophancy (0.1) steer; caa/power_seeking (0.6) moves nothing
    assert rows[ANTI_STEERABLE]["per_seed"] == pytest.approx({"0": 0.3, "1": 0.3, "2": 0.3})
    assert rows[ANTI_STEERABLE]["beside"]["(vector, concept) pairs that steer"]["mean"] == 2
    for metrics in seeds.values():
        for key in ("steering", "steering_persona_prompt"):
            for result in metrics["interpret.json"][key].values():
                result["baseline"]["behaviour_rate_at_max"] = result["baseline"]["behaviour_rate_at_min"]
    row = by_claim(build_scorecard(seeds, **BOOTSTRAP))[ANTI_STEERABLE]
    assert row["verdict"] == INCONCLUSIVE and "no steering vector moves" in row["missing"]["0"]
