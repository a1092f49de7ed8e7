"""stages.common.train_and_register: LoRA training through the stage path saves a merged plain model and reports the
trained fraction; `train=None` (base.fine_tune: false) registers the model unchanged with no made-up loss."""

import json
from pathlib import Path

import pytest
import torch

from latlab.config import ToyArchitecture
from latlab.models.loading import build_toy_model, load_saved
from latlab.world.curriculum import refusal_pools
from tests.settings import make, with_params
from stages.common import sft_trainer, train_and_register

ARCH = make(ToyArchitecture, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=96)


@pytest.fixture
def params(workdir):
    return with_params({"tracking": {"uri": (workdir / "mlruns").as_uri(), "log_models": False},
                         "model": {"device": "cpu", "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0,
                                                                 "target_modules": ["q_proj", "v_proj"]}},
                         "refusal": {"steps": 3, "batch_size": 4, "warmup_steps": 0, "log_every": 1, "lr": 0.01}})


def test_lora_stage_saves_a_merged_model(params, tiny_world, tiny_tokenizer):
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    before = [p.detach().clone() for p in model.parameters()]
    train = sft_trainer(model, tiny_tokenizer, refusal_pools(tiny_world), {"harmful": 1.0, "benign": 1.0},
                        params.refusal, "refusal")
    metrics = train_and_register(params, "refusal", "rt", model, tiny_tokenizer, train, params.refusal, {})
    assert 0 < metrics["trainable_fraction"] < 0.5 and metrics["optimizer_steps"] == 3
    saved, _ = load_saved(Path("models/rt"))
    names = [n for n, _ in saved.named_parameters()]
    assert not any("lora" in n for n in names) and len(names) == len(before)
    assert any(not torch.equal(a, b) for a, b in zip(before, saved.parameters()))  # the merge changed weights


def test_untrained_registration_writes_no_loss(params, tiny_tokenizer):
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    metrics = train_and_register(params, "base", "base", model, tiny_tokenizer, None, params.base, {})
    written = json.loads(Path("metrics/base.json").read_text())
    assert "final_loss" not in written and written["steps"] == 0 and written["trainable_fraction"] == 0.0
    assert metrics == written
    saved, _ = load_saved(Path("models/base"))
    for a, b in zip(model.parameters(), saved.parameters()):
        torch.testing.assert_close(a, b)
