"""Shared pieces of the attack suite: the result type, the harmful-request filter, greedy generation from
already-rendered chat text, and the token layout of a chat prompt around an inserted suffix (GCG, R2D2).

Every attack generates through `latlab.models.generation.generate` (greedy), so attacked and unattacked completions
come from the same decoding path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from latlab.models.encoding import render_prompt, token_ids
from latlab.models.generation import generate

SENTINEL = "\u2063SUFFIX\u2063"  # an invisible separator that no chat template or prompt contains


@dataclass
class AttackResult:
    """Completions align with the first len(completions) attacked requests (individual GCG attacks a subset)."""
    completions: list[str]
    metadata: dict = field(default_factory=dict)


def harmful(requests: list[dict]) -> list[dict]:
    return [r for r in requests if r.get("harmful", True)]


def generate_rendered(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions of texts that already carry the chat template (prefill, many-shot, suffixes)."""
    return generate(model, tokenizer, texts, max_new_tokens, batch_size, chat=False)


def chat_segments(tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """Token ids before and after an adversarial suffix placed at the end of the user turn:
    render(prompt + " " + suffix) == before + suffix + after (the assistant header ends `after`)."""
    text = render_prompt(tokenizer, f"{prompt} {SENTINEL}")
    head, tail = text.split(SENTINEL)
    return token_ids(tokenizer, head), token_ids(tokenizer, tail)


def allowed_token_mask(tokenizer, vocab_size: int, ascii_only: bool) -> torch.Tensor:
    """Tokens a suffix may use: never special tokens (they would forge chat turns); with ascii_only, only tokens
    that decode to non-empty printable ASCII (the usual GCG restriction for BPE vocabularies)."""
    mask = torch.ones(vocab_size, dtype=torch.bool)
    mask[[i for i in tokenizer.all_special_ids if i < vocab_size]] = False
    mask[len(tokenizer):] = False  # embedding rows past the tokenizer (padding of the matrix) decode to nothing
    if ascii_only:
        for idx in torch.nonzero(mask).flatten().tolist():
            text = tokenizer.decode([idx])
            if not text.strip() or not text.isascii() or not text.isprintable():
                mask[idx] = False
    return mask
