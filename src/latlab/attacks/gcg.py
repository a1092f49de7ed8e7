"""Greedy Coordinate Gradient suffix search (Zou et al. 2023, "Universal and Transferable Adversarial Attacks on
Aligned Language Models"), individual (one suffix per prompt) and universal (one suffix for a set of prompts).

Each step: the gradient of the target loss with respect to the one-hot suffix tokens ranks, per position, the top-k
substitutions; a random batch of single-token swaps drawn from them is scored with forward passes and the best one
is kept. The target is the first tokens of the harmful completion after the assistant header. Suffix tokens exclude
special tokens (and, with `ascii_only`, non-printable ones).

The attack is delivered as text: the chat prompt rendered from `prompt + " " + decode(suffix)`. A candidate is kept
only if that full rendered prompt tokenises to exactly the optimised ids (before + suffix + after) for every case, so
the suffix the model sees is the one that was optimised. Checking the suffix alone is not enough with byte-level BPE
tokenizers (GPT-2, SmolLM2): the space before the suffix can merge with its first token (optimised `['?', 'Ġ', 'b']`,
delivered `['?', 'Ġb']`). The starting suffix is drawn until it passes the same check.

Prefix KV cache (as nanoGCG's `use_prefix_cache`): the tokens before the suffix are the same for every candidate
and every step, so their keys and values are computed once per search (the weights are frozen during a search;
R2D2 starts a new search after each update) and each forward pass runs only suffix + after + target; candidates
that are the same token sequence are scored once. Both change which floating-point operations run, not what is
computed (a test checks the losses against a full forward pass).

The search returns the suffix it would deliver: one that forces greedy decoding onto the target if it met one (the
first, with `early_stop`, which then stops), else the lowest-loss suffix seen. Deterministic for a given seed.

Hand-written because the maintained implementation (nanoGCG) pins its own prompt/chat handling and has no hook for
the persistent pool that R2D2 training keeps across model updates; this module is that core, reused by
`latlab.training.r2d2`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from latlab.attacks.common import SENTINEL, AttackResult, allowed_token_mask, chat_segments
from latlab.config import GCGConfig, GCGIndividualConfig, GCGUniversalConfig
from latlab.models.compute import Compute
from latlab.models.encoding import render_prompt, token_ids
from latlab.models.generation import generate


@dataclass(frozen=True)
class SuffixCase:
    """One prompt's token layout: before + suffix + after is the chat prompt, `target` the wanted answer start.
    `prompt` is the user prompt the suffix is appended to (with a space) when the attack is delivered as text;
    `head` and `tail` the rendered text around the suffix, usable directly when the chat template inserts the user
    message verbatim (`verbatim`), else the prompt is rendered again for each suffix."""
    before: torch.Tensor  # [b]
    after: torch.Tensor  # [a], ends with the assistant header
    target: torch.Tensor  # [t]
    prompt: str = ""
    head: str = ""
    tail: str = ""
    verbatim: bool = False


@dataclass
class SearchResult:
    suffix: torch.Tensor  # [n] the suffix to deliver: the first forcing one, else the lowest-loss one seen
    loss: float  # its target loss
    history: list[float] = field(default_factory=list)  # target loss of the current suffix per step (0 = init)
    steps: int = 0
    forced: bool = False  # `suffix` forces greedy decoding onto the target (every case)
    deliverable: bool = True  # `suffix` survives delivery as text (False only for an undeliverable start kept)
    returned: list[torch.Tensor] = field(default_factory=list)  # returned[b]: the result with a budget of b steps
    trajectory: list[torch.Tensor] = field(default_factory=list)  # each step's best candidate (the current suffix)

    def offer(self, suffix: torch.Tensor, loss: float, forced: bool) -> None:
        """Keep `suffix` if it beats the held one: forcing first, then lower loss."""
        if (not forced, loss) < (not self.forced, self.loss):
            self.suffix, self.loss, self.forced = suffix.clone(), loss, forced


def delivered_prompt(prompt: str, suffix_text: str) -> str:
    """The user message an attack with this suffix sends."""
    return f"{prompt} {suffix_text}"


def suffix_case(tokenizer, prompt: str, target_text: str, target_tokens: int, device=None) -> SuffixCase:
    before, after = chat_segments(tokenizer, prompt)
    target = token_ids(tokenizer, target_text)[:target_tokens]
    as_tensor = lambda ids: torch.tensor(ids, dtype=torch.long, device=device)  # noqa: E731
    head, tail = render_prompt(tokenizer, delivered_prompt(prompt, SENTINEL)).split(SENTINEL)
    probe = " x y "  # spaces at both ends: a template that trims or rewrites the message is caught
    verbatim = render_prompt(tokenizer, delivered_prompt(prompt, probe)) == head + probe + tail
    return SuffixCase(as_tensor(before), as_tensor(after), as_tensor(target), prompt, head, tail, verbatim)


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


Prefix = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@torch.no_grad()
def prefix_cache(model, case: SuffixCase) -> Prefix:
    """Keys and values of every block ([1, kv_heads, b, head_dim] each) for the case's `before` tokens under the
    model's current weights."""
    cache = model(input_ids=case.before[None], use_cache=True).cache
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def _after_prefix(model, prefix: Prefix, rows: int, keep: int, **inputs) -> torch.Tensor:
    """Logits of the last `keep` positions of `inputs` (input_ids or inputs_embeds [rows, len, ...]) continuing
    the cached prefix; the cache is copied, so `prefix` can be reused."""
    cache = DynamicCache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix],
                         config=getattr(model, "config", None))
    return model(**inputs, cache=cache, use_cache=True, logits_to_keep=keep).logits


