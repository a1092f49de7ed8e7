"""Circuit ground truth nobody here planted: programs compiled by tracr (Lindner et al. 2023, "Tracr: Compiled
Transformers as a Laboratory for Interpretability"), the ACDC paper's tracr tasks (Conmy et al. 2023, §4.2: edge AUC
1.0 with zero ablation), converted exactly into the Llama form that EdgeModel, ACDC, EAP and EAP-IG run on.

The compiled weights are committed (`tracr_models/<program>.safetensors`, a few kB, sha256 in the card, checked on
load); `scripts/compile_tracr.py` made them with tracr in its own environment (jax and dm-haiku are not project
dependencies). Programs: `frac_prevs` (fraction of previous "x" tokens, numerical output, 2 layers) and `reverse`
(sequence reversal, categorical output, 4 layers).

Why a conversion rather than a second engine: the circuit code is one edge-masked forward pass (patching.py) that
ACDC, EAP and EAP-IG share; tracr's differences from Llama each have an exact (to float precision) Llama equivalent,
so the same code runs on both and nothing is copied:
- biases (tracr has them on q, k, v, o and both MLP layers): `attention_bias` and `mlp_bias`;
- no layer norm: RMSNorm with eps 1e16 and weight 1e8 is the identity (mean(x^2) of these residuals is below 1:
  at most 0.36 and 0.17 on 64 inputs);
- ReLU MLPs: SwiGLU `down(silu(gate x) * up x)` with gate = K (W1 x + b1) and up = 1/K (its bias alone), so the
  hidden unit is silu(K z) / K = z sigmoid(K z), ReLU to within |z| e^(-K|z|), K = 1e6;
- absolute position embeddings: one input id per (token, position), embedded as token + position embedding
  (`encode` builds the ids);
- no rotary embedding: q and k sit in the slowest rotary pairs of a wider head with rope_theta 1e30, where the
  rotation angle, at most theta^(-2 pad / head_dim) x position, stays below 1e-11 (5e-12 for reverse); q is scaled
  by sqrt(head_dim / key_size) so the softmax sees tracr's 1/sqrt(key_size) scaling;
- bidirectional attention (reverse reads later positions): `config.is_causal = False`, which EdgeModel honours.
  transformers 5 reads the same flag, so HF's own `forward` of the converted model matches tracr too.
- the output: a categorical program's unembedding reads its output space (one row per value, scale 10); a
  numerical one's two rows read +/- 10 x the output value, so KL from the clean model measures the value's change.

Ground truth (`truth_mask`): an edge is in the circuit when its sender writes a residual direction its receiver reads
(non-zero weights on both sides; tracr's residual stream is a direct sum of labelled directions), which is the
compiled program's data flow. Under zero ablation, the ablation of the ACDC paper's tracr experiments, every such edge
carries signal on inputs that exercise it. The circuit tasks use sequences one shorter than max_seq_len, answer at
the last position: at full length, reverse's length head (a0.0, selector width) outputs exactly what its zero
ablation gives (the encoding of the largest length), so its edges carry no signal there and no method could find
them (measured: edge AUC 0.81 for ACDC at full length, single-edge effects of exactly 0).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

MODELS_DIR = Path(__file__).with_name("tracr_models")
PROGRAMS = ("frac_prevs", "reverse")
RELU_SHARPNESS = 1e6  # K above
NORM_EPS, NORM_WEIGHT = 1e16, 1e8
ROPE_THETA = 1e30
ROTARY_PAD = 8  # head_dim = 2 (key_size + pad): q/k in rotary pairs pad .. pad + key_size - 1 of head_dim / 2
OUTPUT_SCALE = 10.0


@dataclass(frozen=True)
class TracrProgram:
    name: str
    card: dict
    tensors: dict[str, np.ndarray]

    @property
    def d_model(self) -> int:
        return len(self.card["residual_labels"])

    @property
    def n_positions(self) -> int:  # BOS + max_seq_len
        return self.card["max_seq_len"] + 1

    @cached_property
    def output_rows(self) -> np.ndarray:
        """[n_out, d_model] unembedding rows (see the module docstring)."""
        labels = self.card["residual_labels"]
        space = [labels.index(label) for label in self.card["output_space"]]
        rows = np.zeros((len(space) if self.card["output"]["kind"] == "categorical" else 2, len(labels)))
        if self.card["output"]["kind"] == "categorical":
            rows[np.arange(len(space)), space] = OUTPUT_SCALE
        else:
            rows[0, space[0]], rows[1, space[0]] = OUTPUT_SCALE, -OUTPUT_SCALE
        return rows


def load_program(name: str, directory: Path = MODELS_DIR) -> TracrProgram:
    """The compiled program `name`; ValueError naming the file when its sha256 differs from the card's."""
    from safetensors.numpy import load_file

    if name not in PROGRAMS:
        raise ValueError(f"unknown tracr program {name!r}; expected one of {', '.join(PROGRAMS)}")
    card = json.loads((directory / f"{name}.json").read_text())
    path = directory / f"{name}.safetensors"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != card["sha256"]:
        raise ValueError(f"{path}: sha256 {digest} differs from {name}.json's {card['sha256']} "
                         "(recompile with scripts/compile_tracr.py)")
    return TracrProgram(name, card, load_file(str(path)))


