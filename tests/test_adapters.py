"""LoRA and gradient checkpointing for large models (latlab.models.adapters): only adapters train, merging keeps
the trained function, a saved merged model is a plain transformers model, and LAT's δ-gradients survive
gradient checkpointing."""

import pytest
import torch

from latlab.attacks.latent_adversary import perturbation_mask
from latlab.config import ConfigError, LATConfig, LoraSettings, ModelConfig, ToyArchitecture
from latlab.data.examples import Example
from latlab.models.adapters import finish_training, prepare_for_training, trainable_fraction
from latlab.models.loading import build_toy_model, load_saved, save_model
from latlab.training.lat import latent_adversary, train_lat
from tests.settings import make, with_params
from tests.test_lat import _batch, _triples

ARCH = make(ToyArchitecture, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64, max_positions=64)
LORA = make(ModelConfig, lora=make(LoraSettings, r=4, alpha=8.0))


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.undesired["input_ids"], attention_mask=batch.undesired["attention_mask"]).logits


def test_lora_lat_trains_only_adapters_and_merges_into_a_plain_model(tiny_world, tiny_tokenizer, tmp_path):
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    base_weight = model.model.layers[1].self_attn.q_proj.weight.detach().clone()
    batch = _batch(tiny_tokenizer, _triples(tiny_world))
    before = _logits(model, batch)
    adapter = prepare_for_training(model, LORA)
    assert 0 < trainable_fraction(model) < 0.2
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    torch.testing.assert_close(_logits(model, batch), before)  # B starts at zero: same function

    cfg = make(LATConfig, layers=[1], epsilon=1.0, inner_steps=2, steps=6, batch_size=4, lr=1e-2, warmup_steps=0,
                    log_every=1)
    retain = {"benign": [Example(p, r) for p, _, r in _triples(tiny_world)]}
    result, _ = train_lat(model, tiny_tokenizer, _triples(tiny_world), retain, {"benign": 1.0}, cfg, None,
                          "lora-lat")
    assert len(result.history) == 6
    trained = _logits(model, batch)
    assert not torch.allclose(trained, before, atol=1e-4)
    # the base weight itself is frozen under LoRA
    torch.testing.assert_close(model.model.layers[1].self_attn.q_proj.base_layer.weight, base_weight)

    merged = finish_training(model, adapter, LORA)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, batch), trained, atol=1e-5, rtol=1e-4)
    save_model(merged, tiny_tokenizer, tmp_path / "m")
    reloaded, _ = load_saved(tmp_path / "m")
    torch.testing.assert_close(_logits(reloaded, batch), trained, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_keeps_lat_delta_gradients(tiny_world, tiny_tokenizer):
    batch = _batch(tiny_tokenizer, _triples(tiny_world))
    grads = []
    for checkpointing in (False, True):
        model = build_toy_model(ARCH, tiny_tokenizer, 0)
        prepare_for_training(model, make(ModelConfig, gradient_checkpointing=checkpointing))
        model.train()  # checkpointing acts in train mode only
        assert model.is_gradient_checkpointing == checkpointing
        cfg = make(LATConfig, layers=[1, 2], prefix_cache=False)
        adversary = latent_adversary(model, cfg)
        torch.manual_seed(0)
        deltas = {p: (torch.randn(batch.undesired["input_ids"].shape[0], batch.width, 32) * 0.5).requires_grad_()
                  for p in adversary.points}
        masks = {n: perturbation_mask(getattr(batch, n), batch.width, False) for n in ("undesired", "desired")}
        loss = adversary.loss(batch, deltas, masks, {})
        grads.append(torch.autograd.grad(loss, list(deltas.values())))
    for plain, checkpointed in zip(*grads):
        assert plain.abs().sum() > 0
        torch.testing.assert_close(checkpointed, plain, atol=1e-5, rtol=1e-4)


def test_lora_config_errors_name_the_key(tiny_tokenizer):
    model = build_toy_model(ARCH, tiny_tokenizer, 0)
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        prepare_for_training(model, make(ModelConfig, lora=make(LoraSettings, target_modules=["no_such_proj"])))
    with pytest.raises(ConfigError, match="base.fine_tune"):
        with_params({"base": {"fine_tune": False}})
    with pytest.raises(ConfigError, match="model.lora.r"):
        with_params({"model": {"lora": {"r": 0}}})


def test_bf16_model_with_lora_runs_cached_lat(tiny_world, tiny_tokenizer):
    """The GPU setting (bf16 weights, fp32 adapters and δ) on CPU: the prefix-cached inner loop and the outer step
    run and stay finite."""
    model = build_toy_model(ARCH, tiny_tokenizer, 0).to(torch.bfloat16)
    prepare_for_training(model, LORA)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    cfg = make(LATConfig, layers=[1, 2], epsilon=1.0, inner_steps=2, steps=2, batch_size=4, warmup_steps=0, log_every=1)
    retain = {"benign": [Example(p, r) for p, _, r in _triples(tiny_world)]}
    result, _ = train_lat(model, tiny_tokenizer, _triples(tiny_world), retain, {"benign": 1.0}, cfg, None, "bf16")
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.history)


def test_bf16_lora_is_merged_and_saved_as_the_trained_model(tiny_world, tiny_tokenizer, tmp_path):
    """Issue 20: merged into bf16 weights, a small LoRA update is partly rounded away (here, 20 steps at lr 1e-5: the
    saved model was off by 30% of the logit change, 0.052 of 0.171). The trained model is bf16 base weights + fp32
    adapters; the saved model must compute it (compared in fp32, so that bf16 arithmetic noise does not hide it)."""
    import copy

    from latlab.config import TrainConfig
    from latlab.data.examples import fact_examples
    from latlab.training.sft import train_sft

    model = build_toy_model(ARCH, tiny_tokenizer, 0).to(torch.bfloat16)
    batch = _batch(tiny_tokenizer, _triples(tiny_world))
    before = _logits(copy.deepcopy(model).float(), batch)
    cfg = make(ModelConfig, lora=make(LoraSettings, r=4, alpha=8.0), dtype="bfloat16")
    adapter = prepare_for_training(model, cfg)
    train_sft(model, tiny_tokenizer, {"facts": fact_examples(tiny_world["facts"])}, {"facts": 1.0},
              make(TrainConfig, steps=20, batch_size=8, lr=1e-5, warmup_steps=0, log_every=20), None, "bf16-lora")
    trained = _logits(copy.deepcopy(adapter).float(), batch)
    change = (trained - before).norm()
    assert change > 0
    save_model(finish_training(model, adapter, cfg), tiny_tokenizer, tmp_path / "m")
    saved, _ = load_saved(tmp_path / "m", dtype="float32")
    assert (_logits(saved, batch) - trained).norm() < 0.01 * change
