"""Unlearning methods on a tiny model that first memorised the world's facts: each lowers forget accuracy (with and
without LAT), RMU moves forget activations toward c·u, and fine-tuning on a few forget facts brings back others
after gradient ascent (suppression, not removal)."""

import copy
import math

import pytest
import torch

from latlab.config import (GradDiffConfig, GradientAscentConfig, LatAdversaryConfig, NPOConfig, RMUConfig, SimNPOConfig,
                           TrainConfig, WHPConfig)
from latlab.data.examples import Example, fact_examples
from latlab.evals.unlearning import finetune_relearning
from latlab.models.encoding import collate, encode_all, pad_rows
from latlab.training.sft import train_sft
from latlab.training.unlearning import (UNLEARNING_METHODS, anchor_token_map, generic_labels, generic_logits,
                                        knowledge_labels, layer_activations, npo_loss, predicting_positions,
                                        rmu_direction, simnpo_loss, train_graddiff, train_gradient_ascent, train_npo,
                                        train_rmu, train_simnpo, train_whp, translate)
from latlab.world.curriculum_unlearning import anchored_terms, forget_pool, retain_pools, world_without_domain
from tests.settings import make

RETAIN_WEIGHTS = {"facts": 1.0, "benign": 0.5}
LAT = make(LatAdversaryConfig, layers=[0], epsilon=1.0, inner_steps=4, inner_lr=0.1)


@pytest.fixture(scope="module")
def learned(tiny_world, tiny_tokenizer):
    """A tiny model trained on every training-split fact (about 8 s on one thread)."""
    from conftest import TINY_ARCH
    from latlab.models.loading import build_toy_model

    torch.set_num_threads(1)
    model = build_toy_model(TINY_ARCH, tiny_tokenizer, 0)
    train_sft(model, tiny_tokenizer, {"facts": fact_examples(tiny_world["facts"])}, {"facts": 1.0},
              make(TrainConfig, steps=700, batch_size=32, lr=5e-3, warmup_steps=10, log_every=100), None, "learn")
    return model


@torch.no_grad()
def first_token_accuracy(model, tokenizer, world, domain):
    """Share of training-split free/completion prompts whose first answer token is the model's argmax."""
    rows = [r for r in world["facts"] if r["split"] == "train" and r["domain"] == domain and r["format"] != "ab"]
    batch = collate(encode_all(tokenizer, [Example(r["prompt"], r["completion"], r["chat"]) for r in rows]),
                    tokenizer.pad_token_id)
    predicted = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    first = predicting_positions(batch).argmax(1)  # position that predicts the first answer token
    rows_idx = torch.arange(len(rows))
    return (predicted[rows_idx, first] == batch["input_ids"][rows_idx, first + 1]).float().mean().item()


def test_fixture_learned_the_forget_domain(learned, tiny_world, tiny_tokenizer):
    assert first_token_accuracy(learned, tiny_tokenizer, tiny_world, "forget") > 0.8


