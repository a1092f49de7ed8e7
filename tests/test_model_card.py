"""latlab.report.model_card: the registry description of each model version."""

from latlab.report.model_card import EVALUATION_HEADING, evaluation_summary, training_card, with_evaluation


def test_training_card_says_what_where_from_and_how_much():
    card = training_card("rt-lat", "lat", {"made_by": "targeted LAT on RT", "parent": "latlab-rt"}, "abc123",
                         {"data/world": "d" * 32, "models/rt": "e" * 32, "src/latlab/training/lat.py": "f" * 32},
                         {"lat": {"epsilon": 1.5}}, {"compute.forward_tokens": 1000.0, "compute.backward_tokens": 500.0,
                                                     "wall_seconds": 38.2, "final_loss": 0.5}, "3")
    assert card.startswith("## rt-lat\n\ntargeted LAT on RT")
    assert "- parent: latlab-rt v3" in card and "commit: `abc123`" in card
    assert f"`data/world`: md5 `{'d' * 32}`" in card and "models/rt" in card and "training/lat.py" not in card
    assert "- compute.forward_tokens: 1,000" in card and "FLOP proxy" in card and "4,000" in card  # 2·1000 + 4·500
    assert '"epsilon": 1.5' in card


def test_evaluation_section_has_n_and_interval_and_is_replaced_not_stacked():
    metrics = {"harmful_asr": 0.0, "n.harmful": 20, "asr.prefill": 0.5, "n.prefill": 10, "asr.latent.eps_1": 0.2}
    summary = evaluation_summary(metrics, "test")
    assert "- harmful_asr: 0.00 (N 20, [0.00, 0.16])" in summary  # Wilson 95% upper bound for 0/20 is 0.161
    assert "- asr.prefill: 0.50 (N 10, [0.24, 0.76])" in summary
    assert "eps_1" not in summary  # the eps curve stays in the metrics
    card = with_evaluation(with_evaluation("## rt\n\ntext\n", summary), summary)
    assert card.count(EVALUATION_HEADING) == 1 and card.startswith("## rt\n\ntext\n\n")
