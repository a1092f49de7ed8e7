"""Unlearning a knowledge domain: gradient ascent with a retain loss, WHP-style generic-label fine-tuning (Eldan &
Russinovich 2023, "Who's Harry Potter?") and RMU (Li et al. 2024, "The WMDP Benchmark"), each optionally hardened
with targeted latent adversarial training (Sheshadri et al. 2024, §"unlearning").

All three share one loop (`unlearn_loop`, on top of `train_loop`, so they get checkpoint/resume, the NaN guard and
progress): per step a forget batch and a retain batch are drawn; with LAT a `LatentAdversary` (training/lat.py) first
finds δ in the residual stream that pushes the frozen model TOWARD the forget-domain answers (and, for WHP, away
from the generic labels), then the method's forget loss (weight `forget_weight`) and the LAT paper's defender "away"
term (`away_weight`: log(1-p) of the forget answers, averaged over all labelled tokens) are computed under δ; the
retain loss is computed without δ. Every forget-side term (the method's, the away term, the adversary's target, RMU's
positions) sees the forget answers' content tokens only, not the end-of-turn token every completion ends with
(`knowledge_labels`: lowering that one shared token was the LAT twins' shortcut). With the answers as its only
target, an adversary of ε 4 at blocks 1-2 of the toy model (residual norm ~10-13 there) holds them against every
likelihood-lowering twin (none unlearned); params.yaml gives those twins ε 1 (docs/unlearning.md, the sweep in
benchmarks/results/unlearn_eps_sweep.md). RMU and WHP twins unlearn at ε 1 and 4 alike and keep 4.

Why the away term under δ: the adversary drives p(forget answer) toward 1, and the gradient of any likelihood-lowering
loss (GA's -CE, GradDiff, NPO, SimNPO) carries a factor (1 - p), so under δ it nearly vanishes; log(1 - p)'s grows
instead. Measured on the toy base (forget batch of 16): |∇(-CE)| 0.50 clean vs 0.30 under δ, |∇ log(1-p)| 8.5 / 8.7;
after 60 steps GA+LAT with the ascent under δ kept 0.67 of the forget answers (teacher-forced exact match) where GA
kept 0.15, i.e. the "+LAT" twin mostly did not unlearn (the suspicion of the stop-23 note). The official GA-LAT
(WMDP config: sft 4 : toward 1 : away 1) has no ascent term at all: its forget term is this away term under δ, so
`ga_lat` is `forget_weight 0, away_weight 1` (measured: 0.16 kept, with 0.60 of the retain facts vs GA's 0.39).
GradDiff, NPO and SimNPO have no official LAT variant; their twins keep the method's loss under δ and add the away
term (`away_weight 1`), our choice, so that the twin is the method plus the LAT defender term.

- Gradient ascent: forget loss = -min(CE(forget answers), ceiling); the ceiling keeps ascent from diverging once
  the answers are already unlikely (bounded ascent, a common stabiliser).
- WHP (Eldan & Russinovich, §2): a reinforced copy is fine-tuned further on the forget data; the baseline's
  predictions on the ANCHOR-TRANSLATED text (the domain's entities and relation names replaced by generic
  counterparts, `latlab.world.curriculum_unlearning.anchored_terms`; exact on the toy world; a span may change
  length, "wand wood" -> "weapon", and `translate` keeps the positions aligned) are
  combined with the reinforcement bootstrap: generic = baseline_translated - α·relu(reinforced - baseline), in
  log-probabilities, the difference centred per position (mean over the vocabulary), so the offset between two
  models' logits does not decide the sign of the difference (on raw logits the reinforced model of a saturated fact
  sits ~1.6 below the base and the ReLU never fires). The labels are the argmax (hard labels, as in the paper).
  Positions whose original token is itself an anchored term keep no generic label (the model should not learn to
  rename the entity; our reading of the paper's handling of anchors). The combination of the two signals in one
  formula is also our reading of the paper's §2.3. The model trains toward the generic labels, and with
  `away_weight` away from the originals (the LAT paper's WHP recipe), only where the two differ; the adversary
  likewise goes toward the originals and away from the generic labels only there. Without anchors (real data) only
  the bootstrap is used. `generic_differs_fraction` (share of the pool's answer tokens
  whose generic label differs) is in the run's metrics; with LAT, also `adversary_ce_with_delta` /
  `adversary_ce_without_delta` (CE of the original labels under the last step's δ and without it).
- RMU: on forget text, layer-L activations are pushed toward c·u (u a fixed random unit vector); on retain text
  they are kept at the frozen model's (weight α = `retain_weight`); only `down_proj` of a few layers up to L is
  trained.
- GradDiff (as open-unlearning registers it): forget loss = -CE(forget answers), unbounded, + retain CE.
- NPO (Zhang et al. 2024): forget loss = -(2/β)·log σ(-β·(log π_θ(y|x) - log π_ref(y|x))), sequence log-probs summed
  over answer tokens, π_ref the frozen starting model (= (2/β)·log(1 + (π_θ/π_ref)^β), the paper's form), as in the
  official code; bounded below by 0, so unlike GA it cannot diverge.
- SimNPO (Fan et al. 2024): reference-free: forget loss = -(2/β)·log σ(-(β/|y|)·log π_θ(y|x) - γ), with |y| the
  number of answer tokens. The official code writes the margin as β·δ; `gamma` here is the paper's γ.
Every method's retain term is SFT on the retain pools (RMU: activation matching), weighted by `retain_weight`.

Methods are registered in `UNLEARNING_METHODS` (the `method` of a params.yaml `unlearn` entry -> its trainer).

Hand-written because no maintained library implements these for arbitrary HF causal LMs together with LAT (the
official WMDP RMU script and the WHP recipe are single-model scripts).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from latlab.config import (GradDiffConfig, GradientAscentConfig, NPOConfig, RMUConfig, SimNPOConfig, TrainConfig,
                           UnlearnConfig, WHPConfig)
from latlab.attacks.latent_adversary import LatentAdversary
from latlab.data.examples import Example
from latlab.models.compute import Compute
from latlab.models.encoding import IGNORE, ContrastBatch, collate, context_limit, encode_all, pad_rows, token_ids
from latlab.models.hooks import add_to_residual, capture_residual, decoder_layers, resid_name
from latlab.models.loading import frozen_copy
from latlab.models.scoring import away_loss, labelled_counts, sequence_logprobs, token_ce
from latlab.training.lat import attack_seed, latent_adversary
from latlab.training.losses import masked_mse, retain_loss
from latlab.training.loop import MixtureSampler, TrainResult, train_loop
from latlab.training.sft import train_sft
from latlab.world.curriculum_unlearning import Anchors


# (model, triples, deltas, mask) -> (loss, metrics); `triples.undesired` holds the forget text with its real labels,
# `triples.desired` what the defender wants instead (the same batch where a method has no alternative target).
ForgetTerm = Callable[[torch.nn.Module, ContrastBatch, dict, torch.Tensor | None], tuple[torch.Tensor, dict]]
# forget batch -> ContrastBatch (e.g. WHP attaches generic labels)
Prepare = Callable[[dict[str, torch.Tensor]], ContrastBatch]
RetainTerm = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def _same_batch(batch: dict[str, torch.Tensor]) -> ContrastBatch:
    return ContrastBatch(batch, batch, batch["input_ids"].shape[1])


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def knowledge_labels(labels: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """`labels` [batch, seq] with the tokenizer's special tokens (end of turn / eos, pad, bos) set to IGNORE: what a
    forget loss may lower is the answer's content, not the format every completion shares.

    Why: every encoded completion ends with the eos token (models.encoding.encode_example), and a sequence-level
    likelihood-lowering loss is satisfied just as well by making that one shared token improbable. Measured token by
    token on the default run's NPO-LAT (log p of the labels, six forget training examples): the answers at -0.5 to
    -2.8 (base: -0.0 to -0.8), the end token after them at -18 to -19 (base: -0.0), and free recall of the forget
    facts 0.94 on the training templates; plain NPO had put its -5.5 to -19 on the answers. The LAT twins found the
    shortcut because the adversary holds p(answer) near 1 under δ; the official unlearning data (WMDP, HP text)
    carries no end token in its labels at all, so masking it here follows the official setting."""
    keep = torch.ones_like(labels, dtype=torch.bool)
    for token in special_ids:
        keep &= labels != token
    return torch.where(keep, labels, torch.full_like(labels, IGNORE))


@dataclass
class UnlearnRun:
    result: TrainResult
    compute: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)  # method diagnostics for the stage's metrics file


def unlearn_loop(model, tokenizer, forget: list[Example], retain: dict[str, list[Example]],
                 retain_weights: dict[str, float], cfg: UnlearnConfig, forget_term: ForgetTerm,
                 checkpoint_dir: Path | None, description: str, on_log=None, prepare: Prepare = _same_batch,
                 has_alternative: bool = False, retain_term: RetainTerm | None = None,
                 parameters=None, reference_passes: tuple[int, int] = (0, 0)) -> UnlearnRun:
    """The shared step: [LAT attack] -> forget term and away term under δ -> + retain term without δ -> train_loop.

    `reference_passes`: gradient-free forward passes of frozen models per step on (forget, retain) batches, for the
    compute count (WHP: 2 on forget; RMU: 1 on retain)."""
    device = next(model.parameters()).device
    max_length = context_limit(model)
    forget_sampler = MixtureSampler({"forget": encode_all(tokenizer, forget, max_length)}, {"forget": 1.0},
                                    cfg.batch_size, cfg.seed)
    retain_sampler = MixtureSampler({k: encode_all(tokenizer, v, max_length) for k, v in retain.items()},
                                    retain_weights, cfg.batch_size, cfg.seed + 1)
    retain_term = retain_term or (lambda m, b: retain_loss(m, None, b, "sft"))
    adversary = None
    if cfg.lat is not None:
        # Without an alternative target the "away" slot would be the forget answers themselves: switch it off.
        lat_cfg = cfg.lat if has_alternative else cfg.lat.model_copy(update={"adv_away": 0.0})
        adversary = latent_adversary(model, lat_cfg)
    defender = Compute()
    # without LAT, `away_loss`'s own default floor (the official code's)
    floor = {"ignore_logp": cfg.lat.away_ignore_logp} if cfg.lat is not None else {}

    def count(batch, passes: int, backward: bool) -> None:
        tokens = float(batch["attention_mask"].sum()) * passes
        defender.forward(tokens, passes)
        if backward:
            defender.backward(tokens, passes)

    final: dict[str, float] = {}

    special = sorted(set(tokenizer.all_special_ids))

    def step_loss(model, step: int):
        batch = _to(collate(forget_sampler.batch(step), tokenizer.pad_token_id), device)
        triples = prepare({**batch, "labels": knowledge_labels(batch["labels"], special)})
        count(triples.undesired, 1, True)
        count(triples.undesired, reference_passes[0], False)
        deltas, mask, metrics = {}, None, {}
        if adversary is not None:
            deltas, masks, adv_losses = adversary.attack(triples, seed=attack_seed(cfg.seed, step))
            mask = masks["undesired"]
            metrics["adv_first"], metrics["adv_last"] = adv_losses[0], adv_losses[-1]
            if step == cfg.steps - 1:  # does the adversary still elicit the forget answers at the end?
                final.update(adversary_effect(model, triples.undesired, deltas, mask))
        loss = torch.zeros((), device=device)
        if cfg.forget_weight:
            forget_loss, forget_metrics = forget_term(model, triples, deltas, mask)
            loss = loss + cfg.forget_weight * forget_loss
            metrics.update(forget_metrics)
        if cfg.away_weight:
            away = away_loss(_logits_under(model, triples.undesired, deltas, mask), triples.undesired["labels"],
                             **floor)
            loss = loss + cfg.away_weight * away
            metrics["away"] = away.item()
            count(triples.undesired, 1, True)
        if cfg.retain_weight:
            retain_batch = _to(collate(retain_sampler.batch(step), tokenizer.pad_token_id), device)
            kept = retain_term(model, retain_batch)
            loss = loss + cfg.retain_weight * kept
            metrics["retain"] = kept.item()
            count(retain_batch, 1, True)
            count(retain_batch, reference_passes[1], False)
        return loss, metrics

    extra = {"forget": len(forget), "retain": {k: len(v) for k, v in retain.items()}, "weights": retain_weights,
             "method": type(cfg).__name__}
    result = train_loop(model, step_loss, cfg, checkpoint_dir, description, on_log, fingerprint_extra=extra,
                        parameters=parameters, counters=work_counters(adversary, defender))
    return UnlearnRun(result, compute_summary(adversary, defender), final)


@torch.no_grad()
def adversary_effect(model, batch: dict[str, torch.Tensor], deltas: dict, mask) -> dict[str, float]:
    """CE of the batch's labels (the forget answers the adversary goes toward) with δ and without it."""
    return {"adversary_ce_with_delta": token_ce(_logits_under(model, batch, deltas, mask), batch["labels"]).item(),
            "adversary_ce_without_delta": token_ce(_logits_under(model, batch, {}, None), batch["labels"]).item()}