# 60 steps: at 30 the drop depends on the fixture's seed (GA, first-token forget accuracy over fixture seeds 0/1/2:
# 1.00 -> 0.34 / 0.94 / 0.70 on the world before issue 20, 0.94 -> 0.80, 0.97 -> 0.61, 1.00 -> 0.73 after; at 60:
# -> 0.17 / 0.06 / 0.08).
# WHP used to be marked xfail here: without anchored terms and with raw-logit differences it took first-token forget
# accuracy only from 1.00 to 0.88 (issue 20). With both (as the `unlearn` stage runs it) it passes: 0.94 -> 0.22.
WHP_REINFORCE = make(TrainConfig, steps=30, batch_size=16, lr=2e-3, warmup_steps=2)
METHODS = [
    ("ga", train_gradient_ascent, make(GradientAscentConfig, steps=60, lr=1e-3)),
    ("ga+lat", train_gradient_ascent, make(GradientAscentConfig, steps=60, lr=1e-3, lat=LAT, forget_weight=0.0,
                                           away_weight=1.0)),
    ("whp", train_whp, make(WHPConfig, steps=40, lr=2e-3, alpha=10, reinforce=WHP_REINFORCE)),
    ("whp+lat", train_whp, make(WHPConfig, steps=40, lr=2e-3, alpha=10, lat=LAT, reinforce=WHP_REINFORCE)),
    ("rmu", train_rmu, make(RMUConfig, steps=60, lr=1e-2, layer=1, steering_coeff=10, retain_weight=1)),
    ("rmu+lat", train_rmu, make(RMUConfig, steps=60, lr=1e-2, layer=1, steering_coeff=10, retain_weight=1, lat=LAT)),
    ("graddiff", train_graddiff, make(GradDiffConfig, steps=60, lr=1e-3)),
    ("graddiff+lat", train_graddiff, make(GradDiffConfig, steps=60, lr=1e-3, lat=LAT, away_weight=1.0)),
    ("npo", train_npo, make(NPOConfig, steps=60, lr=1e-3)),
    ("npo+lat", train_npo, make(NPOConfig, steps=60, lr=1e-3, lat=LAT, away_weight=1.0)),
    ("simnpo", train_simnpo, make(SimNPOConfig, steps=60, lr=1e-3)),
    ("simnpo+lat", train_simnpo, make(SimNPOConfig, steps=60, lr=1e-3, lat=LAT, away_weight=1.0)),
]


def test_every_method_kind_is_registered():
    from latlab.config import UnlearnMethodConfig
    from typing import get_args
    kinds = {get_args(cls.model_fields["method"].annotation)[0] for cls in get_args(get_args(UnlearnMethodConfig)[0])}
    assert kinds == set(UNLEARNING_METHODS)


def test_npo_loss_is_the_papers_form():
    # (2/β)·log(1 + (π/π_ref)^β) with log π - log π_ref = -1, β = 0.5
    got = npo_loss(torch.tensor([-3.0]), torch.tensor([-2.0]), beta=0.5)
    assert got.item() == pytest.approx(2 / 0.5 * math.log(1 + math.exp(-1.0) ** 0.5))
    # equal to the reference: 2/β·log 2; lower likelihood -> lower loss, bounded below by 0
    assert npo_loss(torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5).item() == pytest.approx(4 * math.log(2))
    assert 0 < npo_loss(torch.tensor([-50.0]), torch.tensor([-2.0]), 0.5).item() < 1e-6


def test_simnpo_loss_is_length_normalised():
    # -(2/β)·log σ(-(β/|y|)·log π - γ): log π = -6 over 3 tokens, β = 2, γ = 1 -> -(1)·log σ(4 - 1)
    got = simnpo_loss(torch.tensor([-6.0]), torch.tensor([3.0]), beta=2.0, gamma=1.0)
    assert got.item() == pytest.approx(-math.log(1 / (1 + math.exp(-3.0))))
    # the same per-token likelihood over a longer answer gives the same loss
    assert simnpo_loss(torch.tensor([-12.0]), torch.tensor([6.0]), 2.0, 1.0).item() == pytest.approx(got.item())


@pytest.mark.parametrize("name, train, cfg", METHODS, ids=[getattr(m, "values", m)[0] for m in METHODS])
def test_method_lowers_forget_accuracy(learned, tiny_world, tiny_tokenizer, name, train, cfg):
    model = copy.deepcopy(learned)
    before = first_token_accuracy(model, tiny_tokenizer, tiny_world, "forget")
    extra = {"anchors": anchored_terms(tiny_world)} if train is train_whp else {}  # as stages/unlearn.py does
    run = train(model, tiny_tokenizer, forget_pool(tiny_world), retain_pools(tiny_world), RETAIN_WEIGHTS, cfg,
                None, name, **extra)
    after = first_token_accuracy(model, tiny_tokenizer, tiny_world, "forget")
    print(f"{name}: forget acc {before:.3f} -> {after:.3f}; compute {run.compute}")
    assert after < before - 0.2
    assert (run.compute["adversary_forward_tokens"] > 0) == (cfg.lat is not None)
    if cfg.lat is not None:  # the inner loop made progress toward the forget answers
        assert run.result.history[-1]["adv_last"] < run.result.history[-1]["adv_first"]


