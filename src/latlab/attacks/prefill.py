"""Prefilling attack (Andriushchenko et al. 2024; used in Sheshadri et al. 2024): the assistant turn is started with
the first k words of the harmful answer and the model continues from there. The judged completion is prefill +
continuation, so a model that recovers ("sure . first ... sorry") is not counted as complying."""

from __future__ import annotations

from latlab.attacks.common import AttackResult, generate_rendered
from latlab.config import PrefillConfig
from latlab.models.encoding import render_prompt


def prefill_prompt(tokenizer, request: dict, words: int) -> tuple[str, str]:
    """(chat text ending with the prefilled words, the prefilled words)."""
    prefix = " ".join(request["compliance"].split()[:words])
    return render_prompt(tokenizer, request["prompt"]) + prefix, prefix


def prefill_attack(model, tokenizer, requests: list[dict], cfg: PrefillConfig, *, support: list[dict] | None = None,
                   max_new_tokens: int = 16, batch_size: int = 64) -> AttackResult:
    texts, prefixes = zip(*(prefill_prompt(tokenizer, r, cfg.words) for r in requests)) if requests else ((), ())
    continuations = generate_rendered(model, tokenizer, list(texts), max_new_tokens, batch_size)
    return AttackResult([f"{p} {c}".strip() for p, c in zip(prefixes, continuations)], {"words": cfg.words})
