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
from latlab.models.encoding import collate, encode_all
from latlab.training.sft import train_sft
from latlab.training.unlearning import (UNLEARNING_METHODS, generic_logits, layer_activations, npo_loss,
                                        predicting_positions, rmu_direction, simnpo_loss, train_graddiff,
                                        train_gradient_ascent, train_npo, train_rmu, train_simnpo, train_whp)
from latlab.world.curriculum_unlearning import forget_pool, retain_pools, world_without_domain
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


WHP_WEAK = pytest.mark.xfail(strict=True, reason="measured on the tiny world (seed 0): WHP at these settings takes "
                             "first-token forget accuracy only from 1.00 to 0.88 (needs < 0.80); with 80 steps at "
                             "lr 5e-3 it reaches 0.81 (whp) / 0.80 (whp+lat). Reported, not tuned away.")
WHP_REINFORCE = make(TrainConfig, steps=30, batch_size=16, lr=2e-3, warmup_steps=2)
METHODS = [
    ("ga", train_gradient_ascent, make(GradientAscentConfig, steps=30, lr=1e-3)),
    ("ga+lat", train_gradient_ascent, make(GradientAscentConfig, steps=30, lr=1e-3, lat=LAT)),
    pytest.param("whp", train_whp, make(WHPConfig, steps=40, lr=2e-3, alpha=10, reinforce=WHP_REINFORCE), marks=WHP_WEAK),
    pytest.param("whp+lat", train_whp, make(WHPConfig, steps=40, lr=2e-3, alpha=10, lat=LAT, reinforce=WHP_REINFORCE),
                 marks=WHP_WEAK),
    ("rmu", train_rmu, make(RMUConfig, steps=60, lr=1e-2, layer=1, steering_coeff=10, retain_weight=1)),
    ("rmu+lat", train_rmu, make(RMUConfig, steps=60, lr=1e-2, layer=1, steering_coeff=10, retain_weight=1, lat=LAT)),
    ("graddiff", train_graddiff, make(GradDiffConfig, steps=30, lr=1e-3)),
    ("graddiff+lat", train_graddiff, make(GradDiffConfig, steps=30, lr=1e-3, lat=LAT)),
    ("npo", train_npo, make(NPOConfig, steps=30, lr=1e-3)),
    ("npo+lat", train_npo, make(NPOConfig, steps=30, lr=1e-3, lat=LAT)),
    ("simnpo", train_simnpo, make(SimNPOConfig, steps=30, lr=1e-3)),
    ("simnpo+lat", train_simnpo, make(SimNPOConfig, steps=30, lr=1e-3, lat=LAT)),
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
    run = train(model, tiny_tokenizer, forget_pool(tiny_world), retain_pools(tiny_world), RETAIN_WEIGHTS, cfg,
                None, name)
    after = first_token_accuracy(model, tiny_tokenizer, tiny_world, "forget")
    print(f"{name}: forget acc {before:.3f} -> {after:.3f}; compute {run.compute}")
    assert after < before - 0.2
    assert (run.compute["adversary_forward_tokens"] > 0) == (cfg.lat is not None)
    if cfg.lat is not None:  # the inner loop made progress toward the forget answers
        assert run.result.history[-1]["adv_last"] < run.result.history[-1]["adv_first"]


def test_rmu_moves_forget_activations_toward_target(learned, tiny_world, tiny_tokenizer):
    model = copy.deepcopy(learned)
    cfg = make(RMUConfig, steps=60, lr=1e-2, layer=1, steering_coeff=10, retain_weight=1)
    target = cfg.steering_coeff * rmu_direction(model.config.hidden_size, cfg.direction_seed)
    batch = collate(encode_all(tiny_tokenizer, forget_pool(tiny_world)), tiny_tokenizer.pad_token_id)
    keep = predicting_positions(batch).bool()

    @torch.no_grad()
    def distance(m):
        return (layer_activations(m, batch, cfg.layer)[keep] - target).norm(dim=-1).mean().item()

    frozen_down = [p.clone() for p in model.model.layers[0].self_attn.parameters()]
    before = distance(model)
    train_rmu(model, tiny_tokenizer, forget_pool(tiny_world), retain_pools(tiny_world), RETAIN_WEIGHTS, cfg, None,
              "rmu")
    after = distance(model)
    print(f"rmu: mean |h - c u| on forget answer positions {before:.2f} -> {after:.2f}")
    assert after < 0.6 * before
    # only the MLP down projections train; attention stays put and every weight is trainable again afterwards
    for old, new in zip(frozen_down, model.model.layers[0].self_attn.parameters()):
        torch.testing.assert_close(old, new)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.xfail(strict=True, reason="measured on the tiny world (seed 0) after the A/B data change: gradient ascent "
                   "takes held-out free recall to 0.125 and 10 relearning steps on 8 other forget facts leave it at "
                   "0.125, so the 'suppressed, not removed' relearning effect does not show here (it did on the "
                   "earlier world: 0.17 -> 0.58). Kept as the hypothesis; the pipeline's unlearning_eval measures it "
                   "on the default model.")
def test_finetune_relearning_restores_accuracy_after_gradient_ascent(learned, tiny_world, tiny_tokenizer):
    model = copy.deepcopy(learned)
    train_gradient_ascent(model, tiny_tokenizer, forget_pool(tiny_world), retain_pools(tiny_world), RETAIN_WEIGHTS,
                          make(GradientAscentConfig, steps=60, lr=2e-3), None, "ga")
    curve = finetune_relearning(model, tiny_tokenizer, tiny_world, ks=[8],
                                cfg=make(TrainConfig, steps=10, batch_size=8, lr=1e-3, warmup_steps=0, log_every=10),
                                split="train", heldout=8, batch_size=64)
    print(f"relearning after GA: {curve}")
    assert curve["relearn.k0.free_recall"] < 0.5  # gradient ascent did lower recall first
    # the held-out facts were never in the relearning set, yet recall on them comes back
    assert curve["relearn.k8.free_recall"] > curve["relearn.k0.free_recall"] + 0.2


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
