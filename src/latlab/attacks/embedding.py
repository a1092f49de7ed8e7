"""Embedding-space attack (Schwinn et al. 2024, "Soft prompt threats"; the adversary of RT-EAT): the latent PGD
attack of `latlab.attacks.latent` with δ on the token embeddings (`hook_embed`) only."""

from __future__ import annotations

from latlab.attacks.common import AttackResult
from latlab.attacks.latent import pgd_generation_attack
from latlab.config import PGDAttackConfig
from latlab.models.hooks import EMBED


def embedding_attack(model, tokenizer, requests: list[dict], cfg: PGDAttackConfig, *,
                     support: list[dict] | None = None, max_new_tokens: int = 16,
                     batch_size: int = 64) -> AttackResult:
    if list(cfg.hook_points) != [EMBED]:
        raise ValueError(f"the embedding attack perturbs only {EMBED!r}; got hook_points={cfg.hook_points}")
    return pgd_generation_attack(model, tokenizer, requests, cfg, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size)
