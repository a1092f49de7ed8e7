"""GCG: lowers its target loss on a tiny model, reports the loss it achieves, is seeded, avoids special tokens."""

import torch

from latlab.attacks.common import allowed_token_mask
from latlab.attacks.gcg import (candidate_losses, gcg_individual_attack, gcg_search, gcg_universal_attack,
                                random_suffix, suffix_case)
from latlab.config import GCGConfig, GCGIndividualConfig, GCGUniversalConfig
from latlab.models.compute import Compute
from tests.settings import make

CFG = make(GCGConfig, steps=8, search_width=32, topk=16, suffix_tokens=5, target_tokens=6, seed=3)


def _harmful(world, split):
    return [r for r in world["requests"] if r["split"] == split and r["harmful"]]


def _search(model, tokenizer, request, cfg=CFG):
    case = suffix_case(tokenizer, request["prompt"], request["compliance"], cfg.target_tokens)
    allowed = allowed_token_mask(tokenizer, model.get_input_embeddings().weight.shape[0], cfg.ascii_only)
    generator = torch.Generator().manual_seed(cfg.seed)
    found = gcg_search(model, tokenizer, [case], cfg, allowed, random_suffix(allowed, cfg.suffix_tokens, generator),
                       generator, Compute())
    return case, allowed, found


def test_gcg_lowers_its_target_loss(tiny_world, tiny_tokenizer, tiny_model):
    request = _harmful(tiny_world, "test")[0]
    case, allowed, found = _search(tiny_model, tiny_tokenizer, request)
    assert found.loss < found.history[0] - 0.02
    recomputed = candidate_losses(tiny_model, [case], found.suffix[None], Compute())
    assert abs(float(recomputed) - found.loss) < 1e-4  # the reported loss is the suffix's real loss
    assert allowed[found.suffix].all()
    assert not set(found.suffix.tolist()) & set(tiny_tokenizer.all_special_ids)


def test_gcg_is_deterministic_for_a_seed(tiny_world, tiny_tokenizer, tiny_model):
    request = _harmful(tiny_world, "test")[0]
    first = _search(tiny_model, tiny_tokenizer, request)[2]
    again = _search(tiny_model, tiny_tokenizer, request)[2]
    other = _search(tiny_model, tiny_tokenizer, request, CFG.model_copy(update={"seed": 4}))[2]
    assert torch.equal(first.suffix, again.suffix) and first.history == again.history
    assert not torch.equal(first.suffix, other.suffix)


def test_gcg_leaves_weight_gradients_untouched(tiny_world, tiny_tokenizer, tiny_model):
    _search(tiny_model, tiny_tokenizer, _harmful(tiny_world, "test")[0], CFG.model_copy(update={"steps": 1}))
    assert all(p.grad is None for p in tiny_model.parameters())


def test_gcg_attacks_report_loss_and_compute(tiny_world, tiny_tokenizer, tiny_model):
    test, train = _harmful(tiny_world, "test"), _harmful(tiny_world, "train")
    individual = gcg_individual_attack(tiny_model, tiny_tokenizer, test,
                                       make(GCGIndividualConfig, prompts=2, steps=4, search_width=16), max_new_tokens=4)
    assert len(individual.completions) == 2
    assert all(b <= a for a, b in zip(individual.metadata["loss_initial"], individual.metadata["loss_final"]))
    universal = gcg_universal_attack(tiny_model, tiny_tokenizer, test,
                                     make(GCGUniversalConfig, prompts=3, steps=6, search_width=16), support=train,
                                     max_new_tokens=4)
    assert len(universal.completions) == len(test)
    assert set(universal.metadata["optimised_on"]) <= {r["id"] for r in train}
    assert universal.metadata["loss_final"] < universal.metadata["loss_initial"]
    assert universal.metadata["forward_passes"] > universal.metadata["backward_passes"] > 0