def target_loss_and_grad(model, cases: list[SuffixCase], suffix: torch.Tensor, compute: Compute,
                         prefixes: list[Prefix] | None = None) -> tuple[float, torch.Tensor, bool]:
    """(mean target CE over cases, d loss / d one-hot suffix [n, vocab], whether greedy decoding is already forced
    onto the target for every case). Only the one-hot gets a gradient; the weights' .grad stay untouched.
    `prefixes`: each case's `prefix_cache` (computed here when None)."""
    prefixes = _prefixes(model, cases, compute) if prefixes is None else prefixes
    embed = model.get_input_embeddings()
    one_hot = F.one_hot(suffix, embed.weight.shape[0]).to(embed.weight.dtype).requires_grad_(True)
    suffix_embeds = one_hot @ embed.weight  # [n, d]
    total, forced = 0.0, True
    for case, prefix in zip(cases, prefixes):
        embeds = torch.cat([suffix_embeds, embed(torch.cat([case.after, case.target]))])[None]
        logits = _after_prefix(model, prefix, 1, len(case.target) + 1, inputs_embeds=embeds)
        total = total + _target_ce(logits, case.target).sum() / len(cases)
        forced = forced and bool((logits[0, :-1].argmax(-1) == case.target).all())
        compute.forward(embeds.shape[1])
        compute.backward(embeds.shape[1])
    grad, = torch.autograd.grad(total, one_hot)
    return float(total.detach()), grad, forced


def _prefixes(model, cases: list[SuffixCase], compute: Compute) -> list[Prefix]:
    for case in cases:
        compute.forward(len(case.before))
    return [prefix_cache(model, case) for case in cases]