def compute_summary(adversary: LatentAdversary | None, defender: Compute) -> dict[str, float]:
    """Tokens through the model, forward and backward, split by adversary and defender (train_lat's format)."""
    return Compute.by_side(adversary.compute if adversary is not None else Compute(), defender)


def work_counters(adversary: LatentAdversary | None, defender: Compute) -> dict[str, Compute]:
    """The counters `train_loop` checkpoints, so that a resumed run's compute covers the whole run."""
    return {"defender": defender, **({"adversary": adversary.compute} if adversary is not None else {})}


def _logits_under(model, batch: dict[str, torch.Tensor], deltas: dict, mask) -> torch.Tensor:
    with add_to_residual(model, deltas, mask):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# --- gradient ascent ---------------------------------------------------------------------------------------------

def train_gradient_ascent(model, tokenizer, forget: list[Example], retain: dict[str, list[Example]],
                          retain_weights: dict[str, float], cfg: GradientAscentConfig, checkpoint_dir: Path | None,
                          description: str = "unlearn-ga", on_log=None) -> UnlearnRun:
    def forget_term(model, triples, deltas, mask):
        ce = token_ce(_logits_under(model, triples.undesired, deltas, mask), triples.undesired["labels"])
        return -ce.clamp(max=cfg.ascent_ceiling), {"forget_ce": ce.item()}

    return unlearn_loop(model, tokenizer, forget, retain, retain_weights, cfg, forget_term, checkpoint_dir,
                        description, on_log)


