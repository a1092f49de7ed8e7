"""Greedy Coordinate Gradient suffix search (Zou et al. 2023, "Universal and Transferable Adversarial Attacks on
Aligned Language Models"), individual (one suffix per prompt) and universal (one suffix for a set of prompts).

Each step: the gradient of the target loss with respect to the one-hot suffix tokens ranks, per position, the top-k
substitutions; a random batch of single-token swaps drawn from them is scored with forward passes and the best one
is kept. The target is the first tokens of the harmful completion after the assistant header. Suffix tokens exclude
special tokens (and, with `ascii_only`, non-printable ones); candidates whose text does not re-tokenise to the same
ids are dropped, because the attack is delivered as text. Deterministic for a given seed.

Hand-written because the maintained implementation (nanoGCG) pins its own prompt/chat handling and has no hook for
the persistent pool that R2D2 training keeps across model updates; this module is that core, reused by
`latlab.training.r2d2`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from latlab.attacks.common import AttackResult, allowed_token_mask, chat_segments
from latlab.config import GCGConfig, GCGIndividualConfig, GCGUniversalConfig
from latlab.models.compute import Compute
from latlab.models.encoding import token_ids
from latlab.models.generation import generate


@dataclass(frozen=True)
class SuffixCase:
    """One prompt's token layout: before + suffix + after is the chat prompt, `target` the wanted answer start."""
    before: torch.Tensor  # [b]
    after: torch.Tensor  # [a], ends with the assistant header
    target: torch.Tensor  # [t]


@dataclass
class SearchResult:
    suffix: torch.Tensor  # [n] the best suffix seen
    loss: float
    history: list[float] = field(default_factory=list)  # target loss of the current suffix per step (0 = init)
    steps: int = 0


def suffix_case(tokenizer, prompt: str, target_text: str, target_tokens: int, device=None) -> SuffixCase:
    before, after = chat_segments(tokenizer, prompt)
    target = token_ids(tokenizer, target_text)[:target_tokens]
    as_tensor = lambda ids: torch.tensor(ids, dtype=torch.long, device=device)  # noqa: E731
    return SuffixCase(as_tensor(before), as_tensor(after), as_tensor(target))


def case_ids(case: SuffixCase, suffix: torch.Tensor, with_target: bool = True) -> torch.Tensor:
    """[batch, len] ids for suffix [batch, n]."""
    rows = suffix.shape[0]
    parts = [case.before.expand(rows, -1), suffix, case.after.expand(rows, -1)]
    if with_target:
        parts.append(case.target.expand(rows, -1))
    return torch.cat(parts, dim=1)


def _target_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits [batch, t+1, vocab] of the last t+1 positions -> per-row mean CE of the t target tokens [batch]."""
    pred = logits[:, :-1].float()
    return F.cross_entropy(pred.transpose(1, 2), target.expand(pred.shape[0], -1), reduction="none").mean(-1)


def target_loss_and_grad(model, cases: list[SuffixCase], suffix: torch.Tensor,
                         compute: Compute) -> tuple[float, torch.Tensor, bool]:
    """(mean target CE over cases, d loss / d one-hot suffix [n, vocab], whether greedy decoding is already forced
    onto the target for every case). Only the one-hot gets a gradient; the weights' .grad stay untouched."""
    embed = model.get_input_embeddings()
    one_hot = F.one_hot(suffix, embed.weight.shape[0]).to(embed.weight.dtype).requires_grad_(True)
    suffix_embeds = one_hot @ embed.weight  # [n, d]
    total, forced = 0.0, True
    for case in cases:
        rest = torch.cat([case.after, case.target])
        embeds = torch.cat([embed(case.before), suffix_embeds, embed(rest)])[None]
        logits = model(inputs_embeds=embeds, logits_to_keep=len(case.target) + 1).logits
        total = total + _target_ce(logits, case.target).sum() / len(cases)
        forced = forced and bool((logits[0, :-1].argmax(-1) == case.target).all())
        compute.forward(embeds.shape[1])
        compute.backward(embeds.shape[1])
    grad, = torch.autograd.grad(total, one_hot)
    return float(total.detach()), grad, forced


@torch.no_grad()
def candidate_losses(model, cases: list[SuffixCase], candidates: torch.Tensor, compute: Compute) -> torch.Tensor:
    """Mean target CE over cases for each candidate suffix [batch, n] -> [batch]."""
    losses = torch.zeros(candidates.shape[0], device=candidates.device)
    for case in cases:
        ids = case_ids(case, candidates)
        logits = model(input_ids=ids, logits_to_keep=len(case.target) + 1).logits
        losses += _target_ce(logits, case.target) / len(cases)
        compute.forward(ids.numel())
    return losses


def sample_candidates(grad: torch.Tensor, suffix: torch.Tensor, allowed: torch.Tensor, topk: int, width: int,
                      generator: torch.Generator) -> torch.Tensor:
    """[width, n] single-token swaps drawn from the top-k most loss-decreasing tokens of a random position."""
    scores = (-grad).masked_fill(~allowed.to(grad.device), float("-inf"))
    top = scores.topk(min(topk, int(allowed.sum())), dim=1).indices  # [n, k]
    pos = torch.randint(0, suffix.shape[0], (width,), generator=generator)
    pick = torch.randint(0, top.shape[1], (width,), generator=generator)
    candidates = suffix.repeat(width, 1)
    candidates[torch.arange(width), pos] = top[pos.to(top.device), pick.to(top.device)]
    return candidates


