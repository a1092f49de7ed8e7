"""Refusal-direction ablation (Arditi et al. 2024, "Refusal in language models is mediated by a single direction").

Per layer, the direction is the difference of the mean residual stream (output of that block) at the last prompt
token (the assistant header) between harmful and harmless training prompts. The attack projects the chosen unit
direction out of the residual stream at the embeddings and after every block, at every position, during generation.
Removing it after every writer to the stream is what Arditi et al. do by editing each block's input and outputs; on
the residual stream the two are the same. The layer is chosen, as in the paper, by the effect of ablation on a
refusal score measured on training prompts: here the mean log-probability of the refusal answer.

Hand-written because it is a few lines on latlab's residual hooks; the maintained implementations target
TransformerLens models or ship as notebooks.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from latlab.attacks.common import AttackResult
from latlab.config import RefusalDirectionConfig
from latlab.data.examples import Example
from latlab.models.encoding import context_limit, prompt_batch, to_device
from latlab.models.generation import completion_logprobs, generate
from latlab.models.hooks import EMBED, capture_residual, decoder_layers, edit_residual, resid_name


@torch.no_grad()
def last_token_means(model, tokenizer, prompts: list[str], batch_size: int) -> torch.Tensor:
    """Mean residual at the last prompt token after each block: [n_layers, d_model]."""
    device = next(model.parameters()).device
    names = [resid_name(layer) for layer in range(len(decoder_layers(model)))]
    total = None
    for start in range(0, len(prompts), batch_size):
        # left-padded: the last prompt token sits at position -1 of every row
        enc = to_device(prompt_batch(tokenizer, prompts[start:start + batch_size], limit=context_limit(model)), device)
        with capture_residual(model, names) as store:
            model(**enc)
        sums = torch.stack([store[n][:, -1].float().sum(0) for n in names])
        total = sums if total is None else total + sums
    return total / len(prompts)


def refusal_directions(model, tokenizer, harmful_prompts: list[str], harmless_prompts: list[str],
                       batch_size: int = 64) -> torch.Tensor:
    """Difference-in-means direction per layer (not normalised): [n_layers, d_model]."""
    return (last_token_means(model, tokenizer, harmful_prompts, batch_size)
            - last_token_means(model, tokenizer, harmless_prompts, batch_size))


@contextmanager
def ablate_direction(model, direction: torch.Tensor):
    """Project the unit direction ([d_model]) out of the residual stream everywhere it is written."""
    unit = direction / direction.norm()

    def project_out(hidden: torch.Tensor) -> torch.Tensor:
        r = unit.to(hidden.device, hidden.dtype)
        return hidden - (hidden @ r)[..., None] * r

    names = [EMBED] + [resid_name(layer) for layer in range(len(decoder_layers(model)))]
    with edit_residual(model, {name: project_out for name in names}):
        yield


def refusal_score(model, tokenizer, requests: list[dict], batch_size: int) -> float:
    """Mean per-token log-probability of the refusal answer on harmful prompts (higher: more refusing)."""
    sums, counts = completion_logprobs(model, tokenizer, [Example(r["prompt"], r["refusal"]) for r in requests],
                                       batch_size)
    return sum(sums) / max(1, sum(counts))


def select_layer(model, tokenizer, directions: torch.Tensor, harmful_requests: list[dict],
                 batch_size: int) -> tuple[int, list[float]]:
    """The layer whose direction, ablated, lowers the refusal score most; and the score per layer."""
    scores = []
    for direction in directions:
        with ablate_direction(model, direction):
            scores.append(refusal_score(model, tokenizer, harmful_requests, batch_size))
    return min(range(len(scores)), key=scores.__getitem__), scores


def _split_support(support: list[dict] | None, count: int) -> tuple[list[dict], list[dict]]:
    train = sorted((r for r in (support or []) if r.get("split", "train") == "train"), key=lambda r: r["id"])
    harmful = [r for r in train if r.get("harmful")][:count]
    harmless = [r for r in train if not r.get("harmful")][:count]
    if not harmful or not harmless:
        raise ValueError("refusal-direction ablation needs training-split harmful and harmless requests (support)")
    return harmful, harmless


def refusal_direction_attack(model, tokenizer, requests: list[dict], cfg: RefusalDirectionConfig, *,
                             support: list[dict] | None = None, max_new_tokens: int = 16,
                             batch_size: int = 64) -> AttackResult:
    harmful, harmless = _split_support(support, cfg.prompts)
    directions = refusal_directions(model, tokenizer, [r["prompt"] for r in harmful],
                                    [r["prompt"] for r in harmless], batch_size)
    if cfg.layer is None:
        layer, scores = select_layer(model, tokenizer, directions, harmful, batch_size)
    else:
        if not 0 <= cfg.layer < len(directions):
            raise ValueError(f"refusal_direction.layer {cfg.layer}: the model has {len(directions)} blocks")
        layer, scores = cfg.layer, []
    with ablate_direction(model, directions[layer]):
        completions = generate(model, tokenizer, [r["prompt"] for r in requests], max_new_tokens, batch_size)
    return AttackResult(completions, {"layer": layer, "layer_scores": scores,
                                      "refusal_score_clean": refusal_score(model, tokenizer, harmful, batch_size),
                                      "direction_norm": float(directions[layer].norm())})