# --- WHP ---------------------------------------------------------------------------------------------------------

def reinforce_model(model, tokenizer, forget: list[Example], cfg: TrainConfig, checkpoint_dir: Path | None,
                    description: str = "whp-reinforce"):
    """A copy of the model fine-tuned further on the forget data (the 'reinforced' model of WHP)."""
    reinforced = copy.deepcopy(model)
    train_sft(reinforced, tokenizer, {"forget": forget}, {"forget": 1.0}, cfg, checkpoint_dir, description)
    return frozen_copy(reinforced)


def generic_logits(base: torch.Tensor, reinforced: torch.Tensor, alpha: float,
                   translated: torch.Tensor | None = None, centre: bool = False) -> torch.Tensor:
    """Eldan & Russinovich: v_generic = v_translated - alpha * relu(v_reinforced - v_base), where v_translated is the
    baseline's prediction on the anchor-translated text (eq. 1 when there is none: v_translated = v_base). With
    `centre`, the per-position offset of the two models (the mean over the vocabulary of v_reinforced - v_base) is
    removed from the difference first (see `generic_labels`)."""
    difference = reinforced - base
    if centre:
        difference = difference - difference.mean(-1, keepdim=True)
    return (base if translated is None else translated) - alpha * torch.relu(difference)


AnchorMap = dict[tuple[int, ...], tuple[int, ...]]


