"""R2D2: the away term ignores unlikely tokens, a few R2D2 steps lower the loss under the (adaptive) GCG pool,
compute is counted with GCG included, and the pool survives a resume."""

import copy

import pytest
import torch

from latlab.config import R2D2Config
from latlab.data.examples import fact_examples
from latlab.models.encoding import IGNORE
from latlab.models.scoring import away_loss
from latlab.training.r2d2 import R2D2Trainer, train_r2d2
from latlab.world.curriculum import request_examples
from tests.settings import make

CFG = make(R2D2Config, steps=6, batch_size=8, lr=3e-3, warmup_steps=1, pool_size=3, gcg_steps=2, search_width=8,
                 topk=8, suffix_tokens=4, reset_every=3, reset_fraction=0.34, log_every=2, checkpoint_every=3)


def _data(world):
    harmful = [r for r in world["requests"] if r["split"] == "train" and r["harmful"]]
    pools = {"benign": request_examples(world["requests"], "benign", "compliance"),
             "facts": fact_examples(world["facts"])}
    return harmful, pools


def test_away_loss_ignores_tokens_below_the_floor():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = 4.0  # p(token 1) high at position 0
    logits[0, 1, 2] = -20.0  # p(token 2) ~ 0 at position 1: below the floor
    labels = torch.tensor([[IGNORE, 1, 2]])
    p = torch.softmax(logits[0, 0], -1)[1]
    # the token below the floor adds no penalty but still counts in the mean (HarmBench / official LAT code)
    assert torch.isclose(away_loss(logits, labels, -5.0), -torch.log1p(-p) / 2)
    # with no floor it joins with a ~0 penalty: the same value
    assert torch.isclose(away_loss(logits, labels, -100.0), away_loss(logits, labels, -5.0), rtol=1e-4)


def test_r2d2_steps_lower_the_attacked_loss(tiny_world, tiny_tokenizer, tiny_model):
    harmful, pools = _data(tiny_world)
    before = copy.deepcopy(tiny_model)
    result = train_r2d2(tiny_model, tiny_tokenizer, harmful, pools, CFG, None, "r2d2-test")
    # the final pool holds the strongest suffixes against the trained model; score both models on it
    trainer = R2D2Trainer(tiny_model, tiny_tokenizer, harmful, pools, CFG)
    trainer._refresh(0)
    ids = {r["id"]: i for i, r in enumerate(harmful)}
    for case, final in zip(trainer.pool, result.pool):
        case.request = ids[final["request"]]
        case.suffix = torch.tensor(tiny_tokenizer(final["suffix"], add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        toward_before, away_before, _ = trainer.attacked_losses(before)
        toward_after, away_after, _ = trainer.attacked_losses(tiny_model)
    assert toward_after < toward_before - 0.5
    assert result.compute["forward_passes"] > result.compute["backward_passes"] > CFG.steps
    gcg_only = result.compute["forward_tokens"] - result.compute["backward_tokens"]
    assert gcg_only > 0  # candidate scoring is forward-only work


def test_pool_is_reset_on_schedule(tiny_world, tiny_tokenizer, tiny_model):
    harmful, pools = _data(tiny_world)
    trainer = R2D2Trainer(tiny_model, tiny_tokenizer, harmful, pools, CFG)
    trainer._refresh(0)
    first = [(c.request, c.suffix.clone()) for c in trainer.pool]
    trainer._refresh(1)
    assert all(torch.equal(a[1], b.suffix) for a, b in zip(first, trainer.pool))
    trainer._refresh(3)  # reset_every=3, fraction 0.34 of 3 -> one case replaced
    changed = sum(not torch.equal(a[1], b.suffix) for a, b in zip(first, trainer.pool))
    assert changed == 1


class Stop(Exception):
    pass


def test_resume_restores_the_pool(tiny_world, tiny_tokenizer, tmp_path):
    from latlab.models.loading import build_toy_model
    from tests.conftest import TINY_ARCH

    harmful, pools = _data(tiny_world)
    reference = build_toy_model(TINY_ARCH, tiny_tokenizer, 0)
    full = train_r2d2(reference, tiny_tokenizer, harmful, pools, CFG, None, "ref")

    def stop(step, row):
        if step == 4:
            raise Stop

    killed = build_toy_model(TINY_ARCH, tiny_tokenizer, 0)
    with pytest.raises(Stop):
        train_r2d2(killed, tiny_tokenizer, harmful, pools, CFG, tmp_path / "ckpt", "killed", on_log=stop)
    resumed_model = build_toy_model(TINY_ARCH, tiny_tokenizer, 1)
    resumed = train_r2d2(resumed_model, tiny_tokenizer, harmful, pools, CFG, tmp_path / "ckpt", "resumed")
    assert resumed.resumed_from == 3
    assert resumed.pool == full.pool
    assert resumed.compute == full.compute
    for a, b in zip(reference.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "ckpt.r2d2_pool.json").exists()
