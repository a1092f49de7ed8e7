"""Greedy generation and completion scoring through the model's chat template: how evaluations and attacks read
what a model says (`generate`) and how likely it finds a given answer (`completion_logprobs`, `choose`).

Both encode through `latlab.models.encoding`, so a prompt that does not fit in the model's positions (with the
generation budget, or with the scored completion) raises ContextLengthError before the model runs.
"""

from __future__ import annotations

import torch

from latlab.data.examples import Example
from latlab.models.encoding import collate, context_limit, encode_all, prompt_batch, to_device
from latlab.models.scoring import label_logprobs


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64,
             chat: bool = True, system: str | None = None) -> list[str]:
    """Greedy completions (decoded, special tokens dropped), left-padded batches."""
    device = next(model.parameters()).device
    limit = context_limit(model)
    # every prompt is checked before the first batch runs: a long prompt fails the call at once, not after hours
    batches = [prompt_batch(tokenizer, prompts[start:start + batch_size], chat, system, limit, max_new_tokens)
               for start in range(0, len(prompts), batch_size)]
    outputs: list[str] = []
    for batch in batches:
        enc = to_device(batch, device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        outputs.extend(tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return [text.strip() for text in outputs]


@torch.no_grad()
def completion_logprobs(model, tokenizer, examples: list[Example], batch_size: int = 64,
                        include_eos: bool = False) -> tuple[list[float], list[int]]:
    """Sum of log p(completion tokens | prompt) per example, and the number of scored tokens."""
    device = next(model.parameters()).device
    encoded = encode_all(tokenizer, examples, context_limit(model))
    if not include_eos:
        encoded = [(ids[:-1], labels[:-1]) for ids, labels in encoded]
    sums: list[float] = []
    counts: list[int] = []
    for start in range(0, len(encoded), batch_size):
        batch = to_device(collate(encoded[start:start + batch_size], tokenizer.pad_token_id), device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        token_logp, scored = label_logprobs(logits, batch["labels"])
        sums.extend((token_logp * scored).sum(-1).tolist())
        counts.extend(scored.sum(-1).tolist())
    return sums, counts


def choose(model, tokenizer, prompts: list[str], options: list[list[str]], chat: bool = True,
           batch_size: int = 64) -> list[int]:
    """Index of the most likely option for each prompt (e.g. the letters of an A/B question)."""
    flat = [Example(p, o, chat) for p, opts in zip(prompts, options) for o in opts]
    scores, _ = completion_logprobs(model, tokenizer, flat, batch_size)
    picks, cursor = [], 0
    for opts in options:
        block = scores[cursor:cursor + len(opts)]
        picks.append(max(range(len(opts)), key=block.__getitem__))
        cursor += len(opts)
    return picks
