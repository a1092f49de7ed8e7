"""Linear probes find a planted signal and nothing where there is none."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from latlab.interp.probes import probe_accuracy, probe_layers
from latlab.models.hooks import collect_residuals


def tiny_llama() -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_probe_finds_planted_direction_and_not_noise():
    rng = np.random.default_rng(0)
    n, d = 400, 32
    y = rng.integers(0, 2, n)
    direction = rng.normal(size=d)
    X = rng.normal(size=(n, d)) + np.outer(2 * y - 1, direction) * 0.5
    assert probe_accuracy(X, y) > 0.9
    assert probe_accuracy(rng.normal(size=(n, d)), y) < 0.65


def test_probe_per_layer_on_model_residuals():
    """The last token's identity is linearly readable from the residual stream at every layer."""
    model = tiny_llama()
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(3, 12, size=5)) + [int(label) + 1] for label in rng.integers(0, 2, 120)]
    texts = [" ".join(map(str, s)) for s in seqs]
    labels = [s[-1] - 1 for s in seqs]
    acts = collect_residuals(model, lambda t: [int(w) for w in t.split()], texts, layers=[0, 1])
    assert acts[0].shape == (120, 16)
    accs = probe_layers(acts, labels)
    assert min(accs.values()) > 0.95
    shuffled = probe_layers(acts, rng.permutation(labels))
    assert max(shuffled.values()) < 0.8


def test_batched_residuals_are_each_text_s_own_at_any_length():
    """Texts of different lengths in one right-padded batch read the same activations as one at a time."""
    model = tiny_llama()
    rng = np.random.default_rng(2)
    texts = [" ".join(map(str, rng.integers(3, 12, size=n))) for n in rng.integers(2, 9, 20)]
    encode = lambda t: [int(w) for w in t.split()]  # noqa: E731
    for position in (-1, -2, 0, 1):
        one = collect_residuals(model, encode, texts, [0, 1], position, batch_size=1)
        batched = collect_residuals(model, encode, texts, [0, 1], position, batch_size=7)
        for layer in (0, 1):
            np.testing.assert_allclose(batched[layer], one[layer], atol=1e-5)
    last = collect_residuals(model, encode, texts[:1], [0], batch_size=1)[0][0]
    whole = model(torch.tensor([encode(texts[0])]), output_hidden_states=True).hidden_states[1][0, -1]
    np.testing.assert_allclose(last, whole.detach().numpy(), atol=1e-5)  # block 0's output, last token
    with pytest.raises(IndexError, match="position 9"):
        collect_residuals(model, encode, texts, [0], 9)
