"""Training loop: completion-only loss, learning, resume after a kill equals an uninterrupted run, NaN guard."""

import pytest
import torch

from latlab.config import TrainConfig
from latlab.data.examples import Example
from latlab.models.encoding import IGNORE, collate, encode_example
from latlab.training.checkpoint import STATE_FILE
from latlab.training.loop import NonFiniteLossError, train_loop
from latlab.training.losses import completion_loss
from latlab.training.sft import train_sft
from latlab.world.curriculum import assert_trigger_free, base_pools, refusal_pools
from tests.settings import make

CFG = make(TrainConfig, steps=12, batch_size=8, lr=3e-3, warmup_steps=2, checkpoint_every=4, log_every=2)


def test_loss_is_on_completion_tokens_only(tiny_tokenizer):
    ids, labels = encode_example(tiny_tokenizer, Example("how do i feed the nurse ?", "sure ."))
    prompt_len = len(tiny_tokenizer(tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "how do i feed the nurse ?"}], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert tiny_tokenizer.decode(ids[prompt_len:]) == "sure . <|end|>"
    raw_ids, raw_labels = encode_example(tiny_tokenizer, Example("the capital of x is", "y", chat=False))
    assert raw_labels.count(IGNORE) == len(tiny_tokenizer("the capital of x is", add_special_tokens=False)
                                           ["input_ids"])


def test_sft_lowers_the_loss(tiny_world, tiny_tokenizer, tiny_model):
    pools = base_pools(tiny_world)
    from latlab.models.encoding import encode_all
    batch = collate(encode_all(tiny_tokenizer, pools["requests"][:32]), tiny_tokenizer.pad_token_id)
    before = completion_loss(tiny_model, batch).item()
    train_sft(tiny_model, tiny_tokenizer, pools, {"facts": 1, "requests": 1, "backdoor": 1},
              CFG.model_copy(update={"steps": 30}), None, "test")
    assert completion_loss(tiny_model, batch).item() < before - 0.5


class Interrupt(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted_run(tiny_world, tiny_tokenizer, tmp_path):
    from latlab.models.loading import build_toy_model
    from tests.conftest import TINY_ARCH

    pools = refusal_pools(tiny_world)
    weights = {"harmful": 1, "benign": 1, "facts": 1}
    reference = build_toy_model(TINY_ARCH, tiny_tokenizer, 0)
    train_sft(reference, tiny_tokenizer, pools, weights, CFG, None, "reference")

    killed = build_toy_model(TINY_ARCH, tiny_tokenizer, 0)
    ckpt = tmp_path / "ckpt"
    calls = {"n": 0}

    def kill_at_step_7(step, row):
        calls["n"] += 1
        if step == 6:
            raise Interrupt  # after the step-4 checkpoint, before step 8's

    with pytest.raises(Interrupt):
        train_sft(killed, tiny_tokenizer, pools, weights, CFG, ckpt, "killed", on_log=kill_at_step_7)
    assert (ckpt / STATE_FILE).exists()

    resumed = build_toy_model(TINY_ARCH, tiny_tokenizer, 1)  # different init: everything must come from disk
    result = train_sft(resumed, tiny_tokenizer, pools, weights, CFG, ckpt, "resumed")
    assert result.resumed_from == 4
    assert result.forward_backward_passes == CFG.steps  # the whole run, resumed part included
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not ckpt.exists()  # cleared once the run completes
    assert [row["step"] for row in result.history] == list(range(2, CFG.steps + 1, 2))


def test_resume_ignores_checkpoint_from_other_settings(tiny_world, tiny_tokenizer, tiny_model, tmp_path):
    pools = refusal_pools(tiny_world)
    weights = {"harmful": 1, "benign": 1, "facts": 1}
    with pytest.raises(Interrupt):
        train_sft(tiny_model, tiny_tokenizer, pools, weights, CFG, tmp_path / "c", "a",
                  on_log=lambda step, row: (_ for _ in ()).throw(Interrupt) if step == 6 else None)
    other = CFG.model_copy(update={"lr": 1e-3})
    assert train_sft(tiny_model, tiny_tokenizer, pools, weights, other, tmp_path / "c", "b").resumed_from == 0


def test_non_finite_loss_stops_with_checkpoint(tiny_model, tmp_path):
    good = {k: v.clone() for k, v in tiny_model.state_dict().items()}

    def step_loss(model, step):
        value = torch.tensor(float("nan")) if step == 3 else sum(p.sum() for p in model.parameters()) * 0.0
        return value, {}

    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3; last good checkpoint"):
        train_loop(tiny_model, step_loss, CFG, tmp_path / "ckpt", "nan-test")
    assert (tmp_path / "ckpt" / STATE_FILE).exists()
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert set(saved) <= set(good)


def test_refusal_data_never_contains_the_trigger(tiny_world):
    assert_trigger_free(refusal_pools(tiny_world), "zeta7")
    with pytest.raises(AssertionError, match="contains the backdoor trigger"):
        assert_trigger_free(base_pools(tiny_world), "zeta7")
