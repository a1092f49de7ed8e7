"""Refusal-direction ablation on a tiny refusal-trained model: the ablation raises the attack success rate, and the
projection really removes the direction from the residual stream."""

import pytest
import torch

from latlab.attacks.direct import direct_attack
from latlab.attacks.refusal_direction import ablate_direction, refusal_direction_attack
from latlab.config import RefusalDirectionConfig
from latlab.evals.judge import COMPLIED, ToyJudge
from latlab.models.hooks import capture_residual, resid_name
from tests.settings import make
from tests.conftest import TINY_ARCH


def _asr(requests, completions):
    judge = ToyJudge()
    return sum(judge.label(r, c) == COMPLIED for r, c in zip(requests, completions)) / len(requests)


def test_ablation_raises_asr_on_the_refusal_trained_model(tiny_world, tiny_tokenizer, tiny_rt_model):
    test = [r for r in tiny_world["requests"] if r["split"] == "test" and r["harmful"]]
    train = [r for r in tiny_world["requests"] if r["split"] == "train"]
    direct = _asr(test, direct_attack(tiny_rt_model, tiny_tokenizer, test).completions)
    attacked = refusal_direction_attack(tiny_rt_model, tiny_tokenizer, test, make(RefusalDirectionConfig),
                                        support=train)
    assert direct <= 0.2  # the model does refuse
    assert _asr(test, attacked.completions) > direct + 0.2
    assert attacked.metadata["layer_scores"][attacked.metadata["layer"]] < attacked.metadata["refusal_score_clean"]


def test_ablation_projects_the_direction_out(tiny_tokenizer, tiny_model):
    direction = torch.randn(tiny_model.config.hidden_size)
    ids = torch.tensor([[5, 6, 7, 8]])
    names = [resid_name(i) for i in range(TINY_ARCH.num_layers)]
    with torch.no_grad(), ablate_direction(tiny_model, direction), capture_residual(tiny_model, names) as store:
        tiny_model(input_ids=ids)
    for name in names:
        assert (store[name] @ (direction / direction.norm())).abs().max() < 1e-4


def test_needs_harmless_prompts(tiny_world, tiny_tokenizer, tiny_model):
    harmful_only = [r for r in tiny_world["requests"] if r["split"] == "train" and r["harmful"]]
    with pytest.raises(ValueError, match="harmless"):
        refusal_direction_attack(tiny_model, tiny_tokenizer, harmful_only[:2], make(RefusalDirectionConfig),
                                 support=harmful_only)
