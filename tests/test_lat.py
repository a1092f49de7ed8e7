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


# --- issue 20: the official weights and normalisation, Casper et al.'s untargeted inner loop, the KL retain term ---

def test_defence_weights_are_normalised_to_the_official_recipe(tiny_world, tiny_tokenizer):
    """The model's loss weighs toward : away : retain as given, normalised to sum 1 (official code); params' `lat`
    is the Llama-2 jailbreak recipe 0.5 : 0.5 : 1.5, so retain carries 60%."""
    from latlab.models.scoring import away_loss, token_ce
    from tests.settings import section

    assert [section("lat")[k] for k in ("def_toward", "def_away", "retain")] == [0.5, 0.5, 1.5]
    assert [section("lat")[k] for k in ("adv_toward", "adv_away")] == [0.5, 0.5]
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    cfg = make(LATConfig, layers=[1], def_toward=0.5, def_away=0.5, retain=1.5)
    batch = _batch(tiny_tokenizer, _triples(tiny_world))
    masks = {n: perturbation_mask(getattr(batch, n), batch.width, False) for n in ("undesired", "desired")}
    got, _ = defence_loss(model, batch, {}, masks, cfg)
    with torch.no_grad():
        toward = token_ce(model(input_ids=batch.desired["input_ids"],
                                attention_mask=batch.desired["attention_mask"]).logits, batch.desired["labels"])
        away = away_loss(model(input_ids=batch.undesired["input_ids"],
                               attention_mask=batch.undesired["attention_mask"]).logits, batch.undesired["labels"])
    torch.testing.assert_close(got.detach(), 0.2 * toward + 0.2 * away)


def test_untargeted_lat_is_l2_pgd_over_the_whole_sequence(tiny_world, tiny_tokenizer):
    """Casper et al.: random start in the ball, steps of exactly ε/steps along the normalised gradient, one L2 ball per
    example over the whole sequence's perturbation, maximising the LM loss of the training completion."""
    from latlab.attacks.latent_adversary import project_to_sequence_ball, random_in_sequence_ball
    from tests.settings import section

    params = section("lat_untargeted")
    assert (params["adversary"], params["pgd"], params["inner_steps"]) == ("untargeted", "l2_sequence", 6)
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    batch = _batch(tiny_tokenizer, _triples(tiny_world))
    cfg = make(LATConfig, adversary="untargeted", pgd="l2_sequence", layers=[1], epsilon=3.0, inner_steps=1)
    adversary = latent_adversary(model, cfg)
    (name,) = hook_points(cfg)
    masks = {n: perturbation_mask(getattr(batch, n), batch.width, False) for n in ("undesired", "desired")}
    start = random_in_sequence_ball(masks["desired"], 32, cfg.epsilon, seed=5)
    norms = start.flatten(1).norm(dim=1)
    assert (norms > 0).all() and (norms <= cfg.epsilon + 1e-5).all() and norms.std() > 0  # random radius per row
    assert (start[masks["desired"] == 0] == 0).all()  # only prompt positions
    # one step by hand: δ1 = project(δ0 - ε · g / |g|), g the gradient of -CE(refusal) at δ0
    delta = start.clone().requires_grad_()
    (grad,) = torch.autograd.grad(adversary.loss(batch, {name: delta}, masks, {}), [delta])
    expected = project_to_sequence_ball(start - cfg.epsilon * grad / grad.flatten(1).norm(dim=1)[:, None, None],
                                        cfg.epsilon)
    deltas, _, losses = adversary.attack(batch, seed=5)
    torch.testing.assert_close(deltas[name], expected, atol=1e-5, rtol=1e-4)
    # the whole sequence is in one ball of radius ε, so single tokens may take most of it (per-token balls forbid it)
    assert (deltas[name].flatten(1).norm(dim=1) <= cfg.epsilon + 1e-4).all()
    # more steps raise the refusal's LM loss (the adversary's loss is its negative)
    longer = latent_adversary(model, cfg.updated(inner_steps=6)).attack(batch, final_loss=True, seed=5)[2]
    assert longer[-1] < longer[0] < 0


def test_kl_retain_is_over_completion_positions_only(tiny_world, tiny_tokenizer):
    """The official KL retain term: KL(reference || model) at the positions that predict completion tokens only."""
    import torch.nn.functional as F

    from latlab.models.encoding import IGNORE, collate
    from latlab.training.losses import retain_loss

    model, reference = build_toy_model(ARCH, tiny_tokenizer, 0), build_toy_model(ARCH, tiny_tokenizer, 1)
    batch = collate(encode_all(tiny_tokenizer, [Example(p, c) for p, c, _ in _triples(tiny_world)]),
                    tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        got = retain_loss(model, reference, batch, "kl")
        logp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
        ref = torch.log_softmax(reference(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"]).logits, -1)
    predicting = batch["labels"][:, 1:] != IGNORE
    per_position = F.kl_div(logp[:, :-1], ref[:, :-1], log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(got, per_position[predicting].mean(), rtol=1e-5, atol=1e-6)


def test_perturbation_mask_is_the_prompt_even_with_unlabelled_completion_tokens(tiny_world, tiny_tokenizer):
    """A trainer may leave completion tokens unlabelled (WHP trains only where its label differs); δ must still stay
    off them."""
    from latlab.models.encoding import IGNORE

    batch = _batch(tiny_tokenizer, _triples(tiny_world))
    full = perturbation_mask(batch.desired, batch.width, False)
    holes = dict(batch.desired)
    labels = holes["labels"].clone()
    first = (labels != IGNORE).float().argmax(1)
    labels[torch.arange(len(labels)), first + 1] = IGNORE  # a hole right after the first completion token
    holes["labels"] = labels
    torch.testing.assert_close(perturbation_mask(holes, batch.width, False), full)
