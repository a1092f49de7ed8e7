"""Text to token ids for a causal LM: the one chat renderer, prompt/completion encoding with the loss on completion
tokens only, padded batches, and the check that a sequence fits in the model's positions.

Every path that turns a prompt into ids (training, completion scoring, generation, the attacks, probes) goes through
`render_prompt` and `encode_prompt`, so one chat template decides what the model sees, and a sequence longer than
the model's context is refused the same way everywhere (`ContextLengthError`). Rotary-position models do not fail
past their positions, they degrade silently, which is why the check is explicit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latlab.data.examples import Example

IGNORE = -100  # label of positions that carry no loss (the prompt, padding): cross_entropy's ignore_index
SHOWN_CHARS = 80  # how much of an offending prompt an error message quotes


class ContextLengthError(ValueError):
    """A sequence exceeds the model's positions: `length` tokens (`reserve` of them still to be generated) against
    `limit`. `what` names the sequence, `others` counts further offenders of the same call."""

    def __init__(self, prompt: str, length: int, limit: int, reserve: int = 0, what: str = "prompt", others: int = 0):
        shown = prompt if len(prompt) <= SHOWN_CHARS else prompt[: SHOWN_CHARS - 3] + "..."
        size = f"{length - reserve} tokens + {reserve} to generate" if reserve else f"{length} tokens"
        more = f" (and {others} more)" if others else ""
        super().__init__(f"{what} of {size} exceeds the model's {limit} positions{more}: {shown!r}")
        self.prompt, self.length, self.limit = prompt, length, limit


def context_limit(model) -> int | None:
    """The number of positions the model has; None when its config does not say."""
    return getattr(model.config, "max_position_embeddings", None)


def render_prompt(tokenizer, prompt: str, chat: bool = True, system: str | None = None,
                  history: Sequence[tuple[str, str]] = ()) -> str:
    """The text before the model's answer. With `chat`: the tokenizer's chat template over an optional system
    message, earlier (user, assistant) turns (`history`, e.g. many-shot demonstrations) and the user prompt, ending
    with the assistant header. Without: the prompt as raw text (completion-style prompts)."""
    if not chat:
        return prompt
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def token_ids(tokenizer, text: str) -> list[int]:
    """Ids of `text` as it is: rendered chat text already carries its special tokens, so none are added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, prompt: str, chat: bool = True, system: str | None = None, limit: int | None = None,
                  reserve: int = 0) -> list[int]:
    """Ids of the rendered prompt; ContextLengthError when they plus `reserve` positions (tokens still to be
    generated) exceed `limit`."""
    ids = token_ids(tokenizer, render_prompt(tokenizer, prompt, chat, system))
    if limit is not None and len(ids) + reserve > limit:
        raise ContextLengthError(prompt, len(ids) + reserve, limit, reserve)
    return ids


def encode_example(tokenizer, example: Example) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prompt tokens are masked with IGNORE; the completion ends with the eos token."""
    prompt_ids = encode_prompt(tokenizer, example.prompt, example.chat, example.system)
    # Chat templates end the prompt with the assistant header, so the answer follows directly; raw text needs a gap.
    completion_text = example.completion if example.chat else " " + example.completion
    completion_ids = token_ids(tokenizer, completion_text) + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids


def encode_all(tokenizer, examples: list[Example], max_length: int | None = None) -> list[tuple[list[int], list[int]]]:
    """`encode_example` of each; ContextLengthError naming the first example longer than `max_length`."""
    encoded = [encode_example(tokenizer, ex) for ex in examples]
    if max_length is not None:
        too_long = [(ex, len(ids)) for ex, (ids, _) in zip(examples, encoded) if len(ids) > max_length]
        if too_long:
            (example, length), others = too_long[0], len(too_long) - 1
            raise ContextLengthError(example.prompt, length, max_length, what="prompt + completion", others=others)
    return encoded


def pad_rows(rows: Sequence[Sequence[int]], fill: int, left: bool = False) -> torch.Tensor:
    """[len(rows), longest] long tensor of the rows padded with `fill` on the right (or the left)."""
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        out[i, span] = torch.tensor(row, dtype=torch.long)
    return out


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch for training and scoring: input_ids, attention_mask, labels, all [batch, seq]."""
    ids = [ids for ids, _ in encoded]
    return {"input_ids": pad_rows(ids, pad_id), "attention_mask": pad_rows([[1] * len(row) for row in ids], 0),
            "labels": pad_rows([labels for _, labels in encoded], IGNORE)}


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def prompt_batch(tokenizer, prompts: Sequence[str], chat: bool = True, system: str | None = None,
                 limit: int | None = None, reserve: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded prompts (input_ids, attention_mask [batch, seq]): the last prompt token of every row sits at
    position -1, where generation continues and last-token activations are read. Every prompt is checked before
    any is run."""
    rows = [encode_prompt(tokenizer, p, chat, system, limit, reserve) for p in prompts]
    return {"input_ids": pad_rows(rows, tokenizer.pad_token_id, left=True),
            "attention_mask": pad_rows([[1] * len(row) for row in rows], 0, left=True)}


@dataclass
class ContrastBatch:
    """Two completions of the same prompts, each a collated batch: the behaviour to push down (`undesired`: a
    harmful answer, the forget text, a rejected completion) and the one to push up (`desired`: the refusal, generic
    labels, the chosen completion). The latent adversary attacks toward `undesired` and away from `desired`; the
    defender trains the other way. A perturbation for both is allocated `width` positions wide."""
    undesired: dict[str, torch.Tensor]  # input_ids, attention_mask, labels: [batch, seq_u]
    desired: dict[str, torch.Tensor]  # [batch, seq_d]
    width: int  # max(seq_u, seq_d)

    def to(self, device) -> ContrastBatch:
        return ContrastBatch(to_device(self.undesired, device), to_device(self.desired, device), self.width)


def collate_contrast(tokenizer, undesired: list[tuple[list[int], list[int]]],
                     desired: list[tuple[list[int], list[int]]]) -> ContrastBatch:
    """A ContrastBatch from encoded examples: row i of each side shares row i's prompt."""
    bad, good = collate(undesired, tokenizer.pad_token_id), collate(desired, tokenizer.pad_token_id)
    return ContrastBatch(bad, good, max(bad["input_ids"].shape[1], good["input_ids"].shape[1]))
