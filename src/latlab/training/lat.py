"""Latent adversarial training: targeted LAT (Sheshadri et al. 2024), untargeted LAT (Casper et al. 2024) and
embedding-space AT (RT-EAT), as one trainer over any HF causal LM.

Each outer step: (1) an adversary optimises a perturbation δ, one per attacked hook point, [batch, seq, d_model],
added to the residual stream on prompt positions (optionally completion positions too) and kept inside a per-token
L2 ball of radius ε, with Adam for `inner_steps` steps while the weights stay fixed; (2) the model takes a step on
its defence loss under δ plus a retain loss without δ.

Targeted adversary: toward the harmful completion (CE) + away from the refusal (log(1-p)).
Untargeted adversary: away from the refusal only, by maximising its ordinary CE (no harmful target).
Defender under δ: toward the refusal + away from the harmful completion; retain: SFT on benign data (or KL to the
frozen reference model).

Prefix caching (our addition; the official code recomputes everything): when the lowest attacked block is L, the
activations up to block L's output do not change during the inner loop, so they are computed once per batch and
the inner loop runs only blocks > L (`run_upper_blocks`). Written by hand because no maintained library implements
targeted LAT for arbitrary HF models.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from latlab.config import LATConfig
from latlab.models.hooks import (EMBED, add_to_residual, base_model, capture_residual, decoder_layers,
                                 hook_layer_index, resid_name)
from latlab.training.examples import IGNORE, Example, collate, encode_all
from latlab.training.loop import MixtureSampler, TrainResult, train_loop


@dataclass
class TripleBatch:
    """Harmful prompt with its harmful completion and its refusal; both sequences share the prompt prefix."""
    harmful: dict[str, torch.Tensor]  # input_ids, attention_mask, labels: [batch, seq_h]
    refusal: dict[str, torch.Tensor]  # [batch, seq_r]
    width: int  # max(seq_h, seq_r): the width δ is allocated with


def hook_points(cfg: LATConfig) -> list[str]:
    return ([EMBED] if cfg.perturb_embeddings else []) + [resid_name(layer) for layer in cfg.layers]


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions. logits [batch, seq, vocab], labels [batch, seq]."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def away_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_logp: float = -5.0) -> torch.Tensor:
    """Mean of -log(1 - p(label)) over labelled positions where log p >= ignore_logp; lowering it lowers p."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    valid = targets != IGNORE
    token_logp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    keep = valid & (token_logp >= ignore_logp)
    if not keep.any():
        return logits.sum() * 0.0
    log_one_minus_p = torch.log1p(-token_logp.exp().clamp(max=1 - 1e-6))
    return -(log_one_minus_p * keep).sum() / keep.sum()


def perturbation_mask(batch: dict[str, torch.Tensor], width: int, include_completion: bool) -> torch.Tensor:
    """[batch, width] float mask of the positions δ may touch: the prompt (and optionally the completion)."""
    real = batch["attention_mask"].bool()
    positions = real if include_completion else real & (batch["labels"] == IGNORE)
    mask = torch.zeros(positions.shape[0], width, device=positions.device)
    mask[:, : positions.shape[1]] = positions.float()
    return mask


