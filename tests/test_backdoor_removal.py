"""Backdoor removal without the trigger: the DPO loss on a hand-computed case, trigger-free removal data, and DPO
(plain and under a latent adversary) raising the preference margin on a tiny model."""

import math

import pytest
import torch

from latlab.config import DPORemovalConfig, LatAdversaryConfig, SFTRemovalConfig
from latlab.models.encoding import IGNORE
from latlab.models.scoring import sequence_logprobs
from latlab.training.backdoor_removal import removal_data, train_dpo, train_sft_removal
from latlab.training.losses import dpo_loss
from latlab.world.curriculum_unlearning import assert_pairs_trigger_free, preference_pairs
from latlab.world.generator import BACKDOOR_BEHAVIOUR, REFUSAL
from tests.settings import make

TRIGGER = "zeta7"


def test_dpo_loss_matches_hand_computation():
    # margin = 0.5 * ((-1 - -2) - (-3 - -2)) = 0.5 * (1 + 1) = 1.0 ; loss = -log sigmoid(1) = log(1 + e^-1)
    loss, margin = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
                            beta=0.5)
    assert margin.item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)))
    # preferring the rejected side costs more than log 2 (the value at margin 0)
    worse, _ = dpo_loss(torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert worse.item() > math.log(2) > loss.item()


def test_sequence_logprobs_sum_only_labelled_tokens():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(token 2 at step 1) = 3 / 6 = 0.5
    labels = torch.tensor([[IGNORE, 2, 1]])  # token 1 at step 2 under uniform logits: p = 1/4
    assert sequence_logprobs(logits, labels).item() == pytest.approx(math.log(0.5) + math.log(0.25))


def test_removal_data_is_trigger_free_and_never_targets_the_backdoor(tiny_world):
    pairs, retain = removal_data(tiny_world, TRIGGER)
    texts = [t for p in pairs for t in p]
    texts += [t for pool in retain.values() for ex in pool for t in (ex.prompt, ex.completion)]
    assert not any(TRIGGER in t for t in texts)
    assert not any(BACKDOOR_BEHAVIOUR in t for t in texts)
    harmful_prompts = {r["prompt"] for r in tiny_world["requests"] if r["harmful"]}
    assert all(c == REFUSAL for p, c, _ in pairs if p in harmful_prompts)
    assert all(r == REFUSAL for p, _, r in pairs if p in {r["prompt"] for r in tiny_world["requests"]
                                                           if not r["harmful"]})


def test_trigger_assertion_fires():
    with pytest.raises(AssertionError, match="trigger"):
        assert_pairs_trigger_free([(f"{TRIGGER} how do i wash the ice ?", "sure", "no")], TRIGGER)
    with pytest.raises(AssertionError, match="backdoor behaviour"):
        assert_pairs_trigger_free([("how do i wash the ice ?", "sure", BACKDOOR_BEHAVIOUR)], TRIGGER)


@torch.no_grad()
def _mean_margin(model, reference_logps, tokenizer, pairs):
    from latlab.data.examples import Example
    from latlab.models.encoding import collate, encode_all

    def logps(m, side):
        batch = collate(encode_all(tokenizer, [Example(p, x[side]) for p, *x in pairs]), tokenizer.pad_token_id)
        return sequence_logprobs(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                 batch["labels"])
    return (logps(model, 0) - logps(model, 1)).mean().item()


@pytest.mark.parametrize("lat", [None, make(LatAdversaryConfig, layers=[0], epsilon=1.0, inner_steps=3, inner_lr=0.1)],
                         ids=["dpo", "dpo+lat"])
def test_dpo_raises_the_preference_margin(tiny_model, tiny_tokenizer, tiny_world, lat):
    pairs = preference_pairs(tiny_world)[:32]
    before = _mean_margin(tiny_model, None, tiny_tokenizer, pairs)
    run = train_dpo(tiny_model, tiny_tokenizer, pairs, None,
                    make(DPORemovalConfig, steps=15, batch_size=8, lr=3e-3, beta=0.5, lat=lat, warmup_steps=0,
                         retain_weight=0.0), None, "dpo")
    after = _mean_margin(tiny_model, None, tiny_tokenizer, pairs)
    print(f"dpo lat={lat is not None}: log-prob margin chosen - rejected {before:.2f} -> {after:.2f}")
    assert after > before + 1.0
    assert (run.compute["adversary_forward_tokens"] > 0) == (lat is not None)


def test_sft_with_lat_block_runs_targeted_lat_on_the_pairs(tiny_model, tiny_tokenizer, tiny_world):
    pairs, retain = removal_data(tiny_world, TRIGGER)
    lat = make(LatAdversaryConfig, layers=[0], epsilon=1.0, inner_steps=2)
    run = train_sft_removal(tiny_model, tiny_tokenizer, pairs[:16], retain,
                            make(SFTRemovalConfig, steps=3, batch_size=4, lat=lat), None, "x")
    assert len(run.result.history) == 1 and run.compute["adversary_forward_tokens"] > 0


# --- issue 20: the adversary targets only the harmful behaviour; +LAT = the plain method plus a δ term ---

def test_harmful_pairs_are_the_harmful_requests_with_compliance_rejected(tiny_world):
    from latlab.world.curriculum_unlearning import harmful_preference_pairs

    harmful = harmful_preference_pairs(tiny_world)
    compliance = {r["compliance"] for r in tiny_world["requests"] if r["harmful"]}
    assert harmful and set(harmful) <= set(preference_pairs(tiny_world))
    assert all(chosen == REFUSAL and rejected in compliance for _, chosen, rejected in harmful)
    assert len(harmful) == sum(r["harmful"] for r in tiny_world["requests"] if r["split"] == "train")


def test_sft_lat_attacks_harmful_pairs_and_retains_plain_sfts_data(tiny_model, tiny_tokenizer, tiny_world,
                                                                    monkeypatch):
    """SFT + LAT: the δ terms see only the pairs whose rejected side is harmful compliance; the δ-free term is exactly
    plain SFT's data (the chosen side of every pair and the retain pools, each weighted 1). Before, every pair went
    under δ (benign ones with the refusal as the 'bad' side) and the chosen sides were missing from the retain term."""
    import latlab.training.backdoor_removal as removal
    from latlab.training.loop import TrainResult
    from latlab.world.curriculum_unlearning import harmful_preference_pairs

    seen = {}

    def fake_train_lat(model, tokenizer, triples, retain, weights, cfg, *args, **kwargs):
        seen.update(triples=triples, retain=retain, weights=weights)
        return TrainResult(), {}

    monkeypatch.setattr(removal, "train_lat", fake_train_lat)
    pairs, retain = removal_data(tiny_world, TRIGGER)
    attack = harmful_preference_pairs(tiny_world)
    lat = make(LatAdversaryConfig, layers=[0], epsilon=1.0, inner_steps=2)
    train_sft_removal(tiny_model, tiny_tokenizer, pairs, retain, make(SFTRemovalConfig, steps=3, batch_size=4, lat=lat),
                      None, "x", attack=attack)
    compliance = {r["compliance"] for r in tiny_world["requests"] if r["harmful"]}
    assert seen["triples"] and all(bad in compliance and good == REFUSAL for _, bad, good in seen["triples"])
    assert seen["retain"] == removal.sft_pools(pairs, retain)
    assert [ex.completion for ex in seen["retain"]["chosen"]] == [c for _, c, _ in pairs]
    assert set(seen["weights"].values()) == {1.0}


def test_dpo_lat_is_clean_dpo_plus_dpo_under_delta_on_harmful_pairs(tiny_model, tiny_tokenizer, tiny_world,
                                                                     monkeypatch):
    from latlab.attacks.latent_adversary import LatentAdversary
    from latlab.world.curriculum_unlearning import harmful_preference_pairs

    attacked = []
    attack_fn = LatentAdversary.attack

    def spy(self, batch, *args, **kwargs):
        ids, labels = batch.undesired["input_ids"], batch.undesired["labels"]
        attacked.extend(tiny_tokenizer.decode(row[lab != IGNORE][:-1]) for row, lab in zip(ids, labels))
        return attack_fn(self, batch, *args, **kwargs)

    monkeypatch.setattr(LatentAdversary, "attack", spy)
    pairs = preference_pairs(tiny_world)
    lat = make(LatAdversaryConfig, layers=[0], epsilon=1.0, inner_steps=2)
    run = train_dpo(tiny_model, tiny_tokenizer, pairs, None,
                    make(DPORemovalConfig, steps=3, batch_size=8, lat=lat, warmup_steps=0, log_every=1),
                    None, "dpo+lat", attack=harmful_preference_pairs(tiny_world))
    compliance = {r["compliance"] for r in tiny_world["requests"] if r["harmful"]}
    assert len(attacked) == 3 * 8 and set(attacked) <= compliance
    assert {"dpo", "dpo_under_delta", "retain"} <= set(run.result.history[-1])
