"""TransformerLens 4 model bridge over an in-memory HF Llama model: hook points named the TransformerLens way.

`make_bridge` wraps a model with `transformer_lens.model_bridge.sources.build_bridge_from_module` and turns on the
per-head views the ACDC graph needs (`blocks.L.hook_{q,k,v}_input` [batch, pos, head, d_model] on the pre-norm
residual, `blocks.L.attn.hook_result` [batch, pos, head, d_model]). The bridge replaces submodules of the model it is
given, so by default it wraps a deep copy and the caller's model stays a plain HF model.

`no_processing=True` keeps the HF weights as they are (no layer-norm folding or centring), so bridge activations are
the HF model's own; with processing the logits differ by a per-position constant (centred unembedding) and the
log-probabilities are unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor


def make_bridge(model: torch.nn.Module, *, copy_model: bool = True, no_processing: bool = True):
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    target = copy.deepcopy(model) if copy_model else model
    bridge = build_bridge_from_module(target, type(model).__name__, hf_config=model.config)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=no_processing)
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_attn_result(True)
    return bridge


@torch.no_grad()
def bridge_cache(bridge, ids: Tensor, names: list[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits [batch, pos, vocab] and the cached activations (only `names` if given)."""
    logits, cache = bridge.run_with_cache(ids, names_filter=names)
    return logits, {k: v for k, v in cache.items()}


@torch.no_grad()
def resid_post(bridge, ids: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """`blocks.{layer}.hook_resid_post` for each layer, [batch, pos, d_model]."""
    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    _, cache = bridge_cache(bridge, ids, names)
    return {layer: cache[name] for layer, name in zip(layers, names)}