def encode(program: TracrProgram, sequences: list[list[str]]) -> torch.Tensor:
    """[N, 1 + length] input ids (BOS first) of token sequences of one length <= max_seq_len: id = token x positions
    + position, the (token, position) pairs whose embedding `tracr_llama` sets to token + position embedding."""
    encoding, n_pos = program.card["input_encoding"], program.n_positions
    rows = []
    for seq in sequences:
        if not 1 <= len(seq) <= program.card["max_seq_len"] or len(seq) != len(sequences[0]):
            raise ValueError(f"tracr {program.name}: sequences of one length 1-{program.card['max_seq_len']} "
                             f"(no padding), got {seq}")
        tokens = [program.card["bos"], *seq]
        rows.append([encoding[t] * n_pos + p for p, t in enumerate(tokens)])
    return torch.tensor(rows)


def random_sequences(program: TracrProgram, n: int, seed: int, length: int | None = None) -> list[list[str]]:
    """n sequences of `length` (default max_seq_len - 1, see the module docstring) drawn uniformly from the program's
    vocabulary (BOS and pad excluded)."""
    vocab = sorted(t for t in program.card["input_encoding"] if t not in (program.card["bos"], "compiler_pad"))
    rng = np.random.default_rng(seed)
    length = program.card["max_seq_len"] - 1 if length is None else length
    return [[vocab[i] for i in rng.integers(0, len(vocab), length)] for _ in range(n)]


