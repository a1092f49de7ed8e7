"""Targeted LAT: δ stays in the ε-ball, the inner loop lowers the adversary's loss, a defender step lowers the loss
under attack, and prefix caching gives the same losses and gradients as the full computation."""

import pytest
import torch

from latlab.attacks.latent_adversary import cache_block_output, perturbation_mask, project_to_ball
from latlab.config import LATConfig, ToyArchitecture
from latlab.data.examples import Example
from latlab.models.encoding import collate_contrast, encode_all
from latlab.models.loading import build_toy_model
from latlab.training.lat import defence_loss, hook_points, latent_adversary, train_lat
from latlab.world.curriculum import request_examples
from tests.settings import make

ARCH = make(ToyArchitecture, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64, max_positions=64)


def _triples(world, n=8):
    rows = [r for r in world["requests"] if r["harmful"] and r["split"] == "train"][:n]
    return [(r["prompt"], r["compliance"], r["refusal"]) for r in rows]


def _batch(tokenizer, triples):
    harmful = encode_all(tokenizer, [Example(p, h) for p, h, _ in triples])
    refusal = encode_all(tokenizer, [Example(p, r) for p, _, r in triples])
    return collate_contrast(tokenizer, harmful, refusal)


def test_projection_keeps_every_token_in_the_ball():
    delta = torch.randn(3, 5, 8) * 10
    projected = project_to_ball(delta, 2.0)
    assert (projected.norm(dim=-1) <= 2.0 + 1e-5).all()
    small = torch.randn(3, 5, 8) * 0.01
    torch.testing.assert_close(project_to_ball(small, 2.0), small)


@pytest.mark.parametrize("layers, embed", [([1, 2], False), ([0], True)])
def test_inner_loop_respects_epsilon_and_lowers_adversary_loss(tiny_world, tiny_tokenizer, layers, embed):
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    cfg = make(LATConfig, layers=layers, perturb_embeddings=embed, epsilon=1.5, inner_steps=12, inner_lr=0.1)
    deltas, masks, losses = latent_adversary(model, cfg).attack(_batch(tiny_tokenizer, _triples(tiny_world)))
    assert set(deltas) == set(hook_points(cfg))
    for delta in deltas.values():
        assert (delta.norm(dim=-1) <= cfg.epsilon + 1e-4).all()
    assert losses[-1] < losses[0]


def test_prefix_cache_matches_full_computation(tiny_world, tiny_tokenizer):
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    batch = _batch(tiny_tokenizer, _triples(tiny_world))
    results = []
    for cached in (True, False):
        cfg = make(LATConfig, layers=[1, 3], prefix_cache=cached)
        adversary = latent_adversary(model, cfg)
        torch.manual_seed(0)
        deltas = {p: (torch.randn(batch.undesired["input_ids"].shape[0], batch.width, 32) * 0.5).requires_grad_()
                  for p in hook_points(cfg)}
        masks = {n: perturbation_mask(getattr(batch, n), batch.width, False) for n in ("undesired", "desired")}
        caches = {n: cache_block_output(model, getattr(batch, n), 1) for n in ("undesired", "desired")} if cached \
            else {}
        loss = adversary.loss(batch, deltas, masks, caches)
        grads = torch.autograd.grad(loss, list(deltas.values()))
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_defender_step_lowers_loss_under_attack(tiny_world, tiny_tokenizer):
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    cfg = make(LATConfig, layers=[1], epsilon=1.0, inner_steps=4)
    batch = _batch(tiny_tokenizer, _triples(tiny_world))
    deltas, masks, _ = latent_adversary(model, cfg).attack(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, _ = defence_loss(model, batch, deltas, masks, cfg)
    for _ in range(5):
        loss, _ = defence_loss(model, batch, deltas, masks, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, _ = defence_loss(model, batch, deltas, masks, cfg)
    assert after.item() < before.item()


@pytest.mark.parametrize("adversary", ["targeted", "untargeted"])
def test_train_lat_runs_and_counts_compute(tiny_world, tiny_tokenizer, adversary, tmp_path):
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    cfg = make(LATConfig, adversary=adversary, steps=4, batch_size=4, inner_steps=3, log_every=2, checkpoint_every=2,
                    layers=[2])
    retain = {"benign": request_examples(tiny_world["requests"], "benign", "compliance")}
    result, compute = train_lat(model, tiny_tokenizer, _triples(tiny_world), retain, {"benign": 1.0}, cfg,
                                tmp_path / "ckpt", "lat-test")
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    # the cached inner loop runs block 3 of 4 only: a quarter of the tokens of a full pass, plus the caching passes
    per_step_tokens = compute["defender_forward_tokens"] / cfg.steps  # ~3 sequences per example per step
    assert compute["adversary_backward_tokens"] < cfg.inner_steps * per_step_tokens
    assert compute["forward_tokens"] > compute["backward_tokens"] > 0
