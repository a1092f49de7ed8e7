"""Turn (prompt, completion) pairs into token ids with the loss on completion tokens only, through the model's own
chat template, and batch them with padding. Shared by every trainer and by the evaluations' scoring."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    chat: bool = True
    system: str | None = None


def render_prompt(tokenizer, prompt: str, chat: bool = True, system: str | None = None) -> str:
    if not chat:
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_example(tokenizer, example: Example) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prompt tokens are masked with IGNORE; the completion ends with the eos token."""
    prompt_text = render_prompt(tokenizer, example.prompt, example.chat, example.system)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    # Chat templates end the prompt with the assistant header, so the answer follows directly; raw text needs a gap.
    completion_text = example.completion if example.chat else " " + example.completion
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids


def encode_all(tokenizer, examples: list[Example], max_length: int | None = None) -> list[tuple[list[int], list[int]]]:
    encoded = [encode_example(tokenizer, ex) for ex in examples]
    if max_length is not None:
        too_long = [ex.prompt for ex, (ids, _) in zip(examples, encoded) if len(ids) > max_length]
        if too_long:
            raise ValueError(f"{len(too_long)} example(s) exceed the model's {max_length} positions, "
                             f"e.g. {too_long[0]!r}")
    return encoded


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels, all [batch, seq]."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
