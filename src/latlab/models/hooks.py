"""Residual-stream intervention points of HF decoder-only models, named the TransformerLens way.

`hook_embed` is the token-embedding output; `blocks.{L}.hook_resid_post` is the output of decoder block L. Training
methods (LAT, embedding AT) and attacks (latent PGD, refusal-direction ablation) add or edit vectors there; probes
and evaluations read them (`collect_residuals`).

Why plain PyTorch forward hooks instead of TransformerLens' model bridge: the trainers must backpropagate into the
HF model they are training, which may be wrapped by peft (LoRA) or accelerate, and must also run only the upper
blocks of the same module (prefix caching). Hooks on the HF modules themselves do both with no conversion; the
bridge is used by `latlab.interp` for analysis, where its uniform hook set pays off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from latlab.models.hook_names import EMBED, hook_layer_index, resid_name


# edit(hidden [batch, seq, d_model]) -> hidden of the same shape
Edit = Callable[[torch.Tensor], torch.Tensor]


def base_model(model):
    """The decoder stack under a causal LM (also through a peft wrapper)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model if hasattr(inner, "model") else inner


def model_device(model) -> torch.device:
    """Where the model's weights are. Inputs go there: a tensor built without `device=` lands on torch's default
    device (the CPU), which is not where a model loaded with device auto/cuda runs."""
    return next(model.parameters()).device


def forward_ids(model, ids: Sequence[int]):
    """The model's output on one sequence of token ids (a [1, len(ids)] batch on the model's device)."""
    return model(torch.tensor([list(ids)], dtype=torch.long, device=model_device(model)))


def decoder_layers(model) -> torch.nn.ModuleList:
    return base_model(model).layers


def hook_module(model, name: str) -> torch.nn.Module:
    if name == EMBED:
        return base_model(model).embed_tokens
    layer = hook_layer_index(name)
    layers = decoder_layers(model)
    if layer >= len(layers):
        raise ValueError(f"hook point {name!r}: the model has {len(layers)} blocks")
    return layers[layer]


def _replace_output(output, edit: Edit):
    if isinstance(output, tuple):
        return (edit(output[0]), *output[1:])
    return edit(output)


@contextmanager
def edit_residual(model, edits: dict[str, Edit]) -> Iterator[None]:
    """Apply edit functions at named hook points for the duration of the block."""
    handles = [hook_module(model, name).register_forward_hook(
        lambda module, args, output, edit=edit: _replace_output(output, edit)) for name, edit in edits.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def add_to_residual(model, deltas: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> Iterator[None]:
    """Add delta[name] ([batch, seq, d_model]) at each hook point, only where mask ([batch, seq]) is 1."""
    def adder(delta: torch.Tensor) -> Edit:
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            d = delta[:, : hidden.shape[1]].to(hidden.dtype)
            if mask is not None:
                d = d * mask[:, : hidden.shape[1], None].to(hidden.dtype)
            return hidden + d
        return edit

    with edit_residual(model, {name: adder(delta) for name, delta in deltas.items()}):
        yield


@contextmanager
def capture_residual(model, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the activations at the named hook points (dict filled during the forward pass)."""
    store: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Edit:
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            store[name] = hidden
            return hidden
        return edit

    with edit_residual(model, {name: recorder(name) for name in names}):
        yield store


@torch.no_grad()
def collect_residuals(model: torch.nn.Module, encode: Callable[[str], list[int]], texts: Sequence[str],
                      layers: Sequence[int], position: int = -1, batch_size: int = 64) -> dict[int, np.ndarray]:
    """layer -> [n_texts, d_model] activations at `position` of each text (negative: from its end), read in
    right-padded batches of `batch_size` (`residuals_of_ids`). IndexError for a position outside a text."""
    return residuals_of_ids(model, [list(encode(text)) for text in texts], layers, position, batch_size)


@torch.no_grad()
def residuals_of_ids(model: torch.nn.Module, sequences: Sequence[Sequence[int]], layers: Sequence[int],
                     position: int = -1, batch_size: int = 64) -> dict[int, np.ndarray]:
    """layer -> [n_sequences, d_model] float activations of blocks.{layer}.hook_resid_post at `position` of each
    token-id sequence (negative: from its end), read in right-padded batches of `batch_size`: in a causal model a
    position never attends to the padding after it, so each sequence's activations are its unbatched ones (up to
    float summation order). IndexError for a position outside a sequence."""
    names = {layer: resid_name(layer) for layer in layers}
    acts: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for ids, mask, lengths in _right_padded_batches(model, sequences, batch_size):
        at = torch.tensor([position if position >= 0 else n + position for n in lengths], device=ids.device)
        if bool(((at < 0) | (at >= mask.sum(-1))).any()):
            raise IndexError(f"position {position} is outside a sequence of {min(lengths)} tokens")
        with capture_residual(model, list(names.values())) as store:
            model(input_ids=ids, attention_mask=mask)
        rows = torch.arange(len(lengths), device=ids.device)
        for layer, name in names.items():
            acts[layer].extend(store[name][rows, at].float().cpu().numpy())
    return {layer: np.stack(v) for layer, v in acts.items()}


@torch.no_grad()
def last_token_logits(model: torch.nn.Module, sequences: Sequence[Sequence[int]], batch_size: int = 32
                      ) -> torch.Tensor:
    """[n_sequences, vocab] float logits (on the CPU) after the last token of each token-id sequence, one forward
    per right-padded batch of `batch_size` (exact as in `residuals_of_ids`); edits hooked into the residual stream
    (`edit_residual`) apply to every row."""
    out = []
    for ids, mask, lengths in _right_padded_batches(model, sequences, batch_size):
        logits = model(input_ids=ids, attention_mask=mask).logits
        out.append(logits[torch.arange(len(lengths), device=ids.device),
                          torch.tensor(lengths, device=ids.device) - 1].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0, device="cpu")


def _right_padded_batches(model, sequences: Sequence[Sequence[int]], batch_size: int
                          ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """(input_ids, attention_mask [batch, seq] on the model's device, lengths) per batch; pad id 0 is never attended."""
    device = model_device(model)
    for start in range(0, len(sequences), batch_size):
        chunk = [list(seq) for seq in sequences[start:start + batch_size]]
        lengths = [len(seq) for seq in chunk]
        ids = torch.zeros(len(chunk), max(lengths), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
            mask[row, :len(seq)] = 1
        yield ids, mask, lengths
