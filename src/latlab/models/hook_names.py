"""Names of the residual-stream intervention points, TransformerLens style, without torch (the params check reads
them before any model loads): `hook_embed` is the token-embedding output, `blocks.{L}.hook_resid_post` the output of
decoder block L. `latlab.models.hooks` attaches them to a model."""

from __future__ import annotations

import re

EMBED = "hook_embed"
RESID = re.compile(r"blocks\.(\d+)\.hook_resid_post")


def resid_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def hook_layer_index(name: str) -> int:
    """Block index whose output the hook edits; -1 for the embeddings."""
    if name == EMBED:
        return -1
    match = RESID.fullmatch(name)
    if not match:
        raise ValueError(f"unknown hook point {name!r}; use {EMBED!r} or 'blocks.<L>.hook_resid_post'")
    return int(match.group(1))