def tracr_llama(program: TracrProgram):
    """A LlamaForCausalLM (float64) computing what the compiled program computes (module docstring); its logits at
    a position are `output_rows @ final residual`, in the first rows of the vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    card, t = program.card, {k: torch.from_numpy(v).double() for k, v in program.tensors.items()}
    d, heads, ks, n_pos = program.d_model, card["num_heads"], card["key_size"], program.n_positions
    head_dim = 2 * (ks + ROTARY_PAD)
    n_tokens = len(card["input_encoding"])
    cfg = LlamaConfig(vocab_size=n_tokens * n_pos, hidden_size=d, intermediate_size=card["mlp_hidden_size"],
                      num_hidden_layers=card["num_layers"], num_attention_heads=heads, num_key_value_heads=heads,
                      head_dim=head_dim, max_position_embeddings=n_pos, rms_norm_eps=NORM_EPS,
                      rope_theta=ROPE_THETA, hidden_act="silu", attention_bias=True, mlp_bias=True,
                      tie_word_embeddings=False)
    cfg.is_causal = card["causal"]
    model = LlamaForCausalLM(cfg).double().eval()
    q_scale = (head_dim / ks) ** 0.5
    slots = torch.cat([h * head_dim + ROTARY_PAD + torch.arange(ks) for h in range(heads)])  # [heads * ks]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        inner = model.model
        # id = token * n_pos + position
        inner.embed_tokens.weight.copy_((t["token_embed"][:, None, :] + t["pos_embed"][None, :, :]).reshape(-1, d))
        inner.norm.weight.fill_(NORM_WEIGHT)
        model.lm_head.weight[: len(program.output_rows)] = torch.from_numpy(program.output_rows)
        for layer, block in enumerate(inner.layers):
            block.input_layernorm.weight.fill_(NORM_WEIGHT)
            block.post_attention_layernorm.weight.fill_(NORM_WEIGHT)
            att, mlp, pre = block.self_attn, block.mlp, f"layer_{layer}"
            for proj, key, scale in ((att.q_proj, "query", q_scale), (att.k_proj, "key", 1.0),
                                     (att.v_proj, "value", 1.0)):
                proj.weight[slots] = scale * t[f"{pre}.attn.{key}.w"].T  # tracr w: [d, heads * ks]
                proj.bias[slots] = scale * t[f"{pre}.attn.{key}.b"]
            att.o_proj.weight[:, slots] = t[f"{pre}.attn.linear.w"].T  # tracr: [heads * ks, d]
            att.o_proj.bias.copy_(t[f"{pre}.attn.linear.b"])
            mlp.gate_proj.weight.copy_(RELU_SHARPNESS * t[f"{pre}.mlp.linear_1.w"].T)
            mlp.gate_proj.bias.copy_(RELU_SHARPNESS * t[f"{pre}.mlp.linear_1.b"])
            mlp.up_proj.bias.fill_(1.0 / RELU_SHARPNESS)
            mlp.down_proj.weight.copy_(t[f"{pre}.mlp.linear_2.w"].T)
            mlp.down_proj.bias.copy_(t[f"{pre}.mlp.linear_2.b"])
    return model


def truth_mask(program: TracrProgram, graph) -> np.ndarray:
    """[E] bool over graph.edges: the sender writes a residual direction the receiver reads (module docstring)."""
    t, heads, ks = program.tensors, program.card["num_heads"], program.card["key_size"]

    def nonzero(a: np.ndarray, axis: int) -> np.ndarray:  # [d] bool: directions a reads (axis 1) or writes (axis 0)
        return np.abs(a).max(axis=axis) > 0 if a.size else np.zeros(a.shape[1 - axis], dtype=bool)

    def cols(h: int) -> slice:
        return slice(h * ks, (h + 1) * ks)

    embed = (np.abs(t["token_embed"]).max(0) > 0) | (np.abs(t["pos_embed"]).max(0) > 0)

    def writes(sender) -> np.ndarray:
        if sender.kind == "embed":
            return embed
        pre = f"layer_{sender.layer}"
        if sender.kind == "head":  # its share of the output bias is written whatever the input: counted too
            return nonzero(t[f"{pre}.attn.linear.w"][cols(sender.head)], 0) | (t[f"{pre}.attn.linear.b"] != 0)
        return nonzero(t[f"{pre}.mlp.linear_2.w"], 0) | (t[f"{pre}.mlp.linear_2.b"] != 0)

    def reads(receiver) -> np.ndarray:
        if receiver.kind == "final":
            return nonzero(program.output_rows, 0)
        pre = f"layer_{receiver.layer}"
        if receiver.kind == "mlp":
            return nonzero(t[f"{pre}.mlp.linear_1.w"], 1)
        key = {"q": "query", "k": "key", "v": "value"}[receiver.kind]
        return nonzero(t[f"{pre}.attn.{key}.w"][:, cols(receiver.head)], 1)

    return np.array([bool((writes(e.sender) & reads(e.receiver)).any()) for e in graph.edges])