def anchor_token_map(tokenizer, anchors: Anchors) -> AnchorMap:
    """Token ids of each anchored term -> those of its counterpart (a span may map to a span of another length:
    "wand wood" -> "weapon"). ValueError names a term that tokenises to nothing."""
    mapping = {}
    for term, generic in anchors.generic.items():
        src, dst = tuple(token_ids(tokenizer, term)), tuple(token_ids(tokenizer, generic))
        if not src or not dst:
            raise ValueError(f"anchored term {term!r} -> {generic!r} tokenises to nothing ({src} -> {dst})")
        mapping[src] = dst
    return mapping


@dataclass
class Translation:
    """The anchor-translated batch. `input_ids`, `attention_mask`: [batch, seq'] (right-padded, seq' may differ from
    the original's seq when spans change length); `positions` [batch, seq]: the translated position whose
    prediction stands for each original position's (the last token of a replaced span for every token inside it);
    `anchored` [batch, seq]: original positions inside an anchored span."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    anchored: torch.Tensor


def translate(input_ids: torch.Tensor, attention_mask: torch.Tensor, mapping: AnchorMap, pad_id: int = 0
              ) -> Translation:
    """Every anchored span of the (right-padded) rows replaced by its counterpart, longest span first; positions
    kept aligned so the translated prediction after a prefix can be compared with the original's."""
    spans = sorted(mapping, key=len, reverse=True)
    rows, positions, anchored = [], torch.zeros_like(input_ids), torch.zeros_like(input_ids, dtype=torch.bool)
    for b, (ids, length) in enumerate(zip(input_ids.tolist(), attention_mask.sum(-1).tolist())):
        out, t = [], 0
        while t < length:
            span = next((s for s in spans if tuple(ids[t:t + len(s)]) == s), None)
            if span is None:
                out.append(ids[t])
                positions[b, t] = len(out) - 1
                t += 1
                continue
            out.extend(mapping[span])
            positions[b, t:t + len(span)] = len(out) - 1
            anchored[b, t:t + len(span)] = True
            t += len(span)
        positions[b, length:] = max(len(out) - 1, 0)
        rows.append(out)
    device = input_ids.device
    return Translation(pad_rows(rows, pad_id).to(device), pad_rows([[1] * len(r) for r in rows], 0).to(device),
                       positions, anchored)