def project_to_ball(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Scale each token vector [.., d_model] down to L2 norm <= epsilon."""
    norms = delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return delta * (epsilon / norms).clamp(max=1.0)


@contextmanager
def _only_blocks_above(model, layer: int):
    """Temporarily make the decoder stack contain only blocks layer+1.. (for runs that start from a cached state)."""
    stack = base_model(model)
    full = stack.layers
    stack.layers = torch.nn.ModuleList(list(full)[layer + 1:])
    try:
        yield
    finally:
        stack.layers = full


def cache_block_output(model, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Residual stream after block `layer` ([batch, seq, d_model]), computed once without grad."""
    with torch.no_grad(), capture_residual(model, [resid_name(layer)]) as store:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return store[resid_name(layer)]


def run_upper_blocks(model, cached: torch.Tensor, batch: dict[str, torch.Tensor], layer: int,
                     delta_at_layer: torch.Tensor | None) -> torch.Tensor:
    """Logits from the cached output of block `layer` (+ its δ), running only the blocks above it.

    Works for decoder stacks that accept `inputs_embeds` and apply no embedding scale inside forward
    (Llama, Mistral, Qwen2, SmolLM); the equivalence test in tests/test_lat.py guards this.
    """
    # δ stays fp32 for Adam; a bf16 model's cached state would otherwise be promoted or refuse the add
    hidden = cached if delta_at_layer is None else cached + delta_at_layer.to(cached.dtype)
    with _only_blocks_above(model, layer):
        return model(inputs_embeds=hidden, attention_mask=batch["attention_mask"]).logits


def _device_batch(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class LatentAdversary:
    """Optimises one δ per hook point against a frozen model for a triple batch (the inner PGD loop)."""

    def __init__(self, model, cfg: LATConfig):
        self.model, self.cfg = model, cfg
        self.points = hook_points(cfg)
        self.lowest = min(hook_layer_index(p) for p in self.points)
        d_model = model.get_input_embeddings().weight.shape[1]
        self.d_model = d_model
        # work in tokens through the whole model (a block-fraction of a pass counts as that fraction), the same
        # FLOP proxy R2D2 reports; the inner loop runs a backward for every forward
        self.compute = {"forward_tokens": 0.0, "backward_tokens": 0.0}
        self.n_layers = len(decoder_layers(model))

    def _logits(self, batch, deltas, mask, cached):
        if cached is not None:
            name = resid_name(self.lowest)
            upper = {n: d for n, d in deltas.items() if n != name}
            with add_to_residual(self.model, upper, mask):
                at_layer = deltas[name][:, : batch["input_ids"].shape[1]] * mask[:, : batch["input_ids"].shape[1],
                                                                                 None]
                logits = run_upper_blocks(self.model, cached, batch, self.lowest, at_layer)
            self._count(batch, (self.n_layers - self.lowest - 1) / self.n_layers, backward=True)
            return logits
        with add_to_residual(self.model, deltas, mask):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        self._count(batch, 1.0, backward=True)
        return logits

    def _count(self, batch, fraction: float, backward: bool) -> None:
        tokens = float(batch["attention_mask"].sum()) * fraction
        self.compute["forward_tokens"] += tokens
        if backward:
            self.compute["backward_tokens"] += tokens

    def loss(self, triples: TripleBatch, deltas, masks, caches) -> torch.Tensor:
        cfg = self.cfg
        total = torch.zeros((), device=triples.harmful["input_ids"].device)
        if cfg.adversary == "targeted":
            if cfg.adv_toward:
                logits = self._logits(triples.harmful, deltas, masks["harmful"], caches.get("harmful"))
                total = total + cfg.adv_toward * token_ce(logits, triples.harmful["labels"])
            if cfg.adv_away:
                logits = self._logits(triples.refusal, deltas, masks["refusal"], caches.get("refusal"))
                total = total + cfg.adv_away * away_loss(logits, triples.refusal["labels"], cfg.away_ignore_logp)
        else:
            logits = self._logits(triples.refusal, deltas, masks["refusal"], caches.get("refusal"))
            total = total - cfg.adv_away * token_ce(logits, triples.refusal["labels"])
        return total

    def attack(self, triples: TripleBatch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float]]:
        """Returns (deltas, masks, adversary loss per inner step)."""
        cfg = self.cfg
        batch_size = triples.harmful["input_ids"].shape[0]
        device = triples.harmful["input_ids"].device
        deltas = {p: torch.zeros(batch_size, triples.width, self.d_model, device=device, requires_grad=True)
                  for p in self.points}
        masks = {name: perturbation_mask(getattr(triples, name), triples.width, cfg.perturb_completion)
                 for name in ("harmful", "refusal")}
        caches: dict[str, torch.Tensor] = {}
        if cfg.prefix_cache and self.lowest >= 0:
            for name in ("harmful", "refusal"):
                caches[name] = cache_block_output(self.model, getattr(triples, name), self.lowest)
                self._count(getattr(triples, name), 1.0, backward=False)  # the caching pass runs the full model
        optimizer = torch.optim.Adam(list(deltas.values()), lr=cfg.inner_lr)
        losses = []
        for _ in range(cfg.inner_steps):
            loss = self.loss(triples, deltas, masks, caches)
            grads = torch.autograd.grad(loss, list(deltas.values()))
            optimizer.zero_grad(set_to_none=True)
            for delta, grad in zip(deltas.values(), grads):
                delta.grad = grad
            optimizer.step()
            with torch.no_grad():
                for delta in deltas.values():
                    delta.copy_(project_to_ball(delta, cfg.epsilon))
            losses.append(loss.detach())  # one host sync after the loop, not one per inner step (GPU)
        return {p: d.detach() for p, d in deltas.items()}, masks, torch.stack(losses).tolist()


def defence_loss(model, triples: TripleBatch, deltas, masks, cfg: LATConfig) -> tuple[torch.Tensor, dict]:
    """Defender terms under δ: toward the refusal and away from the harmful completion."""
    metrics: dict[str, float] = {}
    total = torch.zeros((), device=triples.harmful["input_ids"].device)
    if cfg.def_toward:
        with add_to_residual(model, deltas, masks["refusal"]):
            logits = model(input_ids=triples.refusal["input_ids"],
                           attention_mask=triples.refusal["attention_mask"]).logits
        toward = token_ce(logits, triples.refusal["labels"])
        total = total + cfg.def_toward * toward
        metrics["def_toward"] = toward.item()
    if cfg.def_away:
        with add_to_residual(model, deltas, masks["harmful"]):
            logits = model(input_ids=triples.harmful["input_ids"],
                           attention_mask=triples.harmful["attention_mask"]).logits
        away = away_loss(logits, triples.harmful["labels"], cfg.away_ignore_logp)
        total = total + cfg.def_away * away
        metrics["def_away"] = away.item()
    return total, metrics


def retain_loss(model, reference, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if kind == "sft":
        return token_ce(logits, batch["labels"])
    with torch.no_grad():
        ref_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    return F.kl_div(torch.log_softmax(logits[mask].float(), -1), torch.log_softmax(ref_logits[mask].float(), -1),
                    log_target=True, reduction="batchmean")


def collate_triples(tokenizer, encoded_harmful, encoded_refusal) -> TripleBatch:
    harmful = collate(encoded_harmful, tokenizer.pad_token_id)
    refusal = collate(encoded_refusal, tokenizer.pad_token_id)
    return TripleBatch(harmful, refusal, max(harmful["input_ids"].shape[1], refusal["input_ids"].shape[1]))


def train_lat(model, tokenizer, triples: list[tuple[str, str, str]], retain: dict[str, list[Example]],
              retain_weights: dict[str, float], cfg: LATConfig, checkpoint_dir: Path | None, description: str,
              on_log=None) -> tuple[TrainResult, dict]:
    """LAT on (prompt, harmful completion, refusal) triples with a retain mixture. Returns (result, compute)."""
    device = next(model.parameters()).device
    harmful = encode_all(tokenizer, [Example(p, h) for p, h, _ in triples])
    refusal = encode_all(tokenizer, [Example(p, r) for p, _, r in triples])
    pairs = list(zip(harmful, refusal))
    triple_sampler = MixtureSampler({"triples": pairs}, {"triples": 1.0}, cfg.batch_size, cfg.seed)
    retain_sampler = MixtureSampler({k: encode_all(tokenizer, v) for k, v in retain.items()}, retain_weights,
                                    cfg.batch_size, cfg.seed + 1)
    reference = None
    if cfg.retain_kind == "kl":
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    adversary = LatentAdversary(model, cfg)
    defender = {"forward_tokens": 0.0, "backward_tokens": 0.0}

    def step_loss(model, step: int):
        drawn = triple_sampler.batch(step)
        batch = collate_triples(tokenizer, [h for h, _ in drawn], [r for _, r in drawn])
        batch = TripleBatch(_device_batch(batch.harmful, device), _device_batch(batch.refusal, device), batch.width)
        deltas, masks, adv_losses = adversary.attack(batch)
        loss, metrics = defence_loss(model, batch, deltas, masks, cfg)
        if cfg.retain:
            kept = retain_loss(model, reference, _device_batch(
                collate(retain_sampler.batch(step), tokenizer.pad_token_id), device), cfg.retain_kind)
            loss = loss + cfg.retain * kept
            metrics["retain"] = kept.item()
        tokens = float(batch.refusal["attention_mask"].sum()) * (cfg.def_toward > 0) + \
            float(batch.harmful["attention_mask"].sum()) * (cfg.def_away > 0) + \
            float(batch.harmful["attention_mask"].sum()) * (cfg.retain > 0)  # retain batch: same size, ~same length
        defender["forward_tokens"] += tokens
        defender["backward_tokens"] += tokens
        metrics["adv_first"], metrics["adv_last"] = adv_losses[0], adv_losses[-1]
        return loss, metrics

    extra = {"triples": len(triples), "retain": {k: len(v) for k, v in retain.items()}, "weights": retain_weights}
    result = train_loop(model, step_loss, cfg, checkpoint_dir, description, on_log, fingerprint_extra=extra)
    compute = {**{f"adversary_{k}": v for k, v in adversary.compute.items()},
               **{f"defender_{k}": v for k, v in defender.items()}}
    compute["forward_tokens"] = adversary.compute["forward_tokens"] + defender["forward_tokens"]
    compute["backward_tokens"] = adversary.compute["backward_tokens"] + defender["backward_tokens"]
    return result, compute