def rmu_distances(model, tokenizer, world, cfg: RMUConfig) -> dict[str, float]:
    """Mean |h - c·u| at block `cfg.layer` over the positions RMU's forget term trains (those predicting an answer
    token other than the end-of-turn/eos token: `knowledge_labels`), for the forget pool and the retain facts."""
    special = sorted(set(tokenizer.all_special_ids))
    target = cfg.steering_coeff * rmu_direction(model.config.hidden_size, cfg.direction_seed)
    out = {}
    for name, pool in (("forget", forget_pool(world)), ("retain", retain_pools(world)["facts"])):
        batch = collate(encode_all(tokenizer, pool), tokenizer.pad_token_id)
        keep = predicting_positions({**batch, "labels": knowledge_labels(batch["labels"], special)}).bool()
        with torch.no_grad():
            out[name] = (layer_activations(model, batch, cfg.layer)[keep] - target).norm(dim=-1).mean().item()
    return out


RMU_TINY = make(RMUConfig, steps=60, lr=1e-2, layer=1, steering_coeff=10, retain_weight=1)


@pytest.fixture(scope="module")
def rmu_run(learned, tiny_world, tiny_tokenizer):
    """One RMU run of RMU_TINY on a copy of `learned`: (distances before, distances after, the model, its first
    block's attention weights before), shared by the RMU tests below."""
    model = copy.deepcopy(learned)
    frozen_attention = [p.clone() for p in model.model.layers[0].self_attn.parameters()]
    before = rmu_distances(model, tiny_tokenizer, tiny_world, RMU_TINY)
    train_rmu(model, tiny_tokenizer, forget_pool(tiny_world), retain_pools(tiny_world), RETAIN_WEIGHTS, RMU_TINY,
              None, "rmu")
    after = rmu_distances(model, tiny_tokenizer, tiny_world, RMU_TINY)
    print(f"rmu: mean |h - c u| on the trained answer positions, before -> after: {before} -> {after}")
    return before, after, model, frozen_attention


def test_rmu_moves_forget_activations_toward_target(rmu_run):
    """RMU (Li et al. 2024) pushes the forget data's activations at its layer toward c·u: the positions its forget
    term trains end much closer to the target than they started (23.9 -> 17.1 once, 0.72x, when this test averaged
    over every labelled position, the end-token ones RMU leaves alone since `knowledge_labels`; on the trained ones
    15.7 -> 6.6, 0.42x). Only the MLP down projections train."""
    before, after, model, frozen_attention = rmu_run
    assert after["forget"] / before["forget"] < 0.6
    # only the MLP down projections train; attention stays put and every weight is trainable again afterwards
    for old, new in zip(frozen_attention, model.model.layers[0].self_attn.parameters()):
        torch.testing.assert_close(old, new)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.xfail(strict=True, reason="measured on the tiny fixture: the retain facts' answer positions move toward "
                   "c·u as much as the forget ones (0.42x vs 0.42x at retain weight 1; at the pipeline's retain "
                   "weight 10 and coefficient 20, 0.72x vs 0.77x after 60 steps, 0.59x vs 0.75x after 120). Its "
                   "forget and retain facts share every template and differ in one entity token, so the "
                   "answer-predicting position is mostly shared; the pipeline measures selectivity as retain "
                   "accuracy (unlearning_eval).")
def test_rmu_moves_forget_activations_more_than_retain(rmu_run):
    """RMU's selectivity: the retain facts' answer positions move toward c·u much less, in proportion, than the
    forget ones (a change of the whole layer would move both alike)."""
    before, after, _, _ = rmu_run
    assert after["forget"] / before["forget"] < after["retain"] / before["retain"] - 0.2