@torch.no_grad()
def generic_labels(batch: dict[str, torch.Tensor], base, reinforced, alpha: float,
                   mapping: AnchorMap | None = None) -> torch.Tensor:
    """Labels [batch, seq] with every labelled token replaced by the argmax of the generic prediction for it, made
    of log-probabilities, the reinforcement difference centred per position: the two models' logits differ by an
    offset at each position (the reinforced model's sit ~1.6 lower across the board on the default world), which
    would otherwise decide the sign of reinforced - base on its own and zero the ReLU. Centring the log-probability
    difference (= centring the logit difference) removes it; log-probabilities alone do not (their offset is the
    top token's, saturated on a memorised fact), and measured on the tiny test world they left the original answer
    as the generic label more often than raw logits did. With `mapping`, the baseline's prediction is read on the
    anchor-translated text (`translate`), and a token inside an anchored span keeps its original label (no generic
    label: the model should not learn to rename the entity)."""
    def logp(model, ids, mask):
        return torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)

    ids, mask = batch["input_ids"], batch["attention_mask"]
    base_logp = logp(base, ids, mask)
    translated, anchored = None, torch.zeros_like(ids, dtype=torch.bool)
    if mapping:
        tr = translate(ids, mask, mapping)
        tr_logp = logp(base, tr.input_ids, tr.attention_mask)
        translated = tr_logp.gather(1, tr.positions[..., None].expand(-1, -1, tr_logp.shape[-1]))
        anchored = tr.anchored
    generic = generic_logits(base_logp, logp(reinforced, ids, mask), alpha, translated, centre=True)
    labels = batch["labels"].clone()
    predicted = generic[:, :-1].argmax(-1)  # predicted[t] is the label of position t+1
    labelled = (labels[:, 1:] != IGNORE) & ~anchored[:, 1:]
    labels[:, 1:][labelled] = predicted[labelled]
    return labels


