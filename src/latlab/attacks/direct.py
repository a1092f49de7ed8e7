"""Direct request: the harmful prompt as is, the baseline row of the ASR matrix."""

from __future__ import annotations

from latlab.attacks.common import AttackResult
from latlab.models.generation import generate


def direct_attack(model, tokenizer, requests: list[dict], cfg=None, *, support: list[dict] | None = None,
                  max_new_tokens: int = 16, batch_size: int = 64) -> AttackResult:
    completions = generate(model, tokenizer, [r["prompt"] for r in requests], max_new_tokens, batch_size)
    return AttackResult(completions, {})