def retokenizes(tokenizer, candidates: torch.Tensor) -> torch.Tensor:
    """[batch] bool: the decoded suffix encodes back to the same ids (the attack is delivered as text)."""
    keep = [token_ids(tokenizer, tokenizer.decode(row)) == row for row in candidates.tolist()]
    return torch.tensor(keep, dtype=torch.bool, device=candidates.device)


def random_suffix(allowed: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    pool = torch.nonzero(allowed).flatten()
    return pool[torch.randint(0, len(pool), (length,), generator=generator)]


def gcg_search(model, tokenizer, cases: list[SuffixCase], cfg: GCGConfig, allowed: torch.Tensor,
               suffix: torch.Tensor, generator: torch.Generator, compute: Compute, steps: int | None = None,
               early_stop: bool = False) -> SearchResult:
    """Run GCG steps from `suffix` on the (weights-frozen) model; returns the lowest-loss suffix seen."""
    device = cases[0].target.device
    suffix = suffix.to(device)
    result = SearchResult(suffix.clone(), float("inf"))
    for _ in range(cfg.steps if steps is None else steps):
        loss, grad, forced = target_loss_and_grad(model, cases, suffix, compute)
        if loss < result.loss:
            result.suffix, result.loss = suffix.clone(), loss
        result.history.append(loss)
        if early_stop and forced:
            break
        candidates = sample_candidates(grad, suffix, allowed, cfg.topk, cfg.search_width, generator)
        candidates = candidates[retokenizes(tokenizer, candidates)]
        if len(candidates) == 0:
            continue
        losses = candidate_losses(model, cases, candidates, compute)
        best = int(losses.argmin())
        suffix = candidates[best]
        result.steps += 1
        if float(losses[best]) < result.loss:
            result.suffix, result.loss = suffix.clone(), float(losses[best])
    return result


def _setup(model, tokenizer, cfg: GCGConfig) -> tuple[torch.Tensor, torch.Generator, torch.device]:
    allowed = allowed_token_mask(tokenizer, model.get_input_embeddings().weight.shape[0], cfg.ascii_only)
    return allowed, torch.Generator().manual_seed(cfg.seed), next(model.parameters()).device


def _attacked(model, tokenizer, prompts: list[str], suffixes: list[str], max_new_tokens: int,
              batch_size: int) -> list[str]:
    return generate(model, tokenizer, [f"{p} {s}" for p, s in zip(prompts, suffixes)], max_new_tokens, batch_size)


def gcg_individual_attack(model, tokenizer, requests: list[dict], cfg: GCGIndividualConfig, *,
                          support: list[dict] | None = None, max_new_tokens: int = 16,
                          batch_size: int = 64) -> AttackResult:
    """One suffix per prompt, for the first `cfg.prompts` requests."""
    allowed, generator, device = _setup(model, tokenizer, cfg)
    compute, suffixes, losses = Compute(), [], []
    subset = requests[: cfg.prompts]
    for request in subset:
        case = suffix_case(tokenizer, request["prompt"], request["compliance"], cfg.target_tokens, device)
        found = gcg_search(model, tokenizer, [case], cfg, allowed,
                           random_suffix(allowed, cfg.suffix_tokens, generator), generator, compute,
                           early_stop=cfg.early_stop)
        suffixes.append(tokenizer.decode(found.suffix))
        losses.append((found.history[0], found.loss))
    completions = _attacked(model, tokenizer, [r["prompt"] for r in subset], suffixes, max_new_tokens, batch_size)
    return AttackResult(completions, {"suffixes": suffixes, "loss_initial": [a for a, _ in losses],
                                      "loss_final": [b for _, b in losses], **compute.as_dict()})


def universal_prompts(requests: list[dict], support: list[dict] | None, count: int, seed: int) -> list[dict]:
    """Training-split harmful requests to optimise a universal suffix on (the attacked requests if none given)."""
    pool = sorted((r for r in (support or []) if r.get("harmful") and r.get("split", "train") == "train"),
                  key=lambda r: r["id"]) or list(requests)
    random.Random(seed).shuffle(pool)
    return pool[:count]


def gcg_universal_attack(model, tokenizer, requests: list[dict], cfg: GCGUniversalConfig, *,
                         support: list[dict] | None = None, max_new_tokens: int = 16,
                         batch_size: int = 64) -> AttackResult:
    """One suffix optimised on training prompts, applied to every attacked request."""
    allowed, generator, device = _setup(model, tokenizer, cfg)
    compute = Compute()
    train = universal_prompts(requests, support, cfg.prompts, cfg.seed)
    cases = [suffix_case(tokenizer, r["prompt"], r["compliance"], cfg.target_tokens, device) for r in train]
    found = gcg_search(model, tokenizer, cases, cfg, allowed, random_suffix(allowed, cfg.suffix_tokens, generator),
                       generator, compute)
    suffix = tokenizer.decode(found.suffix)
    completions = _attacked(model, tokenizer, [r["prompt"] for r in requests], [suffix] * len(requests),
                            max_new_tokens, batch_size)
    return AttackResult(completions, {"suffix": suffix, "optimised_on": [r["id"] for r in train],
                                      "loss_initial": found.history[0], "loss_final": found.loss,
                                      **compute.as_dict()})
