"""Backdoor removal WITHOUT knowing the trigger (Sheshadri et al. 2024, §backdoors): SFT or DPO (Rafailov et al. 2023)
on harmless data, each with and without targeted LAT. The latent adversary stands in for the unknown trigger: it
searches the residual stream for a perturbation that brings out bad behaviour (the rejected completions), and the
defender trains against it.

DPO loss per pair: -log σ(β[(log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r))]), sequence log-probs
summed over completion tokens, π_ref the frozen starting model. With LAT the adversary targets only the harmful
behaviour: the pairs whose rejected side is harmful compliance (`harmful_preference_pairs` on the toy world),
δ found toward the rejected and away from the chosen completion. DPO + LAT = a DPO term under δ on those pairs + the
clean DPO term on every pair + retain SFT (the official recipe pairs δ-DPO with clean DPO); SFT + LAT = `train_lat`
on those pairs as (prompt, rejected, chosen) triples, whose δ-free retain term is plain SFT's data (the chosen side
of every pair and the retain pools). Benign and over-refusal preferences stay δ-free: put under δ, their rejected
side (the refusal) made the adversary push toward refusing and the model train away from refusal, which at
ε = 4 transferred to harmful prompts (harmful ASR 0.00 -> 0.40). Every removal data set passes
`assert_pairs_trigger_free` first.

Hand-written because TRL's DPOTrainer has no hook for a residual-stream adversary inside the step; the loss is a few
lines.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latlab.config import DPORemovalConfig, LATConfig, SFTRemovalConfig, TrainConfig
from latlab.data.examples import Example
from latlab.models.compute import Compute
from latlab.models.encoding import ContrastBatch, collate, collate_contrast, context_limit, encode_all, to_device
from latlab.models.hooks import add_to_residual
from latlab.models.loading import frozen_copy
from latlab.models.scoring import sequence_logprobs
from latlab.training.lat import attack_seed, latent_adversary, train_lat
from latlab.training.losses import dpo_loss, retain_loss
from latlab.training.loop import MixtureSampler, train_loop
from latlab.training.sft import train_sft
from latlab.training.unlearning import UnlearnRun, compute_summary, work_counters
from latlab.world.curriculum_unlearning import assert_pairs_trigger_free, preference_pairs, retain_pools


def removal_data(world: dict[str, list[dict]], trigger: str) -> tuple[list[tuple[str, str, str]],
                                                                        dict[str, list[Example]]]:
    """(preference pairs, retain pools) from the world, asserted free of the trigger and the backdoor string."""
    return trigger_free_removal_data(preference_pairs(world), retain_pools(world), trigger)


def trigger_free_removal_data(pairs: list[tuple[str, str, str]], retain: dict[str, list[Example]],
                              trigger: str) -> tuple[list[tuple[str, str, str]], dict[str, list[Example]]]:
    """The given removal data, after asserting that neither the trigger nor the backdoor string occurs in it (the
    defender does not know them: data that held them would leak the answer)."""
    assert_pairs_trigger_free(pairs, trigger)
    assert_pairs_trigger_free([(ex.prompt, ex.completion, "") for pool in retain.values() for ex in pool], trigger)
    return pairs, retain


def _seq_logps(model, batch, deltas=None, mask=None) -> torch.Tensor:
    with add_to_residual(model, deltas or {}, mask):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logprobs(logits, batch["labels"])


def _pair_sampler(tokenizer, pairs: list[tuple[str, str, str]], batch_size: int, seed: int,
                  max_length: int | None) -> MixtureSampler:
    """Draws (rejected, chosen) encodings of the pairs."""
    chosen = encode_all(tokenizer, [Example(p, c) for p, c, _ in pairs], max_length)
    rejected = encode_all(tokenizer, [Example(p, r) for p, _, r in pairs], max_length)
    return MixtureSampler({"pairs": list(zip(rejected, chosen))}, {"pairs": 1.0}, batch_size, seed)


def train_dpo(model, tokenizer, pairs: list[tuple[str, str, str]], retain: dict[str, list[Example]] | None,
              cfg: DPORemovalConfig, checkpoint_dir: Path | None, description: str = "dpo", on_log=None,
              retain_weights: dict[str, float] | None = None,
              attack: list[tuple[str, str, str]] | None = None) -> UnlearnRun:
    """DPO on (prompt, chosen, rejected) pairs; the retain pools (every pool weighted 1 unless `retain_weights`; the
    chosen sides when None) get SFT without δ.

    With `cfg.lat`, as the official DPO-LAT recipe: a DPO term under δ on the `attack` pairs (those whose rejected
    side is the harmful behaviour; None: every pair), δ found toward their rejected and away from their chosen side,
    PLUS the clean DPO term on every pair (weight `clean_dpo_weight`) and the same retain term, so DPO + LAT is plain
    DPO with one term added. Benign and over-refusal preferences never meet δ: an adversary that pushed toward
    refusing benign prompts would train the model away from refusal under δ, which transfers to harmful prompts."""
    device = next(model.parameters()).device
    reference = frozen_copy(model)
    max_length = context_limit(model)
    sampler = _pair_sampler(tokenizer, pairs, cfg.batch_size, cfg.seed, max_length)
    attack_sampler = _pair_sampler(tokenizer, attack if attack is not None else pairs, cfg.batch_size, cfg.seed + 2,
                                   max_length) if cfg.lat is not None else None
    retain_sampler = None
    if cfg.retain_weight:
        retain = retain or {"chosen": [Example(p, c) for p, c, _ in pairs]}
        retain_sampler = MixtureSampler({k: encode_all(tokenizer, v, max_length) for k, v in retain.items()},
                                        retain_weights or {k: 1.0 for k in retain}, cfg.batch_size, cfg.seed + 1)
    adversary = latent_adversary(model, cfg.lat) if cfg.lat is not None else None
    defender = Compute()

    def pair_batch(drawn) -> ContrastBatch:
        # the adversary's "undesired" side is the rejected completion, its "desired" side the chosen one
        triples = collate_contrast(tokenizer, [r for r, _ in drawn], [c for _, c in drawn])
        return ContrastBatch({k: v.to(device) for k, v in triples.undesired.items()},
                             {k: v.to(device) for k, v in triples.desired.items()}, triples.width)

    def dpo_term(triples: ContrastBatch, deltas, masks) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():  # the reference sees the clean input
            ref_c, ref_r = _seq_logps(reference, triples.desired), _seq_logps(reference, triples.undesired)
        pol_c = _seq_logps(model, triples.desired, deltas, masks["desired"])
        pol_r = _seq_logps(model, triples.undesired, deltas, masks["undesired"])
        pair_tokens = float(triples.undesired["attention_mask"].sum() + triples.desired["attention_mask"].sum())
        defender.forward(2 * pair_tokens, 4)  # policy + reference, on both sides
        defender.backward(pair_tokens, 2)
        return dpo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta)

    def step_loss(model, step: int):
        metrics = {}
        loss, margin = dpo_term(pair_batch(sampler.batch(step)), {}, {"undesired": None, "desired": None})
        metrics["dpo"], metrics["margin"] = loss.item(), margin.mean().item()
        metrics["pref_acc"] = (margin > 0).float().mean().item()
        if adversary is not None:
            triples = pair_batch(attack_sampler.batch(step))
            deltas, masks, adv_losses = adversary.attack(triples, seed=attack_seed(cfg.seed, step))
            metrics["adv_first"], metrics["adv_last"] = adv_losses[0], adv_losses[-1]
            attacked, attacked_margin = dpo_term(triples, deltas, masks)
            loss = cfg.clean_dpo_weight * loss + attacked
            metrics["dpo_under_delta"], metrics["margin_under_delta"] = attacked.item(), attacked_margin.mean().item()
        if retain_sampler is not None:
            retain_batch = to_device(collate(retain_sampler.batch(step), tokenizer.pad_token_id), device)
            kept = retain_loss(model, None, retain_batch, "sft")
            loss = loss + cfg.retain_weight * kept
            metrics["retain"] = kept.item()
            retain_tokens = float(retain_batch["attention_mask"].sum())
            defender.forward(retain_tokens)
            defender.backward(retain_tokens)
        return loss, metrics

    extra = {"pairs": len(pairs), "attack": len(attack) if attack is not None else None,
             "retain": {k: len(v) for k, v in (retain or {}).items()}}
    result = train_loop(model, step_loss, cfg, checkpoint_dir, description, on_log, fingerprint_extra=extra,
                        counters=work_counters(adversary, defender))
    return UnlearnRun(result, compute_summary(adversary, defender))


def train_sft_removal(model, tokenizer, pairs: list[tuple[str, str, str]], retain: dict[str, list[Example]],
                      cfg: SFTRemovalConfig, checkpoint_dir: Path | None, description: str = "sft-removal",
                      on_log=None, attack: list[tuple[str, str, str]] | None = None) -> UnlearnRun:
    """SFT on the chosen side of the harmless pairs plus the retain pools (`sft_pools`, every pool weighted 1).

    With `cfg.lat`: targeted LAT whose δ-free retain term is exactly that SFT, and whose δ terms take the `attack`
    pairs (rejected side = the harmful behaviour; None: every pair) as (prompt, bad = rejected, good = chosen)
    triples; the weights def_toward : def_away : retain are normalised to sum 1 (`train_lat`). So SFT + LAT is plain
    SFT plus the adversarial terms, and benign and over-refusal preferences stay in the δ-free term."""
    pools = sft_pools(pairs, retain)
    if cfg.lat is not None:
        lat_cfg = LATConfig.model_validate({**cfg.model_dump(include=set(TrainConfig.model_fields)),
                                            **cfg.lat.model_dump(), **cfg.model_dump(include=LAT_DEFENCE)})
        triples = [(p, r, c) for p, c, r in (attack if attack is not None else pairs)]
        result, compute = train_lat(model, tokenizer, triples, pools, {k: 1.0 for k in pools}, lat_cfg,
                                    checkpoint_dir, description, on_log)
        return UnlearnRun(result, compute)
    result = train_sft(model, tokenizer, pools, {k: 1.0 for k in pools}, cfg, checkpoint_dir, description, on_log)
    # SFT does not count tokens; the step count is its compute (cfg.steps x batch_size sequences)
    return UnlearnRun(result, {"sequences": float(cfg.steps * cfg.batch_size)})


def sft_pools(pairs: list[tuple[str, str, str]], retain: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """Plain SFT removal's data: the chosen side of every pair, and the retain pools."""
    return {"chosen": [Example(p, c) for p, c, _ in pairs], **retain}


LAT_DEFENCE = {"def_toward", "def_away", "retain", "retain_kind"}

# The backdoor_removal method table's `method` -> trainer (model, tokenizer, pairs, retain, cfg, checkpoint_dir,
# description, on_log, attack=None) -> UnlearnRun; `attack`: the pairs whose rejected side is the harmful behaviour
# (the adversary's only targets; None: every pair). Register a new method here (docs/adding_a_method.md).
REMOVAL_METHODS = {"sft": train_sft_removal, "dpo": train_dpo}
