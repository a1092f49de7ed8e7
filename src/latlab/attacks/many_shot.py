"""Many-shot jailbreaking (Anil et al. 2024): harmful question/answer demonstrations as earlier chat turns, then the
request. Demonstrations come from training-split harmful requests with their harmful completions (never the
attacked ones). Shots are dropped until the prompt plus the generation budget fits the model's positions (the toy
model has 128, which leaves room for only a few shots)."""

from __future__ import annotations

import random

from latlab.attacks.common import AttackResult, generate_rendered
from latlab.models.encoding import ContextLengthError, context_limit, render_prompt, token_ids


def demonstrations(support: list[dict] | None, shots: int, seed: int) -> list[dict]:
    pool = [r for r in (support or []) if r.get("harmful") and r.get("split", "train") == "train"]
    if not pool:
        raise ValueError("many-shot needs training-split harmful requests (support) for its demonstrations")
    pool = sorted(pool, key=lambda r: r["id"])
    random.Random(seed).shuffle(pool)
    return pool[:shots]


def many_shot_prompt(tokenizer, request: dict, shots: list[dict], limit: int | None,
                     reserve: int = 0) -> tuple[str, int]:
    """(chat text with as many of `shots` as fit, with `reserve` positions to spare, in `limit` positions; the number
    of shots used). ContextLengthError when the request does not fit even alone."""
    history = [(s["prompt"], s["compliance"]) for s in shots]
    for used in range(len(shots), -1, -1):
        text = render_prompt(tokenizer, request["prompt"], history=history[:used])
        length = len(token_ids(tokenizer, text)) + reserve
        if limit is None or length <= limit:
            return text, used
    raise ContextLengthError(request["prompt"], length, limit, reserve)


def many_shot_attack(model, tokenizer, requests: list[dict], cfg, *, support: list[dict] | None = None,
                     max_new_tokens: int = 16, batch_size: int = 64) -> AttackResult:
    shots = demonstrations(support, cfg.shots, cfg.seed)
    built = [many_shot_prompt(tokenizer, r, shots, context_limit(model), max_new_tokens) for r in requests]
    completions = generate_rendered(model, tokenizer, [t for t, _ in built], max_new_tokens, batch_size)
    used = [n for _, n in built]
    return AttackResult(completions, {"shots_requested": cfg.shots,
                                      "shots_mean": sum(used) / max(1, len(used)), "shots_min": min(used, default=0)})
