"""Batched greedy generation and completion scoring for evaluation, through the model's chat template."""

from __future__ import annotations

import torch

from latlab.training.examples import Example, collate, encode_all, render_prompt


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64,
             chat: bool = True, system: str | None = None) -> list[str]:
    """Greedy completions (decoded, special tokens dropped), left-padded batches."""
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [render_prompt(tokenizer, p, chat, system) for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return [text.strip() for text in outputs]


@torch.no_grad()
def completion_logprobs(model, tokenizer, examples: list[Example], batch_size: int = 64,
                        include_eos: bool = False) -> tuple[list[float], list[int]]:
    """Sum of log p(completion tokens | prompt) per example, and the number of scored tokens."""
    device = next(model.parameters()).device
    sums: list[float] = []
    counts: list[int] = []
    for start in range(0, len(examples), batch_size):
        encoded = encode_all(tokenizer, examples[start:start + batch_size])
        if not include_eos:
            encoded = [(ids[:-1], labels[:-1]) for ids, labels in encoded]
        batch = {k: v.to(device) for k, v in collate(encoded, tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [batch, seq-1, vocab]
        targets = batch["labels"][:, 1:]
        scored = targets != -100
        token_logp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * scored
        sums.extend(token_logp.sum(-1).tolist())
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
