"""Steering reliability metrics (Tan et al. 2024) on a linear toy and on constructed data."""

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from latlab.interp import steering as st

WORDS = ["<pad>", "(", "A", ")", "yes", "B", "no", "q1", "q2", "q3", "q4", "you", "agree"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


def encode(text, system=None):
    """Raw word ids; a system prompt is plain text in front (this toy has no chat template)."""
    return [VOCAB[w] for w in (text if system is None else f"{system} {text}").split()]


@pytest.fixture(scope="module")
def linear_toy():
    """One block whose attention and MLP write nothing, RMSNorms that are the identity (huge eps): the last-position
    logits are W_U (embedding + m v), so the propensity is exactly linear in the steering multiplier m."""
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, rms_norm_eps=1e8, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        for norm in (model.model.layers[0].input_layernorm, model.model.layers[0].post_attention_layernorm,
                     model.model.norm):
            norm.weight.fill_(1e4)
        model.model.embed_tokens.weight.normal_()
        model.lm_head.weight.normal_()
    return model


def examples(n=8):
    out = []
    for i in range(n):
        yes_first = i % 2 == 0
        options = "( A ) yes ( B ) no" if yes_first else "( A ) no ( B ) yes"
        pos = "A" if i % 4 < 2 else "B"
        out.append(st.ABExample(f"q{1 + i % 4} {options} (", pos, "B" if pos == "A" else "A", pos == "A",
                                (pos == "A") == yes_first))
    return out


def test_steerability_slope_is_exact_on_linear_toy(linear_toy):
    exs = examples()
    v = torch.randn(16)
    props = st.propensities(linear_toy, encode, exs, v, layer=0)
    slopes = st.steerability_slopes(props, st.DEFAULT_MULTIPLIERS)
    W = linear_toy.lm_head.weight.detach()
    expected = np.array([float((W[VOCAB[e.positive]] - W[VOCAB[e.negative]]) @ v) for e in exs])
    np.testing.assert_allclose(slopes, expected, rtol=1e-4, atol=1e-4)
    # propensity is linear: residuals of the fit vanish
    m = np.array(st.DEFAULT_MULTIPLIERS)
    fit = props.mean(1, keepdims=True) + np.outer(slopes, m - m.mean())
    np.testing.assert_allclose(props, fit, atol=1e-3)


def test_caa_vector_is_mean_difference_at_the_answer_token(linear_toy):
    exs = [e for e in examples() if e.positive == "A"]
    v = st.caa_vector(linear_toy, encode, exs, layer=0)
    E = linear_toy.model.embed_tokens.weight.detach()
    torch.testing.assert_close(v, E[VOCAB["A"]] - E[VOCAB["B"]], rtol=1e-5, atol=1e-5)
    slopes = st.steerability_slopes(st.propensities(linear_toy, encode, exs, v, layer=0))
    W = linear_toy.lm_head.weight.detach()
    assert np.sign(slopes[0]) == np.sign(float((W[VOCAB["A"]] - W[VOCAB["B"]]) @ v))


def test_slopes_and_anti_steerable_fraction_on_constructed_propensities():
    m = np.array(st.DEFAULT_MULTIPLIERS)
    true = np.array([1.0, -1.0, 2.0, -0.5, 3.0, 0.25, -2.0, 0.5])
    props = 0.3 + np.outer(true, m) + np.random.default_rng(0).normal(size=(8, 1))  # per-example offsets
    slopes = st.steerability_slopes(props, m)
    np.testing.assert_allclose(slopes, true)
    summary = st.steerability_summary(slopes)
    assert summary["anti_steerable_fraction"] == pytest.approx(3 / 8)
    assert summary["steerability_mean"] == pytest.approx(true.mean())
    assert summary["steerability_median"] == pytest.approx(np.median(true))


def test_spurious_variance_split_on_synthetic_slopes():
    rng = np.random.default_rng(0)
    n = 400
    is_a = rng.random(n) < 0.5
    is_yes = rng.random(n) < 0.5
    slopes = 1.0 + 2.0 * is_a + 0.2 * rng.normal(size=n)  # only the letter matters
    out = st.spurious_variance(slopes, is_a, is_yes)
    assert out["r2_positive_is_A"] == pytest.approx(np.corrcoef(slopes, is_a)[0, 1] ** 2)
    assert out["r2_positive_is_A"] > 0.9 and out["r2_positive_is_yes"] < 0.02
    assert out["r2_both"] >= out["r2_positive_is_A"]
    both = 1.0 + 1.0 * is_a + 1.0 * is_yes  # two equal, independent factors: about half each, all together
    out = st.spurious_variance(both, is_a, is_yes)
    assert 0.35 < out["r2_positive_is_A"] < 0.65 and out["r2_both"] == pytest.approx(1.0)


def test_rank_correlation():
    x = np.array([0.1, 0.5, 0.2, 0.9])
    assert st.rank_correlation(x, x**3) == pytest.approx(1.0)
    assert st.rank_correlation(x, -x) == pytest.approx(-1.0)


def test_loaders_and_prompt_variants(tmp_path):
    rows = [{"question": "Do you like cats?\n\nChoices:\n (A) Yes\n (B) No", "answer_matching_behavior": " (A)",
             "answer_not_matching_behavior": " (B)"},
            {"question": "Is it fine?\n\nChoices:\n (A) No\n (B) Yes", "answer_matching_behavior": " (B)",
             "answer_not_matching_behavior": " (A)"}]
    path = tmp_path / "mwe.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    exs = st.load_mwe_jsonl(path)
    assert [(e.positive, e.positive_is_A, e.positive_is_yes, e.split) for e in exs] == [
        ("A", True, True, "train"), ("B", False, True, "test")]
    assert exs[0].prompt.endswith("Answer: (")
    world = st.from_records([{"prompt": "q1 ( A ) yes ( B ) no (", "answer_matching_behavior": "B",
                              "answer_not_matching_behavior": "A", "positive_is_A": False, "positive_is_yes": False,
                              "split": "test"}])
    assert world[0].negative == "A" and world[0].split == "test"
    q = st.ABExample("q1", "A", "B", True)
    assert st.prompt_variant(q, "user_positive", "you agree", "you refuse").prompt == "you agree q1"
    assert st.prompt_variant(q, "system_negative", "p", "n") == st.ABExample("q1", "A", "B", True, system="n")
    assert st.prompt_variant(q, "baseline", "p", "n") == q


def test_persona_variants_are_distinct_in_vocabulary_inputs(tiny_world, tiny_tokenizer):
    """Every persona concept of the world under the world tokenizer's chat template, with its own descriptions: the
    five variants of a concept question are five different token sequences (the system variant is a system message,
    not the user prefix) and no word falls out of the vocabulary."""
    from latlab.world.curriculum import yes_no_prompt

    encode = st.ChatEncode(tiny_tokenizer)
    system = tiny_tokenizer.convert_tokens_to_ids("<|system|>")
    concepts = {r["persona"]: r for r in tiny_world["concepts"]}
    assert len(concepts) >= 4
    for record in concepts.values():
        example = st.from_records([record])[0]
        shown = {v: st.example_ids(encode, st.prompt_variant(example, v, record["persona_positive"],
                                                             record["persona_negative"]), example.positive)
                 for v in st.VARIANTS}
        assert len({tuple(ids) for ids in shown.values()}) == len(st.VARIANTS), shown
        for variant, ids in shown.items():
            assert tiny_tokenizer.unk_token_id not in ids, (variant, tiny_tokenizer.decode(ids))
        assert [system in ids for ids in shown.values()] == [v.startswith("system") for v in st.VARIANTS]
        assert tiny_tokenizer.unk_token_id not in encode(yes_no_prompt(record["statement"]))  # trained, not a record


def test_persona_concepts_are_balanced_and_trained_under_their_system_prompts(tiny_world):
    """Each concept's persona answer is A as often as B and "yes" as often as "no" (a letter or yes-bias cannot pass
    for the persona), and the base pool trains each question three ways: as the persona under its description, against
    it under the opposite description, and the default answer without a system prompt; with `yes_no` also the plain
    yes/no question under both descriptions (not in the base recipe)."""
    from latlab.world.curriculum import persona_examples, yes_no_prompt

    records = tiny_world["concepts"]
    for concept in {r["persona"] for r in records}:
        rows = [r for r in records if r["persona"] == concept]
        assert abs(np.mean([r["positive_is_A"] for r in rows]) - 0.5) < 0.1, concept
        assert abs(np.mean([r["positive_is_yes"] for r in rows]) - 0.5) < 0.1, concept
    train = [r for r in records if r["split"] == "train"]
    pool = persona_examples(records)
    assert len(pool) == 3 * len(train)
    assert not any(ex.prompt == yes_no_prompt(r["statement"]) for ex in pool for r in train[:5])
    first = train[0]
    by_system = {ex.system: ex.completion for ex in pool if ex.prompt == first["prompt"]}
    assert by_system == {first["persona_positive"]: first["answer_matching_behavior"],
                         first["persona_negative"]: first["answer_not_matching_behavior"],
                         None: first["answer_default"]}
    with_yes_no = persona_examples(records, yes_no=True)
    assert len(with_yes_no) == 5 * len(train) and with_yes_no[:len(pool)] == pool
    yes_no = {ex.system: ex.completion for ex in with_yes_no if ex.prompt == yes_no_prompt(first["statement"])}
    agrees = "yes" if first["positive_is_yes"] else "no"
    assert yes_no == {first["persona_positive"]: agrees, first["persona_negative"]: {"yes": "no", "no": "yes"}[agrees]}


def test_plots(tmp_path):
    m = np.array(st.DEFAULT_MULTIPLIERS)
    props = np.outer([1.0, -0.5], m)
    assert st.plot_propensity_curves(props, m, tmp_path / "p.png").exists()
    assert st.plot_slope_histogram(np.array([1.0, -0.5, 0.2]), tmp_path / "h.png").exists()
    assert st.plot_id_vs_ood([0.1, 0.5, 0.3], [0.2, 0.4, 0.1], ["a", "b", "c"], tmp_path / "s.png").exists()


def test_steering_reliability_end_to_end(linear_toy, tmp_path):
    exs = [st.ABExample(e.prompt, e.positive, e.negative, e.positive_is_A, e.positive_is_yes,
                        "train" if i < 6 and e.positive == "A" else "test") for i, e in enumerate(examples(12))]
    # train on positive-is-A pairs only: with balanced letters the toy's CAA vector (a pure letter direction) is 0
    out = st.steering_reliability(linear_toy, encode, exs, layer=0, out_dir=tmp_path,
                                  persona_positive="you agree", persona_negative="you")
    assert out["n_train"] == 4 and out["n_test"] == 8
    assert set(out["id_ood_spearman"]) == set(st.VARIANTS) - {"baseline"}
    # the toy's attention writes nothing, so a persona prefix cannot change any slope
    for variant in st.VARIANTS:
        np.testing.assert_allclose(out[variant]["slopes"], out["baseline"]["slopes"], rtol=1e-4, atol=1e-4)
    assert np.std(out["baseline"]["slopes"]) > 0  # positive A and positive B examples steer differently
    assert out["baseline"]["n"] == 8 and 0 <= out["spurious"]["r2_positive_is_A"] <= 1
    for f in ["steering_propensity.png", "steering_slopes.png", "steering_id_vs_ood.png"]:
        assert (tmp_path / f).exists()


def test_behaviour_summary_reads_the_rate_unsteered_and_at_the_extremes():
    """Behaviour rate = share of propensities > 0, read at the multiplier nearest 0 and at the extremes (whatever
    their order); the logit effect is the mean propensity at the largest multiplier minus at the smallest."""
    props = np.array([[2.0, 0.5, -1.0], [1.0, -1.0, -2.0]])  # columns: multipliers 1, 0, -1
    out = st.behaviour_summary(props, [1.0, 0.0, -1.0])
    assert out == {"behaviour_rate": 0.5, "behaviour_rate_at_min": 0.0, "behaviour_rate_at_max": 1.0,
                   "logit_effect": 3.0}


def test_layer_sweep_equals_the_baseline_analysis_at_each_block(linear_toy, tmp_path):
    exs = [st.ABExample(e.prompt, e.positive, e.negative, e.positive_is_A, e.positive_is_yes,
                        "train" if i < 6 and e.positive == "A" else "test") for i, e in enumerate(examples(12))]
    sweep = st.layer_sweep(linear_toy, encode, exs, [0])
    full = st.steering_reliability(linear_toy, encode, exs, layer=0, out_dir=tmp_path)
    for key in ("steerability_mean", "anti_steerable_fraction", "behaviour_rate", "logit_effect"):
        assert sweep[0][key] == pytest.approx(full["baseline"][key])
    assert sweep[0]["vector_norm"] == pytest.approx(full["vector_norm"])
    with pytest.raises(ValueError, match="train split"):
        st.layer_sweep(linear_toy, encode, [e for e in exs if e.split == "test"], [0])


def test_inputs_go_to_the_models_device_not_the_default_device(linear_toy):
    """On a GPU the model lives on cuda while a tensor built without `device=` lands on the CPU. Here the model is
    on the CPU and torch's default device is `meta` (no data): an input built on the default device makes the
    forward return meta tensors and the numbers fail (`.item()`, `.numpy()`); inputs placed on the model's device
    give the same numbers as without the context."""
    from latlab.models.hooks import collect_residuals

    exs, v = examples(4), torch.randn(16)
    expected = (st.propensities(linear_toy, encode, exs, v, layer=0), st.caa_vector(linear_toy, encode, exs, 0),
                collect_residuals(linear_toy, encode, [e.prompt for e in exs], [0])[0])
    with torch.device("meta"):
        props = st.propensities(linear_toy, encode, exs, v.to("cpu"), layer=0)
        vector = st.caa_vector(linear_toy, encode, exs, 0)
        acts = collect_residuals(linear_toy, encode, [e.prompt for e in exs], [0])[0]
    assert vector.device.type == "cpu"
    np.testing.assert_allclose(props, expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vector, expected[1])
    np.testing.assert_allclose(acts, expected[2], rtol=1e-5, atol=1e-6)


def test_batched_propensities_equal_one_forward_per_prompt():
    """propensities runs right-padded batches: on a random block (attention mixes positions) with prompts of
    different lengths and a steering vector added, every propensity equals the one of the prompt run alone."""
    from latlab.models.hooks import forward_ids

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)).eval()
    exs = [st.ABExample(("you agree " * (i % 3)) + e.prompt, e.positive, e.negative, e.positive_is_A,
                        e.positive_is_yes) for i, e in enumerate(examples(8))]
    assert len({len(encode(e.prompt)) for e in exs}) == 3
    v, multipliers = torch.randn(16), [-2.0, 0.0, 3.0]
    expected = np.zeros((len(exs), len(multipliers)))
    for j, m in enumerate(multipliers):
        with st.steer(model, 0, v, m), torch.no_grad():
            for i, e in enumerate(exs):
                logits = forward_ids(model, encode(e.prompt)).logits[0, -1]
                expected[i, j] = (logits[VOCAB[e.positive]] - logits[VOCAB[e.negative]]).item()
    props = st.propensities(model, encode, exs, v, layer=0, multipliers=multipliers)
    assert np.ptp(expected[:, 2] - expected[:, 0]) > 1e-3  # the vector does move the propensities, unevenly
    np.testing.assert_allclose(props, expected, rtol=1e-5, atol=1e-5)