@torch.no_grad()
def candidate_losses(model, cases: list[SuffixCase], candidates: torch.Tensor, compute: Compute,
                     prefixes: list[Prefix] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean target CE over cases [batch], whether greedy decoding is forced onto the target for every case [batch])
    for each candidate suffix [batch, n]; `prefixes` as in `target_loss_and_grad`."""
    prefixes = _prefixes(model, cases, compute) if prefixes is None else prefixes
    unique, inverse = torch.unique(candidates, dim=0, return_inverse=True)
    losses = torch.zeros(unique.shape[0], device=candidates.device)
    forced = torch.ones(unique.shape[0], dtype=torch.bool, device=candidates.device)
    for case, prefix in zip(cases, prefixes):
        ids = case_ids(case, unique)[:, len(case.before):]
        logits = _after_prefix(model, prefix, ids.shape[0], len(case.target) + 1, input_ids=ids)
        losses += _target_ce(logits, case.target) / len(cases)
        forced &= (logits[:, :-1].argmax(-1) == case.target).all(-1)
        compute.forward(ids.numel())
    return losses[inverse], forced[inverse]


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


def delivered_ids(tokenizer, case: SuffixCase, suffix_texts: list[str]) -> list[list[int]]:
    """The ids the model sees when each suffix text is delivered after the case's prompt."""
    if case.verbatim:
        texts = [case.head + text + case.tail for text in suffix_texts]
    else:
        texts = [render_prompt(tokenizer, delivered_prompt(case.prompt, text)) for text in suffix_texts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def deliverable(tokenizer, cases: list[SuffixCase], candidates: torch.Tensor) -> torch.Tensor:
    """[batch] bool: for every case, the full prompt rendered with the decoded suffix tokenises to exactly
    before + suffix + after, the ids that were optimised."""
    rows = candidates.tolist()
    texts = tokenizer.batch_decode(rows)
    keep = [True] * len(rows)
    for case in cases:
        before, after = case.before.tolist(), case.after.tolist()
        for i, (row, ids) in enumerate(zip(rows, delivered_ids(tokenizer, case, texts))):
            keep[i] = keep[i] and ids == before + row + after
    return torch.tensor(keep, dtype=torch.bool, device=candidates.device)


def random_suffix(allowed: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    pool = torch.nonzero(allowed).flatten()
    return pool[torch.randint(0, len(pool), (length,), generator=generator)]


def initial_suffix(tokenizer, cases: list[SuffixCase], allowed: torch.Tensor, length: int,
                   generator: torch.Generator, tries: int = 64) -> torch.Tensor:
    """A random suffix that survives delivery (`deliverable`): random draws until one passes (the first draw is
    `random_suffix`'s, so a tokenizer where every suffix passes sees the same start as before), then after `tries`
    one allowed token repeated (GCG's usual "! ! ! ..." start), the first that passes. ValueError when none does."""
    device = cases[0].target.device
    for _ in range(tries):
        draw = random_suffix(allowed, length, generator).to(device)
        if bool(deliverable(tokenizer, cases, draw[None])[0]):
            return draw
    tokens = torch.nonzero(allowed).flatten().to(device)
    for start in range(0, len(tokens), 256):
        repeated = tokens[start:start + 256, None].expand(-1, length)
        ok = deliverable(tokenizer, cases, repeated)
        if ok.any():
            return repeated[int(ok.nonzero()[0])].clone()
    raise ValueError(f"no suffix of {length} allowed tokens survives delivery after the prompt {cases[0].prompt!r}")


@contextmanager
def _searching(model) -> Iterator[None]:
    """Eval mode for the search, the caller's mode after. Why: a search scores a frozen model, so dropout (LoRA's
    included) must be off, and with gradient checkpointing on HF turns `use_cache` off in train mode, which leaves
    `prefix_cache` without a cache. R2D2 searches from inside its training step, in train mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def gcg_search(model, tokenizer, cases: list[SuffixCase], cfg: GCGConfig, allowed: torch.Tensor,
               suffix: torch.Tensor, generator: torch.Generator, compute: Compute, steps: int | None = None,
               early_stop: bool = False) -> SearchResult:
    """Run GCG steps from `suffix` on the (weights-frozen) model. Returns the suffix to deliver: the first one that
    forces greedy decoding onto the target for every case (with `early_stop` the search ends there), else the
    lowest-loss one seen; only suffixes that survive delivery as text (`deliverable`) are candidates, the start
    included. `returned[b]` is what the search returns with a budget of b steps (b = 0: the start). Runs in eval
    mode (`_searching`) and leaves the model in the mode it came in."""
    with _searching(model):
        return _search(model, tokenizer, cases, cfg, allowed, suffix, generator, compute, steps, early_stop)


def _search(model, tokenizer, cases: list[SuffixCase], cfg: GCGConfig, allowed: torch.Tensor, suffix: torch.Tensor,
            generator: torch.Generator, compute: Compute, steps: int | None, early_stop: bool) -> SearchResult:
    device = cases[0].target.device
    suffix = suffix.to(device)
    start_ok = bool(deliverable(tokenizer, cases, suffix[None])[0])
    prefixes = _prefixes(model, cases, compute)
    loss, grad, forced = target_loss_and_grad(model, cases, suffix, compute, prefixes)
    result = SearchResult(suffix.clone(), loss, history=[loss], forced=forced and start_ok, deliverable=start_ok)
    if not start_ok:
        result.loss = float("inf")  # any deliverable candidate replaces it
    result.returned.append(result.suffix.clone())
    stale = False  # `grad` is for the current suffix
    for _ in range(cfg.steps if steps is None else steps):
        if early_stop and result.forced:
            break
        if stale:
            _, grad, _ = target_loss_and_grad(model, cases, suffix, compute, prefixes)
        candidates = sample_candidates(grad, suffix, allowed, cfg.topk, cfg.search_width, generator)
        candidates = candidates[deliverable(tokenizer, cases, candidates)]
        result.steps += 1
        if len(candidates) == 0:
            stale = False
            result.history.append(result.history[-1])
            result.returned.append(result.suffix.clone())
            continue
        losses, forcing = candidate_losses(model, cases, candidates, compute, prefixes)
        best = int(losses.argmin())
        suffix, stale = candidates[best], True
        result.history.append(float(losses[best]))
        result.trajectory.append(suffix.clone())
        result.deliverable = True
        result.offer(suffix, float(losses[best]), bool(forcing[best]))
        result.returned.append(result.suffix.clone())
    return result


def _setup(model, tokenizer, cfg: GCGConfig) -> tuple[torch.Tensor, torch.Generator, torch.device]:
    allowed = allowed_token_mask(tokenizer, model.get_input_embeddings().weight.shape[0], cfg.ascii_only)
    return allowed, torch.Generator().manual_seed(cfg.seed), next(model.parameters()).device


def _attacked(model, tokenizer, prompts: list[str], suffixes: list[str], max_new_tokens: int,
              batch_size: int) -> list[str]:
    return generate(model, tokenizer, [delivered_prompt(p, s) for p, s in zip(prompts, suffixes)], max_new_tokens,
                    batch_size)


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
                           initial_suffix(tokenizer, [case], allowed, cfg.suffix_tokens, generator), generator,
                           compute, early_stop=cfg.early_stop)
        suffixes.append(tokenizer.decode(found.suffix))
        losses.append((found.history[0], found.loss, found.forced, found.steps))
    completions = _attacked(model, tokenizer, [r["prompt"] for r in subset], suffixes, max_new_tokens, batch_size)
    return AttackResult(completions, {"suffixes": suffixes, "loss_initial": [a[0] for a in losses],
                                      "loss_final": [a[1] for a in losses], "forced": [a[2] for a in losses],
                                      "steps": [a[3] for a in losses], **compute.as_dict()})


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
    found = gcg_search(model, tokenizer, cases, cfg, allowed,
                       initial_suffix(tokenizer, cases, allowed, cfg.suffix_tokens, generator), generator, compute)
    suffix = tokenizer.decode(found.suffix)
    completions = _attacked(model, tokenizer, [r["prompt"] for r in requests], [suffix] * len(requests),
                            max_new_tokens, batch_size)
    return AttackResult(completions, {"suffix": suffix, "optimised_on": [r["id"] for r in train],
                                      "loss_initial": found.history[0], "loss_final": found.loss,
                                      **compute.as_dict()})
