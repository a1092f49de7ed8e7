"""Tiny HF LlamaForCausalLM models with a hand-planted circuit whose edges are known: ground truth for ACDC/EAP.

Beside the tracr-compiled programs (latlab.interp.tracr: ground truth nobody here wrote, but no distractors at all),
this model has distractors, which is what a method must discriminate: the tracr task "fraction of previous tokens"
(frac_prevs) planted by hand into the Llama architecture the pipeline trains, composed with a content-addressed
lookup so that q, k and v inputs, MLPs and a two-layer path all occur in the circuit, among heads and MLPs that are
no part of it.

Task. Tokens: X (=1), Z (=2), fillers. Each sequence holds exactly one Z. The output at the last position is a
smooth function of "the fraction of X tokens up to and including the Z" (read out through the unembedding).
Circuit (7 edges):
    embed -> a0.0.v      head 0.0 attends uniformly (W_q = 0) and averages "is X" into feature F1   (frac_prevs)
    embed -> m0          MLP 0 turns "is Z" into feature F2 (a SwiGLU unit)
    embed -> a1.0.q      head 1.0's query reads "any token" (constant 1) ...
    m0    -> a1.0.k      ... and its key reads F2, so every position attends to the Z
    a0.0  -> a1.0.v      ... and copies F1 at the Z into F3
    a1.0  -> m1          MLP 1 maps F3 to F4 = silu(10 F3) F3 / 10
    m1    -> resid_final the unembedding reads F4 only
Every other head and MLP is a distractor with random weights: it reads the token and circuit-feature dimensions
(so edges from circuit components into distractors carry real signal) and writes only into distractor dimensions that
nothing reads; reading only bounded dimensions keeps the residual stream O(1) at any depth. With these "isolated"
distractors every edge out of a distractor has effect 0, so the circuit is separable by construction: any method
that measures an edge's effect at all gets AUC 1.0.

Distractors that must be discriminated (`leak`, `cancelling_pair`), the situations of real circuits:
- leak: every distractor also writes leak x (random weights) into the circuit features F1..F4, which circuit
  components and the unembedding read, so its edges into them matter weakly (next to the circuit's edges);
- cancelling_pair: heads 0.1 and 0.2 are one random head and its negative (same q, k, v; opposite output), writing
  also into F4 at full scale. Together they add exactly 0, so they are no part of the mechanism, but removing either
  one alone changes the output more than most circuit edges (as negative / backup heads do in IOI). A method that
  judges one edge at a time (ACDC's greedy step, EAP's linearisation) must keep them: false positives by design.

Tricks that keep the circuit exact in Llama: rms_norm_eps = 1e8 with norm weights 1e4 makes every RMSNorm the identity
to ~1e-8 (residual entries are O(1)); q/k live in the lowest-frequency RoPE pair with rope_theta = 1e10, so the
lookup is content-only. Under corrupted-input patching the edge embed -> a1.0.q is not identifiable (its input is
the same constant on every input), so the ground truth is stated for zero ablation, as in the ACDC paper's tracr
experiments; `circuit_edges(ablation="corrupted")` drops it.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from latlab.interp.graph import CircuitGraph

X_TOKEN, Z_TOKEN = 1, 2
VOCAB = 16
F1, F2, F3, F4 = VOCAB, VOCAB + 1, VOCAB + 2, VOCAB + 3
FIRST_DISTRACTOR_DIM = VOCAB + 4

GROUND_TRUTH_EDGES = ["embed->a0.0.v", "embed->m0", "embed->a1.0.q", "m0->a1.0.k", "a0.0->a1.0.v", "a1.0->m1",
                      "m1->resid_final"]

# planted_circuit_model's arguments per kind of distractor. "read": a leak of a tenth of the distractors' own scale
# gives distractor edges effects up to about 1/10 of the weakest circuit edge's (single-edge KL at most 1.1e-2 against
# 1.1e-1, 32 examples, zero ablation): small next to the circuit but not zero. The cancelling pair adds two heads that
# matter only one at a time.
DISTRACTORS = {"isolated": {}, "read": {"leak": 0.1, "cancelling_pair": True}}


def planted_circuit_model(n_layers: int = 3, n_heads: int = 4, hidden: int = 64, head_dim: int = 16,
                          seed: int = 0, distractor_scale: float = 1.0, leak: float = 0.0,
                          cancelling_pair: bool = False) -> LlamaForCausalLM:
    """The planted-circuit Llama (module docstring): vocabulary VOCAB, residual width `hidden`; distractors isolated
    (defaults) or read downstream (`leak` > 0: they write leak x random weights into F1..F4; `cancelling_pair`:
    heads 0.1 and 0.2 cancel exactly, each alone moving F4)."""
    if n_layers < 2 or n_heads < 1 or hidden < FIRST_DISTRACTOR_DIM + 4:
        raise ValueError("need n_layers >= 2, n_heads >= 1, hidden >= 24")
    if cancelling_pair and n_heads < 3:
        raise ValueError("a cancelling pair needs heads 0.1 and 0.2: n_heads >= 3")
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=4 * hidden // 2,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
                      head_dim=head_dim, max_position_embeddings=64, rms_norm_eps=1e8, rope_theta=1e10,
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    dist = torch.arange(FIRST_DISTRACTOR_DIM, hidden)  # dims only distractors write
    reads = FIRST_DISTRACTOR_DIM  # distractors read tokens and circuit features (bounded), never each other

    def rand(*shape: int) -> torch.Tensor:  # fan-in scaled so that distractors do not blow up the residual stream
        return torch.randn(*shape, generator=gen) * distractor_scale / shape[-1] ** 0.5

    slow = head_dim // 2 - 1  # lowest-frequency rotary pair: dims (slow, slow + head_dim/2)
    inner = model.model
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        inner.embed_tokens.weight[:, :VOCAB] = torch.eye(VOCAB)
        inner.norm.weight.fill_(1e4)
        for li, layer in enumerate(inner.layers):
            layer.input_layernorm.weight.fill_(1e4)
            layer.post_attention_layernorm.weight.fill_(1e4)
            att, mlp = layer.self_attn, layer.mlp
            for h in range(n_heads):
                rows = slice(h * head_dim, (h + 1) * head_dim)
                if (li, h) == (0, 0):  # uniform attention (q = 0), averages "is X" into F1
                    att.v_proj.weight[h * head_dim, X_TOKEN] = 1.0
                    att.o_proj.weight[F1, h * head_dim] = 1.0
                elif (li, h) == (1, 0):  # content lookup of the Z position, copies F1 there into F3
                    att.q_proj.weight[h * head_dim + slow, :VOCAB] = 40.0
                    att.k_proj.weight[h * head_dim + slow, F2] = 1.0
                    att.v_proj.weight[h * head_dim, F1] = 1.0
                    att.o_proj.weight[F3, h * head_dim] = 1.0
                else:  # distractor: reads everything, writes distractor dims only
                    att.q_proj.weight[rows, :reads] = rand(head_dim, reads)
                    att.k_proj.weight[rows, :reads] = rand(head_dim, reads)
                    att.v_proj.weight[rows, :reads] = rand(head_dim, reads)
                    att.o_proj.weight[dist, rows] = rand(len(dist), head_dim)
                    if leak:  # drawn only when asked, so that the isolated model keeps its weights
                        att.o_proj.weight[F1:F4 + 1, rows] = leak * rand(4, head_dim)
            if li == 0:  # SwiGLU unit: silu(10 z) * z / silu(10) = "is Z"
                mlp.gate_proj.weight[0, Z_TOKEN] = 10.0
                mlp.up_proj.weight[0, Z_TOKEN] = 1.0
                mlp.down_proj.weight[F2, 0] = 1.0 / torch.nn.functional.silu(torch.tensor(10.0))
            elif li == 1:
                mlp.gate_proj.weight[0, F3] = 10.0
                mlp.up_proj.weight[0, F3] = 1.0
                mlp.down_proj.weight[F4, 0] = 0.1
            else:
                mlp.gate_proj.weight[:, :reads] = rand(mlp.gate_proj.weight.shape[0], reads)
                mlp.up_proj.weight[:, :reads] = rand(mlp.up_proj.weight.shape[0], reads)
                mlp.down_proj.weight[dist] = rand(len(dist), mlp.down_proj.weight.shape[1])
                if leak:
                    mlp.down_proj.weight[F1:F4 + 1] = leak * rand(4, mlp.down_proj.weight.shape[1])
        model.lm_head.weight[:, F4] = torch.linspace(-8.0, 8.0, VOCAB)
        if cancelling_pair:
            att, one, two = inner.layers[0].self_attn, slice(head_dim, 2 * head_dim), slice(2 * head_dim, 3 * head_dim)
            att.o_proj.weight[F4, one] = rand(1, head_dim)[0] * head_dim ** 0.5  # unit weights: F4 moves by O(1)
            for proj in (att.q_proj, att.k_proj, att.v_proj):
                proj.weight[two] = proj.weight[one]
            att.o_proj.weight[:, two] = -att.o_proj.weight[:, one]
    return model


def planted_dataset(n: int = 32, seq_len: int = 8, seed: int = 0, x_prob: float = 0.4) -> torch.Tensor:
    """[n, seq_len] token ids: fillers and X's, and one Z at a random position."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, size=(n, seq_len))
    ids[rng.random((n, seq_len)) < x_prob] = X_TOKEN
    ids[np.arange(n), rng.integers(0, seq_len, size=n)] = Z_TOKEN
    return torch.as_tensor(ids)


def circuit_edges(ablation: str = "zero") -> list[str]:
    return [e for e in GROUND_TRUTH_EDGES if not (ablation == "corrupted" and e == "embed->a1.0.q")]


def truth_mask(graph: CircuitGraph, ablation: str = "zero") -> np.ndarray:
    """[E] bool over graph.edges."""
    truth = set(circuit_edges(ablation))
    mask = np.array([e.label in truth for e in graph.edges])
    assert mask.sum() == len(truth), "ground-truth edge missing from the graph"
    return mask
