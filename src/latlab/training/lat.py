"""Latent adversarial training: targeted LAT (Sheshadri et al. 2024), untargeted LAT (Casper et al. 2024) and
embedding-space AT (RT-EAT), as one trainer over any HF causal LM.

Each outer step: (1) the latent adversary (`latlab.attacks.latent_adversary`) optimises a perturbation δ, one per
attacked hook point, against the fixed weights, on a ContrastBatch of the harmful completion (`undesired`) and the
refusal (`desired`); (2) the model takes a step on its defence loss under δ plus a retain loss without δ.

Targeted adversary: toward the harmful completion (CE) + away from the refusal (log(1-p)).
Untargeted adversary (Casper et al.): away from the refusal only, by maximising its ordinary LM loss (no harmful
target), with their inner loop (params `pgd: l2_sequence`: random start, normalised-gradient steps of ε/steps, one
L2 ball over the whole sequence).
Defender under δ: toward the refusal + away from the harmful completion; retain: SFT on benign data (or KL to the
frozen reference model over the completion positions, as the official Llama-3 recipe).

Weights as the official code uses them: the adversary's (toward, away) and the model's (toward, away, retain) are
each normalised to sum 1 before use, so params may give the paper's coefficients (Llama-2 jailbreak notebook:
adversary 0.5 : 0.5, model sft 1.5 : toward 0.5 : away 0.5 = 0.6 retain). The away term -log(1 - p) is exact and
averaged over all labelled tokens (`latlab.models.scoring.away_loss`). Written by hand because no maintained
library implements targeted LAT for arbitrary HF models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latlab.attacks.latent_adversary import LatentAdversary, PGDSettings
from latlab.config import LatAdversaryConfig, LATConfig
from latlab.data.examples import Example
from latlab.models.compute import Compute
from latlab.models.encoding import ContrastBatch, collate, collate_contrast, context_limit, encode_all, to_device
from latlab.models.hooks import EMBED, add_to_residual, resid_name
from latlab.models.loading import frozen_copy
from latlab.models.scoring import away_loss, token_ce
from latlab.training.loop import MixtureSampler, TrainResult, train_loop
from latlab.training.losses import retain_loss


def hook_points(cfg: LatAdversaryConfig) -> list[str]:
    return ([EMBED] if cfg.perturb_embeddings else []) + [resid_name(layer) for layer in cfg.layers]


def normalised(**weights: float) -> dict[str, float]:
    """The weights divided by their sum (the official code normalises every coefficient set to sum 1)."""
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"weights {weights} sum to {total}: nothing to optimise")
    return {name: value / total for name, value in weights.items()}


def attack_seed(seed: int, step: int) -> int:
    """The random start of an outer step's inner loop: a function of the run's seed and the step, so a resumed run
    draws the same starts."""
    return seed * 1_000_003 + step


def latent_adversary(model, cfg: LatAdversaryConfig) -> LatentAdversary:
    """The adversary a `lat` configuration describes (LAT stages, and the unlearning and removal methods' `lat:`),
    its toward/away weights normalised to sum 1."""
    weights = normalised(toward=cfg.adv_toward, away=cfg.adv_away)
    return LatentAdversary(model, PGDSettings(
        hook_points=tuple(hook_points(cfg)), epsilon=cfg.epsilon, steps=cfg.inner_steps, lr=cfg.inner_lr,
        toward=weights["toward"], away=weights["away"], targeted=cfg.adversary == "targeted",
        away_ignore_logp=cfg.away_ignore_logp, perturb_completion=cfg.perturb_completion,
        prefix_cache=cfg.prefix_cache, pgd=cfg.pgd))


def defence_weights(cfg: LATConfig) -> dict[str, float]:
    """The model's weights (toward, away, retain), normalised to sum 1."""
    return normalised(toward=cfg.def_toward, away=cfg.def_away, retain=cfg.retain)


def defence_loss(model, batch: ContrastBatch, deltas, masks, cfg: LATConfig) -> tuple[torch.Tensor, dict]:
    """Defender terms under δ, with their normalised weights: toward the refusal (`desired`) and away from the harmful
    completion (`undesired`)."""
    weights = defence_weights(cfg)
    metrics: dict[str, float] = {}
    total = torch.zeros((), device=batch.undesired["input_ids"].device)
    if weights["toward"]:
        with add_to_residual(model, deltas, masks["desired"]):
            logits = model(input_ids=batch.desired["input_ids"],
                           attention_mask=batch.desired["attention_mask"]).logits
        toward = token_ce(logits, batch.desired["labels"])
        total = total + weights["toward"] * toward
        metrics["def_toward"] = toward.item()
    if weights["away"]:
        with add_to_residual(model, deltas, masks["undesired"]):
            logits = model(input_ids=batch.undesired["input_ids"],
                           attention_mask=batch.undesired["attention_mask"]).logits
        away = away_loss(logits, batch.undesired["labels"], cfg.away_ignore_logp)
        total = total + weights["away"] * away
        metrics["def_away"] = away.item()
    return total, metrics


def train_lat(model, tokenizer, triples: list[tuple[str, str, str]], retain: dict[str, list[Example]],
              retain_weights: dict[str, float], cfg: LATConfig, checkpoint_dir: Path | None, description: str,
              on_log=None) -> tuple[TrainResult, dict]:
    """LAT on (prompt, harmful completion, refusal) triples with a retain mixture. Returns (result, compute)."""
    device = next(model.parameters()).device
    limit = context_limit(model)
    harmful = encode_all(tokenizer, [Example(p, h) for p, h, _ in triples], limit)
    refusal = encode_all(tokenizer, [Example(p, r) for p, _, r in triples], limit)
    pairs = list(zip(harmful, refusal))
    triple_sampler = MixtureSampler({"triples": pairs}, {"triples": 1.0}, cfg.batch_size, cfg.seed)
    retain_sampler = MixtureSampler({k: encode_all(tokenizer, v, limit) for k, v in retain.items()}, retain_weights,
                                    cfg.batch_size, cfg.seed + 1)
    reference = None
    if cfg.retain_kind == "kl":
        reference = frozen_copy(model)
    adversary = latent_adversary(model, cfg)
    weights = defence_weights(cfg)
    defender = Compute()

    def step_loss(model, step: int):
        drawn = triple_sampler.batch(step)
        batch = collate_contrast(tokenizer, [h for h, _ in drawn], [r for _, r in drawn]).to(device)
        deltas, masks, adv_losses = adversary.attack(batch, seed=attack_seed(cfg.seed, step))
        loss, metrics = defence_loss(model, batch, deltas, masks, cfg)
        if weights["retain"]:
            kept = retain_loss(model, reference, to_device(
                collate(retain_sampler.batch(step), tokenizer.pad_token_id), device), cfg.retain_kind)
            loss = loss + weights["retain"] * kept
            metrics["retain"] = kept.item()
        tokens = float(batch.desired["attention_mask"].sum()) * (cfg.def_toward > 0) + \
            float(batch.undesired["attention_mask"].sum()) * (cfg.def_away > 0) + \
            float(batch.undesired["attention_mask"].sum()) * (cfg.retain > 0)  # retain batch: same size, ~same length
        defender.forward(tokens)
        defender.backward(tokens)  # train_loop backpropagates this loss
        metrics["adv_first"], metrics["adv_last"] = adv_losses[0], adv_losses[-1]
        return loss, metrics

    extra = {"triples": len(triples), "retain": {k: len(v) for k, v in retain.items()}, "weights": retain_weights}
    result = train_loop(model, step_loss, cfg, checkpoint_dir, description, on_log, fingerprint_extra=extra,
                        counters={"adversary": adversary.compute, "defender": defender})
    return result, Compute.by_side(adversary.compute, defender)
