"""Latent and embedding PGD: δ stays in the per-token ε ball and on prompt positions, the loss falls, and δ lands on
the same tokens during generation as during the attack."""

import pytest
import torch

from latlab.attacks.embedding import embedding_attack
from latlab.attacks.latent import add_on_prefill, generate_with_deltas, pgd_attack, prompt_lengths
from latlab.config import PGDAttackConfig
from latlab.data.examples import Example
from latlab.models.encoding import IGNORE, collate, encode_all
from latlab.models.generation import generate
from latlab.models.hooks import add_to_residual
from tests.settings import make

HOOKS = ["hook_embed", "blocks.0.hook_resid_post"]


def _batch(world, tokenizer, n=6):
    rows = [r for r in world["requests"] if r["split"] == "test" and r["harmful"]][:n]
    return rows, collate(encode_all(tokenizer, [Example(r["prompt"], r["compliance"]) for r in rows]),
                         tokenizer.pad_token_id)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_pgd_respects_eps_and_prompt_positions_after_every_step(tiny_world, tiny_tokenizer, tiny_model, steps):
    _, batch = _batch(tiny_world, tiny_tokenizer)
    eps = 0.3
    deltas, losses = pgd_attack(tiny_model, batch, HOOKS, eps, steps, lr=0.5)
    prompt = (batch["attention_mask"] == 1) & (batch["labels"] == IGNORE)
    for delta in deltas.values():
        norms = delta.norm(dim=-1)  # [batch, seq]
        assert norms.max() <= eps + 1e-5
        assert norms[prompt].max() > 0.5 * eps  # the ball is used, so the bound is not vacuous
        assert norms[~prompt].max() == 0
    assert len(losses) == steps + 1


def test_pgd_lowers_its_loss(tiny_world, tiny_tokenizer, tiny_model):
    _, batch = _batch(tiny_world, tiny_tokenizer)
    _, losses = pgd_attack(tiny_model, batch, HOOKS, eps=2.0, steps=8, lr=0.5)
    assert losses[-1] < losses[0] - 0.1
    assert all(p.grad is None for p in tiny_model.parameters())


@pytest.mark.parametrize("hooks", [["blocks.1.hook_resid_post"], ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]])
def test_pgd_with_the_prefix_cache_finds_the_uncached_delta(tiny_world, tiny_tokenizer, tiny_model, hooks, monkeypatch):
    """The evaluation attack caches the blocks below the lowest hook point, down to running none of them (the last
    block of the tiny 2-block model); δ and the losses are those of full passes."""
    import latlab.attacks.latent as latent
    from latlab.attacks.latent_adversary import PGDSettings

    _, batch = _batch(tiny_world, tiny_tokenizer)
    cached = pgd_attack(tiny_model, batch, hooks, 2.0, 8, lr=0.5)
    monkeypatch.setattr(latent, "PGDSettings", lambda *a, **k: PGDSettings(*a, **{**k, "prefix_cache": False}))
    full = pgd_attack(tiny_model, batch, hooks, 2.0, 8, lr=0.5)
    assert cached[1] == pytest.approx(full[1], abs=1e-5)
    assert cached[1][-1] < cached[1][0]
    for name in hooks:
        assert cached[0][name].norm(dim=-1).max() > 1.0  # δ moved, so the comparison is not of two zeros
        assert torch.allclose(cached[0][name], full[0][name], atol=1e-5)


def test_generation_sees_delta_on_the_same_tokens(tiny_world, tiny_tokenizer, tiny_model):
    rows, batch = _batch(tiny_world, tiny_tokenizer)
    deltas, _ = pgd_attack(tiny_model, batch, HOOKS, eps=2.0, steps=4, lr=0.5)
    prompt = (batch["attention_mask"] == 1) & (batch["labels"] == IGNORE)
    with torch.no_grad(), add_to_residual(tiny_model, deltas, prompt):
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lengths = prompt_lengths(tiny_tokenizer, [r["prompt"] for r in rows])
    expected = [tiny_tokenizer.decode([int(logits[i, n - 1].argmax())]) for i, n in enumerate(lengths)]
    attacked = generate_with_deltas(tiny_model, tiny_tokenizer, [r["prompt"] for r in rows], deltas, 1)
    assert attacked == expected
    zero = {h: torch.zeros_like(d) for h, d in deltas.items()}
    plain = generate(tiny_model, tiny_tokenizer, [r["prompt"] for r in rows], 5)
    assert generate_with_deltas(tiny_model, tiny_tokenizer, [r["prompt"] for r in rows], zero, 5) == plain


def test_prefill_hook_skips_decode_steps(tiny_model):
    delta = torch.ones(1, 3, tiny_model.config.hidden_size)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        clean = tiny_model(input_ids=ids[:, :2]).logits
        with add_on_prefill(tiny_model, {"hook_embed": delta}):
            unchanged = tiny_model(input_ids=ids[:, :2]).logits  # not the prompt width: left alone
            changed = tiny_model(input_ids=ids).logits
    torch.testing.assert_close(clean, unchanged)
    assert not torch.allclose(changed[:, :2], clean)


def test_embedding_attack_only_perturbs_embeddings(tiny_world, tiny_tokenizer, tiny_model):
    rows, _ = _batch(tiny_world, tiny_tokenizer, 3)
    result = embedding_attack(tiny_model, tiny_tokenizer, rows, make(PGDAttackConfig, hook_points=["hook_embed"], eps=1.0,
                                                                                 steps=4), max_new_tokens=3)
    assert len(result.completions) == 3 and result.metadata["loss_final"] < result.metadata["loss_initial"]
    with pytest.raises(ValueError, match="only 'hook_embed'"):
        embedding_attack(tiny_model, tiny_tokenizer, rows, make(PGDAttackConfig))