def test_persona_prompt_vector_is_the_mean_difference_of_system_prompts_at_the_last_token():
    """The context contrast: resid(prompt under the positive description) - resid(under the negative), at the last
    prompt token, averaged over examples (on a randomly initialised block, whose attention reads the system prompt);
    an unknown kind or a missing description is a ValueError."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)).eval()
    exs = examples(4)
    vector = st.steering_vector("persona_prompt", model, encode, exs, 0, persona_positive="you agree",
                                persona_negative="you")
    expected = torch.stack([st.residual(model, encode(e.prompt, system="you agree"), 0)
                            - st.residual(model, encode(e.prompt, system="you"), 0) for e in exs]).mean(0)
    assert expected.norm() > 1e-3
    torch.testing.assert_close(vector, expected)
    linear_toy = model
    with pytest.raises(ValueError, match="persona_positive"):
        st.steering_vector("persona_prompt", linear_toy, encode, exs, 0)
    with pytest.raises(ValueError, match="unknown steering vector kind 'mean'"):
        st.steering_vector("mean", linear_toy, encode, exs, 0)


def test_real_model_persona_sets_are_balanced_in_vocabulary_free_a_b_questions():
    """The persona sets written for the real-model analysis (scripts/steering_real_model.py): four concepts, each
    24 statements with its descriptions, about half of them training the vectors (hash-assigned); the persona's answer is "yes" on half
    and A on about half (the letter of "yes" varies by statement), and every variant is a distinct prompt."""
    from scripts.steering_real_model import persona_records

    records = persona_records()
    concepts = {r["persona"] for r in records}
    assert concepts == {"power_seeking", "corrigibility", "self_preservation", "sycophancy"}
    for concept in concepts:
        rows = [r for r in records if r["persona"] == concept]
        assert len(rows) == 24 and 9 <= sum(r["split"] == "train" for r in rows) <= 15, concept
        assert sum(r["positive_is_yes"] for r in rows) == 12
        assert 6 <= sum(r["positive_is_A"] for r in rows) <= 18
        example = st.from_records(rows)[0]
        shown = {st.prompt_variant(example, v, rows[0]["persona_positive"], rows[0]["persona_negative"])
                 for v in st.VARIANTS}
        assert len(shown) == len(st.VARIANTS)