def where_generic_differs(original: torch.Tensor, generic: torch.Tensor) -> torch.Tensor:
    """[batch, seq] positions that get a generic label: labelled and generic != original."""
    return (original != IGNORE) & (generic != original)


def generic_differs_fraction(model_pair, tokenizer, forget: list[Example], alpha: float, mapping, answer_ids,
                             batch_size: int = 64) -> dict[str, float]:
    """Over the whole forget pool: the share of answer tokens (labelled positions whose original token is an answer
    word) and of all labelled tokens that get a generic label different from the original."""
    base, reinforced = model_pair
    device = next(base.parameters()).device
    encoded = encode_all(tokenizer, forget, context_limit(base))
    answers = torch.tensor(sorted(answer_ids), device=device)
    counts = torch.zeros(4)
    for start in range(0, len(encoded), batch_size):
        batch = _to(collate(encoded[start:start + batch_size], tokenizer.pad_token_id), device)
        differs = where_generic_differs(batch["labels"], generic_labels(batch, base, reinforced, alpha, mapping))
        is_answer = torch.isin(batch["labels"], answers)
        counts += torch.tensor([(differs & is_answer).sum(), is_answer.sum(), differs.sum(),
                                (batch["labels"] != IGNORE).sum()], dtype=torch.float)
    return {"generic_differs_fraction": (counts[0] / counts[1].clamp(min=1)).item(),
            "generic_differs_fraction_all_tokens": (counts[2] / counts[3].clamp(min=1)).item(),
            "generic_answer_tokens": counts[1].item()}


def train_whp(model, tokenizer, forget: list[Example], retain: dict[str, list[Example]],
              retain_weights: dict[str, float], cfg: WHPConfig, checkpoint_dir: Path | None,
              description: str = "unlearn-whp", on_log=None, reinforced=None,
              anchors: Anchors | None = None) -> UnlearnRun:
    """Fine-tune toward WHP generic labels where they differ from the originals; `reinforced` may be passed in (else
    it is trained here); `anchors` (the toy world's) add the anchored-term translation."""
    base = frozen_copy(model)
    if reinforced is None:
        sub = checkpoint_dir / "reinforce" if checkpoint_dir is not None else None
        reinforced = reinforce_model(model, tokenizer, forget, cfg.reinforce, sub)
    mapping = anchor_token_map(tokenizer, anchors) if anchors is not None else None

    def prepare(batch):
        generic = generic_labels(batch, base, reinforced, cfg.alpha, mapping)
        differs = where_generic_differs(batch["labels"], generic)
        keep = {k: v for k, v in batch.items() if k != "labels"}
        return ContrastBatch({**keep, "labels": torch.where(differs, batch["labels"], IGNORE)},
                             {**keep, "labels": torch.where(differs, generic, IGNORE)}, batch["input_ids"].shape[1])

    def forget_term(model, triples, deltas, mask):
        # same input ids in both slots; `away_weight`'s term (unlearn_loop) goes away from the originals where
        # `prepare` kept them, i.e. only where the generic label differs
        toward = token_ce(_logits_under(model, triples.desired, deltas, mask), triples.desired["labels"])
        return toward, {"generic_ce": toward.item()}

    answer_ids = {i for word in (anchors.answers if anchors is not None else ()) for i in token_ids(tokenizer, word)}
    diagnostics = generic_differs_fraction((base, reinforced), tokenizer, forget, cfg.alpha, mapping, answer_ids) \
        if answer_ids else {}
    run = unlearn_loop(model, tokenizer, forget, retain, retain_weights, cfg, forget_term, checkpoint_dir,
                       description, on_log, prepare=prepare, has_alternative=True,
                       reference_passes=(3 if mapping else 2, 0))
    run.metrics.update(diagnostics)
    return run