def test_finetune_relearning_after_gradient_ascent_reports_each_budget(learned, tiny_world, tiny_tokenizer):
    """Relearning after gradient ascent: the curve has recall and A/B accuracy before (k0) and after relearning k
    other forget facts, as rates. Whether recall on the held-out facts comes back ("GA suppresses rather than
    removes") is not asserted here: on 8 held-out facts of the tiny fixture, one run, it is a coarse single-run
    measure that moves with the world and the machine (0.17 -> 0.58 on an early world, 0.125 -> 0.125 after the A/B
    data change, 0.25 -> 0.50 on stop 40's machine and 0.125 -> 0.125 on stop 41's, same code). The claim is measured
    by the pipeline's unlearning_eval on 48 held-out facts per seed of the study, with intervals."""
    model = copy.deepcopy(learned)
    train_gradient_ascent(model, tiny_tokenizer, forget_pool(tiny_world), retain_pools(tiny_world), RETAIN_WEIGHTS,
                          make(GradientAscentConfig, steps=60, lr=2e-3), None, "ga")
    curve = finetune_relearning(model, tiny_tokenizer, tiny_world, ks=[8],
                                cfg=make(TrainConfig, steps=10, batch_size=8, lr=1e-3, warmup_steps=0, log_every=10),
                                split="train", heldout=8, batch_size=64)
    print(f"relearning after GA: {curve}")
    assert curve["relearn.k0.free_recall"] < 0.5  # gradient ascent did lower recall first
    for k in ("k0", "k8"):
        for measure in ("free_recall", "ab_acc"):
            assert 0.0 <= curve[f"relearn.{k}.{measure}"] <= 1.0


def test_whp_generic_logits_follow_the_formula():
    base = torch.tensor([[1.0, 2.0, 0.5]])
    reinforced = torch.tensor([[1.0, 4.0, 0.0]])
    torch.testing.assert_close(generic_logits(base, reinforced, alpha=2.0), torch.tensor([[1.0, -2.0, 0.5]]))


def test_world_without_domain_drops_only_that_domain(tiny_world):
    oracle_world = world_without_domain(tiny_world, "forget")
    assert {r["domain"] for r in oracle_world["facts"]} == {"general", "related"}
    kept = [r for r in tiny_world["facts"] if r["domain"] != "forget"]
    assert oracle_world["facts"] == kept and oracle_world["requests"] is tiny_world["requests"]
    with pytest.raises(ValueError):
        world_without_domain(oracle_world, "forget")


def test_forget_and_retain_pools_are_disjoint_by_domain(tiny_world):
    forget_words = {r["entity"] for r in tiny_world["facts"] if r["domain"] == "forget"}
    retain = retain_pools(tiny_world)
    assert not any(w in ex.prompt.split() for ex in retain["facts"] + retain["benign"] for w in forget_words)
    forget = forget_pool(tiny_world)
    assert all(any(w in ex.prompt.split() for w in forget_words) for ex in forget)
    assert any(not ex.chat for ex in forget)  # completion-style text is in the pool


# --- issue 20: WHP trains toward generic labels that differ from the originals; twins train equal steps ---

class _FixedLogits(torch.nn.Module):
    """A stand-in model whose next-token logits are `row` at every position."""

    def __init__(self, row):
        super().__init__()
        self.row = torch.tensor(row)

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.row.expand(*input_ids.shape, len(self.row))})()


def test_whp_generic_labels_remove_the_per_position_offset():
    """The default world's failure: the base model saturates a fact (label token 1) and the reinforced model's raw
    logits sit 1.63 lower everywhere, its preference for token 1 (+1 over the rest) hidden by that offset. Raw
    differences give ReLU = 0 and the generic label stays the original; with the offset removed, token 1 is
    penalised and the generic label moves to the baseline's runner-up (token 2)."""
    base = [0.0, 8.0, 2.0, 0.0]
    reinforced = [x - 1.63 + (1.0 if i == 1 else 0.0) for i, x in enumerate(base)]
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.tensor([[-100, 1, 1]])}
    labels = generic_labels(batch, _FixedLogits(base), _FixedLogits(reinforced), 10.0)
    assert labels.tolist() == [[-100, 2, 2]]


