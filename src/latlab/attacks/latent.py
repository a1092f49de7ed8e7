"""Latent-space attack at evaluation time: the latent adversary (`latlab.attacks.latent_adversary`, Sheshadri et
al. 2024) pushes each harmful request toward its harmful completion (cross-entropy only: there is no away term),
then the model generates under the δ it found. The model's weights are frozen: gradients are taken with respect to δ
alone. The blocks below the lowest attacked one run once per batch (the adversary's prefix cache, exact: a test in
tests/test_lat.py compares it with full passes), so an attack at the last block costs the final norm and unembedding
per PGD step; the embedding attack (`hook_embed`) runs every block each step.

Generation with δ: the prompt is encoded right-padded for PGD but `generate` left-pads, so each example's δ over its
own prompt tokens is re-aligned to the right edge of the generation batch. With the KV cache, the prompt goes
through the model once (the prefill forward pass, whose sequence length is the prompt width) and every later step
sees one new token; the hook adds δ only on a pass whose length equals the prompt width, i.e. on the prefill pass,
so generated tokens are never perturbed, as in training. (Without a KV cache every step would re-run the prompt and
the hook would only fire on the first one; `generate` keeps the cache on.)

The embedding-space attack (`latlab.attacks.embedding`) is this attack at `hook_embed`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from latlab.attacks.common import AttackResult
from latlab.attacks.latent_adversary import LatentAdversary, PGDSettings
from latlab.config import PGDAttackConfig
from latlab.data.examples import Example
from latlab.models.compute import Compute
from latlab.models.encoding import ContrastBatch, collate, context_limit, encode_all, encode_prompt, to_device
from latlab.models.generation import generate
from latlab.models.hooks import edit_residual


def pgd_attack(model, batch: dict[str, torch.Tensor], hook_points: list[str], eps: float, steps: int, lr: float,
               compute: Compute | None = None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """δ per hook point ([batch, seq, d_model], zero outside prompt positions) lowering the CE of batch["labels"];
    returns (δ detached, target loss before each step and after the last)."""
    batch = to_device(batch, next(model.parameters()).device)
    settings = PGDSettings(tuple(hook_points), eps, steps, lr, toward=1.0, away=0.0, prefix_cache=True)
    # one target only: the batch fills both sides, and with away = 0 the adversary never runs the `desired` side
    contrast = ContrastBatch(batch, batch, batch["input_ids"].shape[1])
    deltas, _, losses = LatentAdversary(model, settings, compute).attack(contrast, final_loss=True)
    return deltas, losses


def prompt_lengths(tokenizer, prompts: list[str]) -> list[int]:
    return [len(encode_prompt(tokenizer, p)) for p in prompts]


@contextmanager
def add_on_prefill(model, deltas: dict[str, torch.Tensor]):
    """Add δ ([batch, width, d_model], left-aligned to a left-padded prompt batch) on the prefill pass only."""
    def adder(delta: torch.Tensor):
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            return hidden + delta.to(hidden.dtype) if hidden.shape[1] == delta.shape[1] else hidden
        return edit

    with edit_residual(model, {name: adder(d) for name, d in deltas.items()}):
        yield


def generate_with_deltas(model, tokenizer, prompts: list[str], deltas: dict[str, torch.Tensor],
                         max_new_tokens: int) -> list[str]:
    """Greedy completions with δ (right-padded layout of `pgd_attack`, [batch, seq, d_model]) on prompt tokens."""
    lengths = prompt_lengths(tokenizer, prompts)
    width = max(lengths)
    shifted = {}
    for name, delta in deltas.items():
        moved = delta.new_zeros(len(prompts), width, delta.shape[-1])
        for row, length in enumerate(lengths):
            moved[row, width - length:] = delta[row, :length]
        shifted[name] = moved
    with add_on_prefill(model, shifted):
        return generate(model, tokenizer, prompts, max_new_tokens, batch_size=len(prompts))


def pgd_generation_attack(model, tokenizer, requests: list[dict], cfg: PGDAttackConfig, eps: float | None = None,
                          *, max_new_tokens: int = 16, batch_size: int = 64) -> AttackResult:
    """PGD toward each request's harmful completion, then greedy generation under the found δ."""
    eps = cfg.eps if eps is None else eps
    compute, completions, first, last = Compute(), [], [], []
    max_length = context_limit(model)
    for start in range(0, len(requests), batch_size):
        chunk = requests[start:start + batch_size]
        batch = collate(encode_all(tokenizer, [Example(r["prompt"], r["compliance"]) for r in chunk], max_length),
                        tokenizer.pad_token_id)
        deltas, losses = pgd_attack(model, batch, cfg.hook_points, eps, cfg.steps, cfg.lr, compute)
        first.append(losses[0] * len(chunk))
        last.append(losses[-1] * len(chunk))
        completions += generate_with_deltas(model, tokenizer, [r["prompt"] for r in chunk], deltas, max_new_tokens)
    n = max(1, len(requests))
    return AttackResult(completions, {"eps": eps, "hook_points": list(cfg.hook_points), "loss_initial": sum(first) / n,
                                      "loss_final": sum(last) / n, **compute.as_dict()})


def latent_attack(model, tokenizer, requests: list[dict], cfg: PGDAttackConfig, *,
                  support: list[dict] | None = None, max_new_tokens: int = 16, batch_size: int = 64) -> AttackResult:
    return pgd_generation_attack(model, tokenizer, requests, cfg, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size)
