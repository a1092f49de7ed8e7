"""The edge-level patched forward (patching.py) against HF and the TransformerLens 4 bridge."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from latlab.interp.graph import CircuitGraph
from latlab.interp.hooks import bridge_cache, make_bridge
from latlab.interp.patching import EdgeModel


@pytest.fixture(scope="module")
def tiny():
    cfg = LlamaConfig(vocab_size=20, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      initializer_range=0.3)  # large weights so that single edges matter
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 20, (3, 7))
    with torch.no_grad():
        hf = model(ids).logits
    return model, ids, hf


def test_graph_counts_edges_of_the_acdc_graph():
    g = CircuitGraph(n_layers=2, n_heads=3)
    # senders: embed + 2 x (3 heads + mlp) = 9; q/k/v of layer-0 heads read embed only
    assert len(g.senders) == 9
    n = 3 * 3 * 1 + 4 + 3 * 3 * 5 + 8 + 9
    assert len(g.edges) == n
    labels = [e.label for e in g.edges]
    assert "embed->a0.0.q" in labels and "a0.2->a1.1.v" in labels and "m1->resid_final" in labels
    assert "a1.0->a1.1.q" not in labels  # heads of one layer do not read each other
    assert g.receivers[-1].hook == "blocks.1.hook_resid_post"


def test_bridge_logits_equal_hf_logits(tiny):
    model, ids, hf = tiny
    bridge = make_bridge(model)
    logits, cache = bridge_cache(bridge, ids, ["blocks.1.hook_q_input", "blocks.0.attn.hook_result"])
    assert torch.allclose(logits, hf, atol=1e-4)
    assert cache["blocks.1.hook_q_input"].shape == (3, 7, 4, 32)  # per-head q input: [batch, pos, head, d_model]
    with torch.no_grad():  # the bridge wrapped a copy: the HF model is untouched
        assert torch.allclose(model(ids).logits, hf)


def test_edge_model_matches_hf_and_bridge_hooks(tiny):
    model, ids, hf = tiny
    em = EdgeModel(model)
    values = em.hook_values(ids)
    assert torch.allclose(values["logits"].float(), hf, atol=1e-4)
    _, cache = bridge_cache(make_bridge(model), ids)
    for name in ["hook_embed", "blocks.0.attn.hook_result", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]:
        assert torch.allclose(values[name].float(), cache[name], atol=1e-4), name


def test_single_edge_patch_matches_bridge_hook_patch(tiny):
    """Removing edge a0.1 -> a1.2.q (zero ablation) = subtracting that head's result from head 2's q input."""
    model, ids, _ = tiny
    em = EdgeModel(model)
    clean, _ = em.clean_run(ids)
    mask = torch.ones(1, em.n_edges, dtype=em.dtype)
    mask[0, em.graph.edge_index()["a0.1->a1.2.q"]] = 0
    ours = em.run(mask, em.ablation("zero", clean), clean)[0]

    bridge = make_bridge(model)
    _, cache = bridge_cache(bridge, ids, ["blocks.0.attn.hook_result"])
    head_out = cache["blocks.0.attn.hook_result"][:, :, 1]

    def patch(x, hook):
        x = x.clone()
        x[:, :, 2] -= head_out
        return x

    with torch.no_grad():
        theirs = bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_q_input", patch)])[:, -1]
    assert torch.allclose(ours.float(), theirs, atol=1e-4)
    assert (ours - clean_logits_last(em, ids)).abs().max() > 1e-2  # the patch did something


def clean_logits_last(em, ids):
    return em.clean_run(ids)[1][:, -1]


def test_edge_model_handles_biases_and_gqa():
    cfg = LlamaConfig(vocab_size=20, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, attention_bias=True, mlp_bias=True, initializer_range=0.3)
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
        ids = torch.randint(0, 20, (2, 6))
        hf = model(ids).logits
    assert torch.allclose(EdgeModel(model).hook_values(ids)["logits"].float(), hf, atol=1e-4)