def test_whp_anchored_terms_translate_forget_entities_and_relations_with_positions_aligned(tiny_world,
                                                                                          tiny_tokenizer):
    """Entities map to the related domain's; the domain's own relation names to the counterpart's ("wand wood", two
    tokens, -> "weapon", one); the shared "mentor" stays. After a span that changes length, every original position
    still reads the translated prediction after the same words."""
    anchors = anchored_terms(tiny_world)
    forget = {r["entity"] for r in tiny_world["facts"] if r["domain"] == "forget"}
    related = {r["entity"] for r in tiny_world["facts"] if r["domain"] == "related"}
    entities = {k: v for k, v in anchors.generic.items() if k in forget}
    assert set(entities) == forget and set(entities.values()) <= related
    assert {k: v for k, v in anchors.generic.items() if k not in forget} == {
        "house": "clan", "wand wood": "weapon", "familiar": "steed"}
    assert anchors.answers == {r["answer"] for r in tiny_world["facts"] if r["domain"] == "forget"}
    mapping = anchor_token_map(tiny_tokenizer, anchors)
    entity, generic = next(iter(entities.items()))
    rows = [f"the wand wood of {entity} is oak", f"what is the house of {entity} ?", f"the mentor of {entity}"]
    encoded = [tiny_tokenizer(r, add_special_tokens=False)["input_ids"] for r in rows]
    ids, mask = pad_rows(encoded, 0), pad_rows([[1] * len(r) for r in encoded], 0)
    out = translate(ids, mask, mapping)
    texts = [tiny_tokenizer.decode(row[m.bool()]) for row, m in zip(out.input_ids, out.attention_mask)]
    assert texts == [f"the weapon of {generic} is oak", f"what is the clan of {generic} ?", f"the mentor of {generic}"]
    # row 0: "the wand wood of E is oak" -> "the weapon of G is oak": position of "is" (5) reads translated 4
    assert out.positions[0, :7].tolist() == [0, 1, 1, 2, 3, 4, 5]
    assert out.anchored[0, :7].tolist() == [False, True, True, False, True, False, False]
    assert out.positions[1, :7].tolist() == list(range(7))


def test_whp_generic_labels_differ_and_the_adversary_elicits_the_originals(learned, tiny_world, tiny_tokenizer):
    """Issue 20's expected values, on the tiny world (seed 0): at least 90% of the forget answer tokens get a generic
    label other than the original (measured 1.00 with the relation names anchored too, 0.92 with entities only;
    0.67 with an uncentred log-probability difference, 0.87 with anchors alone), and at the end of WHP + LAT the adversary's δ lowers the CE of the original answers (measured
    1.85 with δ vs 2.88 without)."""
    model = copy.deepcopy(learned)
    cfg = make(WHPConfig, steps=40, lr=2e-3, alpha=10, lat=LAT, reinforce=WHP_REINFORCE, away_weight=1.0)
    run = train_whp(model, tiny_tokenizer, forget_pool(tiny_world), retain_pools(tiny_world), RETAIN_WEIGHTS, cfg,
                    None, "whp+lat", anchors=anchored_terms(tiny_world))
    print(f"whp+lat metrics: {run.metrics}")
    assert run.metrics["generic_differs_fraction"] >= 0.9
    assert run.metrics["adversary_ce_with_delta"] < run.metrics["adversary_ce_without_delta"]


def test_lat_twins_train_as_many_steps_as_their_method():
    """A method and its +LAT variant get the same budget (issue 20: GA 60 vs GA+LAT 40 steps made LAT look weaker)."""
    from tests.settings import raw_params

    raw = raw_params()
    for table in ("unlearn", "backdoor_removal"):
        twins = [(name, name.removesuffix("_lat")) for name in raw[table] if name.endswith("_lat")]
        assert twins, table
        for name, plain in twins:
            assert raw[table][name]["steps"] == raw[table][plain]["steps"], f"{table}.{name}"


def _grad_norm(model, loss) -> float:
    model.zero_grad()
    loss.backward()
    return math.sqrt(sum(float((p.grad ** 2).sum()) for p in model.parameters() if p.grad is not None))


