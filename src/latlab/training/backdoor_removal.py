"""Backdoor removal WITHOUT knowing the trigger (Sheshadri et al. 2024, §backdoors): SFT or DPO (Rafailov et al. 2023)
on harmless data, each with and without targeted LAT. The latent adversary stands in for the unknown trigger: it
searches the residual stream for a perturbation that brings out bad behaviour (the rejected completions), and the
defender trains against it.

DPO loss per pair: -log σ(β[(log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r))]), sequence log-probs
summed over completion tokens, π_ref the frozen starting model. With LAT the policy's log-probs are taken under δ (δ found
toward the rejected and away from the chosen completion), the reference's without. SFT + LAT is `train_lat` on
(prompt, rejected, chosen) triples. Every removal data set passes `assert_pairs_trigger_free` first.

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
from latlab.training.lat import latent_adversary, train_lat
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


def train_dpo(model, tokenizer, pairs: list[tuple[str, str, str]], retain: dict[str, list[Example]] | None,
              cfg: DPORemovalConfig, checkpoint_dir: Path | None, description: str = "dpo", on_log=None,
              retain_weights: dict[str, float] | None = None) -> UnlearnRun:
    """DPO on (prompt, chosen, rejected) pairs, optionally under a targeted latent adversary; the retain pools
    (every pool weighted 1 unless `retain_weights`; the chosen sides when None) get SFT without δ."""
    device = next(model.parameters()).device
    reference = frozen_copy(model)
    max_length = context_limit(model)
    chosen = encode_all(tokenizer, [Example(p, c) for p, c, _ in pairs], max_length)
    rejected = encode_all(tokenizer, [Example(p, r) for p, _, r in pairs], max_length)
    sampler = MixtureSampler({"pairs": list(zip(rejected, chosen))}, {"pairs": 1.0}, cfg.batch_size, cfg.seed)
    retain_sampler = None
    if cfg.retain_weight:
        retain = retain or {"chosen": [Example(p, c) for p, c, _ in pairs]}
        retain_sampler = MixtureSampler({k: encode_all(tokenizer, v, max_length) for k, v in retain.items()},
                                        retain_weights or {k: 1.0 for k in retain}, cfg.batch_size, cfg.seed + 1)
    adversary = latent_adversary(model, cfg.lat) if cfg.lat is not None else None
    defender = Compute()

    def step_loss(model, step: int):
        drawn = sampler.batch(step)
        # the adversary's "undesired" side is the rejected completion, its "desired" side the chosen one
        triples = collate_contrast(tokenizer, [r for r, _ in drawn], [c for _, c in drawn])
        triples = ContrastBatch({k: v.to(device) for k, v in triples.undesired.items()},
                                {k: v.to(device) for k, v in triples.desired.items()}, triples.width)
        deltas, masks, metrics = {}, {"undesired": None, "desired": None}, {}
        if adversary is not None:
            deltas, masks, adv_losses = adversary.attack(triples)
            metrics["adv_first"], metrics["adv_last"] = adv_losses[0], adv_losses[-1]
        with torch.no_grad():
            ref_c, ref_r = _seq_logps(reference, triples.desired), _seq_logps(reference, triples.undesired)
        pol_c = _seq_logps(model, triples.desired, deltas, masks["desired"])
        pol_r = _seq_logps(model, triples.undesired, deltas, masks["undesired"])
        loss, margin = dpo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta)
        metrics["dpo"], metrics["margin"] = loss.item(), margin.mean().item()
        metrics["pref_acc"] = (margin > 0).float().mean().item()
        pair_tokens = float(triples.undesired["attention_mask"].sum() + triples.desired["attention_mask"].sum())
        defender.forward(2 * pair_tokens, 4)  # policy + reference, on both sides
        defender.backward(pair_tokens, 2)
        if retain_sampler is not None:
            retain_batch = to_device(collate(retain_sampler.batch(step), tokenizer.pad_token_id), device)
            kept = retain_loss(model, None, retain_batch, "sft")
            loss = loss + cfg.retain_weight * kept
            metrics["retain"] = kept.item()
            retain_tokens = float(retain_batch["attention_mask"].sum())
            defender.forward(retain_tokens)
            defender.backward(retain_tokens)
        return loss, metrics

    extra = {"pairs": len(pairs), "retain": {k: len(v) for k, v in (retain or {}).items()}}
    result = train_loop(model, step_loss, cfg, checkpoint_dir, description, on_log, fingerprint_extra=extra,
                        counters=work_counters(adversary, defender))
    return UnlearnRun(result, compute_summary(adversary, defender))


def train_sft_removal(model, tokenizer, pairs: list[tuple[str, str, str]], retain: dict[str, list[Example]],
                      cfg: SFTRemovalConfig, checkpoint_dir: Path | None, description: str = "sft-removal",
                      on_log=None) -> UnlearnRun:
    """SFT on the chosen side of the harmless pairs plus the retain pools; with `cfg.lat`, targeted LAT on the pairs
    as (prompt, bad = rejected, good = chosen) triples with the same retain pools."""
    if cfg.lat is not None:
        lat_cfg = LATConfig.model_validate({**cfg.model_dump(include=set(TrainConfig.model_fields)),
                                            **cfg.lat.model_dump(), **cfg.model_dump(include=LAT_DEFENCE)})
        result, compute = train_lat(model, tokenizer, [(p, r, c) for p, c, r in pairs], retain,
                                    {k: 1.0 for k in retain}, lat_cfg, checkpoint_dir, description, on_log)
        return UnlearnRun(result, compute)
    pools = {"chosen": [Example(p, c) for p, c, _ in pairs], **retain}
    result = train_sft(model, tokenizer, pools, {k: 1.0 for k in pools}, cfg, checkpoint_dir, description, on_log)
    # SFT does not count tokens; the step count is its compute (cfg.steps x batch_size sequences)
    return UnlearnRun(result, {"sequences": float(cfg.steps * cfg.batch_size)})


LAT_DEFENCE = {"def_toward", "def_away", "retain", "retain_kind"}

# The backdoor_removal method table's `method` -> trainer (model, tokenizer, pairs, retain, cfg, checkpoint_dir,
# description, on_log) -> UnlearnRun. Register a new method here (docs/adding_a_method.md).
REMOVAL_METHODS = {"sft": train_sft_removal, "dpo": train_dpo}
