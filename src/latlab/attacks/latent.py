"""Latent-space PGD attack (the adversary of Sheshadri et al. 2024, "Targeted latent adversarial training", used
here as an evaluation-time attack): a perturbation δ at chosen residual hook points, one per hook point with shape
[batch, seq, d_model], optimised with Adam toward the harmful completion (cross-entropy) and projected after every
step onto the per-token L2 ball of radius ε. Only prompt positions are perturbed. The model's weights are frozen:
gradients are taken with respect to δ alone.

Generation with δ: the prompt is encoded right-padded for PGD but `generate` left-pads, so each example's δ over its
own prompt tokens is re-aligned to the right edge of the generation batch. With the KV cache, the prompt goes
through the model once (the prefill forward pass, whose sequence length is the prompt width) and every later step
sees one new token; the hook adds δ only on a pass whose length equals the prompt width, i.e. on the prefill pass,
so generated tokens are never perturbed, as in training. (Without a KV cache every step would re-run the prompt and
the hook would only fire on the first one; `generate` keeps the cache on.)

The embedding-space attack (`latlab.attacks.embedding`) is this attack at `hook_embed`. Hand-written because the
perturbation has to sit on the same hook points as latlab's LAT trainer; no maintained library attacks HF models'
residual stream this way.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from latlab.attacks.common import AttackResult, Compute, token_ids
from latlab.config import PGDAttackConfig
from latlab.evals.generation import generate
from latlab.evals.judge import COMPLIED
from latlab.models.hooks import add_to_residual, edit_residual
from latlab.training.examples import IGNORE, Example, collate, encode_all, render_prompt


def project_per_token(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each position's vector ([..., d_model]) down to L2 norm <= eps, in place."""
    norms = delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    delta.mul_((eps / norms).clamp(max=1.0))
    return delta


def pgd_attack(model, batch: dict[str, torch.Tensor], hook_points: list[str], eps: float, steps: int, lr: float,
               compute: Compute | None = None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """δ per hook point ([batch, seq, d_model], zero outside prompt positions) lowering the CE of batch["labels"];
    returns (δ detached, target loss before each step and after the last)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    prompt_mask = (batch["attention_mask"] == 1) & (batch["labels"] == IGNORE)  # [batch, seq]
    width = model.get_input_embeddings().weight.shape[1]
    shape = (*batch["input_ids"].shape, width)
    deltas = {h: torch.zeros(shape, device=device, requires_grad=True) for h in hook_points}
    optimizer = torch.optim.Adam(list(deltas.values()), lr=lr)
    tokens = int(batch["attention_mask"].sum())
    losses: list[float] = []
    for step in range(steps + 1):
        with add_to_residual(model, deltas, prompt_mask):
            loss = model(**batch).loss
        losses.append(float(loss.detach()))
        if compute is not None:
            compute.forward(tokens)
        if step == steps:
            break
        grads = torch.autograd.grad(loss, list(deltas.values()))
        if compute is not None:
            compute.backward(tokens)
        for delta, grad in zip(deltas.values(), grads):
            delta.grad = grad
        optimizer.step()
        with torch.no_grad():
            for delta in deltas.values():
                project_per_token(delta, eps)
    return {h: d.detach() for h, d in deltas.items()}, losses


def prompt_lengths(tokenizer, prompts: list[str]) -> list[int]:
    return [len(token_ids(tokenizer, render_prompt(tokenizer, p))) for p in prompts]


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
    max_length = getattr(model.config, "max_position_embeddings", None)
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


def eps_sweep(model, tokenizer, requests: list[dict], cfg: PGDAttackConfig, judge, eps_values: list[float], *,
              max_new_tokens: int = 16, batch_size: int = 64) -> list[dict[str, float]]:
    """ASR curve: [{"eps", "asr", "loss_final"}] for each radius."""
    curve = []
    for eps in eps_values:
        result = pgd_generation_attack(model, tokenizer, requests, cfg, eps, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size)
        labels = [judge.label(r, c) for r, c in zip(requests, result.completions)]
        curve.append({"eps": eps, "asr": float(np.mean([lab == COMPLIED for lab in labels])) if labels else 0.0,
                      "loss_final": result.metadata["loss_final"]})
    return curve