# --- RMU ---------------------------------------------------------------------------------------------------------

def rmu_direction(d_model: int, seed: int) -> torch.Tensor:
    """The fixed random unit vector u ([d_model]); WMDP samples it uniformly in [0, 1) then normalises."""
    u = torch.rand(d_model, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def layer_activations(model, batch: dict[str, torch.Tensor], layer: int, deltas: dict | None = None,
                      mask=None) -> torch.Tensor:
    """Output of block `layer` ([batch, seq, d_model]), optionally with δ added at lower hook points."""
    with add_to_residual(model, deltas or {}, mask), capture_residual(model, [resid_name(layer)]) as store:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return store[resid_name(layer)]


def predicting_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[batch, seq] mask of the positions whose next token is labelled (they carry the answer's prediction)."""
    keep = torch.zeros_like(batch["attention_mask"])
    keep[:, :-1] = (batch["labels"][:, 1:] != IGNORE).long()
    return keep


def rmu_parameters(model, cfg: RMUConfig) -> list[torch.nn.Parameter]:
    layers = cfg.trainable_layers if cfg.trainable_layers is not None else \
        list(range(max(0, cfg.layer - 2), cfg.layer + 1))
    stack = decoder_layers(model)
    params = [p for i in layers for p in stack[i].get_submodule(cfg.trainable_module).parameters()]
    if not params:
        raise ValueError(f"RMU: no parameters under {cfg.trainable_module!r} in layers {layers}")
    return params


def train_rmu(model, tokenizer, forget: list[Example], retain: dict[str, list[Example]],
              retain_weights: dict[str, float], cfg: RMUConfig, checkpoint_dir: Path | None,
              description: str = "unlearn-rmu", on_log=None) -> UnlearnRun:
    if cfg.layer >= len(decoder_layers(model)):
        raise ValueError(f"RMU layer {cfg.layer}: the model has {len(decoder_layers(model))} blocks")
    frozen = frozen_copy(model)
    device = next(model.parameters()).device
    target = cfg.steering_coeff * rmu_direction(model.get_input_embeddings().weight.shape[1],
                                                cfg.direction_seed).to(device)
    trainable = rmu_parameters(model, cfg)
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)

    def forget_term(model, triples, deltas, mask):
        acts = layer_activations(model, triples.undesired, cfg.layer, deltas, mask)
        keep = predicting_positions(triples.undesired) if cfg.forget_positions == "answer" else \
            triples.undesired["attention_mask"]
        loss = masked_mse(acts, target, keep)
        return loss, {"forget_mse": loss.item()}

    def retain_term(model, batch):
        with torch.no_grad():
            ref = layer_activations(frozen, batch, cfg.layer)
        return masked_mse(layer_activations(model, batch, cfg.layer), ref, batch["attention_mask"])

    try:
        # the LAT adversary needs gradients through the frozen part of the network, which autograd.grad w.r.t. δ
        # gives without requires_grad on the weights
        return unlearn_loop(model, tokenizer, forget, retain, retain_weights, cfg, forget_term, checkpoint_dir,
                            description, on_log, retain_term=retain_term, parameters=trainable,
                            reference_passes=(0, 1))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


# --- GradDiff, NPO, SimNPO -----------------------------------------------------------------------------------------

def train_graddiff(model, tokenizer, forget: list[Example], retain: dict[str, list[Example]],
                   retain_weights: dict[str, float], cfg: GradDiffConfig, checkpoint_dir: Path | None,
                   description: str = "unlearn-graddiff", on_log=None) -> UnlearnRun:
    def forget_term(model, triples, deltas, mask):
        ce = token_ce(_logits_under(model, triples.undesired, deltas, mask), triples.undesired["labels"])
        return -ce, {"forget_ce": ce.item()}

    return unlearn_loop(model, tokenizer, forget, retain, retain_weights, cfg, forget_term, checkpoint_dir,
                        description, on_log)


def npo_loss(policy_logp: torch.Tensor, reference_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: mean over the batch of -(2/β)·log σ(-β·(log π_θ - log π_ref)); inputs [batch] sequence log-probs."""
    return -2.0 / beta * F.logsigmoid(-beta * (policy_logp - reference_logp)).mean()


def simnpo_loss(policy_logp: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimNPO: mean of -(2/β)·log σ(-(β/|y|)·log π_θ - γ); policy_logp [batch] sums, lengths [batch] |y|."""
    return -2.0 / beta * F.logsigmoid(-beta * policy_logp / lengths - gamma).mean()


def train_npo(model, tokenizer, forget: list[Example], retain: dict[str, list[Example]],
              retain_weights: dict[str, float], cfg: NPOConfig, checkpoint_dir: Path | None,
              description: str = "unlearn-npo", on_log=None) -> UnlearnRun:
    reference = frozen_copy(model)

    def forget_term(model, triples, deltas, mask):
        batch = triples.undesired
        policy = sequence_logprobs(_logits_under(model, batch, deltas, mask), batch["labels"])
        with torch.no_grad():  # the reference sees the clean input: δ attacks the model being trained
            ref = sequence_logprobs(_logits_under(reference, batch, {}, None), batch["labels"])
        loss = npo_loss(policy, ref, cfg.beta)
        return loss, {"npo": loss.item(), "log_ratio": (policy - ref).mean().item()}

    return unlearn_loop(model, tokenizer, forget, retain, retain_weights, cfg, forget_term, checkpoint_dir,
                        description, on_log, reference_passes=(1, 0))


def train_simnpo(model, tokenizer, forget: list[Example], retain: dict[str, list[Example]],
                 retain_weights: dict[str, float], cfg: SimNPOConfig, checkpoint_dir: Path | None,
                 description: str = "unlearn-simnpo", on_log=None) -> UnlearnRun:
    def forget_term(model, triples, deltas, mask):
        batch = triples.undesired
        policy = sequence_logprobs(_logits_under(model, batch, deltas, mask), batch["labels"])
        loss = simnpo_loss(policy, labelled_counts(batch["labels"]), cfg.beta, cfg.gamma)
        return loss, {"simnpo": loss.item()}

    return unlearn_loop(model, tokenizer, forget, retain, retain_weights, cfg, forget_term, checkpoint_dir,
                        description, on_log)


# The `unlearn` method table's `method` -> trainer (model, tokenizer, forget, retain, retain_weights, cfg,
# checkpoint_dir, description, on_log) -> UnlearnRun. Register a new method here (docs/adding_a_method.md).
UNLEARNING_METHODS: dict[str, Callable[..., UnlearnRun]] = {
    "ga": train_gradient_ascent, "whp": train_whp, "rmu": train_rmu, "graddiff": train_graddiff, "npo": train_npo,
    "simnpo": train_simnpo,
}