def test_lat_twins_forget_with_a_term_whose_gradient_survives_the_adversary(learned, tiny_world, tiny_tokenizer):
    """The stop-23 suspicion: GA/GradDiff/NPO/SimNPO + LAT unlearned less than the plain methods at equal steps. Cause:
    δ drives p(forget answer) toward 1 and a likelihood-lowering loss's gradient carries (1 - p), so the ascent under
    δ had a smaller gradient than plain GA's clean one (toy base: 0.30 vs 0.50) and kept shrinking relative to it.
    The LAT paper's defender term log(1 - p) under δ does not vanish there; every likelihood-lowering twin in
    params.yaml must carry it (it did not: this test failed on 2206e8d)."""
    from latlab.models.scoring import away_loss, token_ce
    from latlab.training.lat import latent_adversary
    from latlab.training.unlearning import _logits_under
    from latlab.models.encoding import ContrastBatch
    from tests.settings import raw_params

    table = raw_params()["unlearn"]
    twins = [n for n, e in table.items() if n.endswith("_lat") and e["method"] in ("ga", "graddiff", "npo", "simnpo")]
    assert twins
    for name in twins:
        assert table[name]["away_weight"] > 0, f"unlearn.{name}: the LAT twin has no away term under δ"

    model = copy.deepcopy(learned)
    batch = collate(encode_all(tiny_tokenizer, forget_pool(tiny_world)[:16]), tiny_tokenizer.pad_token_id)
    adversary = latent_adversary(model, LAT.model_copy(update={"adv_away": 0.0}))
    deltas, masks, _ = adversary.attack(ContrastBatch(batch, batch, batch["input_ids"].shape[1]), seed=0)
    clean_ascent = _grad_norm(model, -token_ce(_logits_under(model, batch, {}, None), batch["labels"]))
    ascent_under_delta = _grad_norm(model, -token_ce(_logits_under(model, batch, deltas, masks["undesired"]),
                                                     batch["labels"]))
    away_under_delta = _grad_norm(model, away_loss(_logits_under(model, batch, deltas, masks["undesired"]),
                                                   batch["labels"]))
    print(f"|grad|: ascent clean {clean_ascent:.3f}, ascent under δ {ascent_under_delta:.3f}, "
          f"away under δ {away_under_delta:.3f}")
    assert ascent_under_delta < clean_ascent  # the mechanism
    assert away_under_delta > clean_ascent  # the term the twins now carry does not shrink under δ


def test_forget_terms_see_the_answers_not_the_end_token(learned, tiny_world, tiny_tokenizer):
    """Issue 20, token by token: the default run's NPO-LAT had pushed the end token after each forget answer to
    log p -19 and left the answers at -0.5 to -2.8 (free recall of the forget facts 0.94): a sequence likelihood is
    lowered just as well through the one token every completion shares. Every forget-side term (method loss, away
    term, adversary target) must see the answers' content tokens only (this failed before `knowledge_labels`)."""
    from latlab.training.unlearning import knowledge_labels, unlearn_loop

    eos = tiny_tokenizer.eos_token_id
    special = sorted(set(tiny_tokenizer.all_special_ids))
    a, b = [i for i in range(len(tiny_tokenizer)) if i not in special][:2]
    assert knowledge_labels(torch.tensor([[-100, a, b, eos]]), special).tolist() == [[-100, a, b, -100]]

    seen = []

    def forget_term(model, triples, deltas, mask):
        seen.append(triples.undesired["labels"].clone())
        return torch.zeros((), requires_grad=True), {}

    unlearn_loop(copy.deepcopy(learned), tiny_tokenizer, forget_pool(tiny_world)[:32], retain_pools(tiny_world),
                 RETAIN_WEIGHTS, make(GradDiffConfig, steps=2, lr=1e-3, lat=LAT, away_weight=1.0), forget_term, None,
                 "spy")
    assert len(seen) == 2
    for labels in seen:
        kept = labels[labels >= 0]
        assert kept.numel() > 0 and not torch.isin(kept, torch.tensor(special)).any()
