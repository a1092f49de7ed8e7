"""Edge-level patched forward pass of a HF Llama model: the engine under ACDC and EAP (Conmy et al. 2023; Syed et
al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery").

Every receiver (a head's q/k/v input, an MLP input, the final residual) reads
    input_r = sum_s  mask[r, s] * out_s(this run)  +  (1 - mask[r, s]) * out_s(ablated)
where out_s(ablated) is the sender's output on the corrupted input (patching), zero, or its mean. mask = 1 keeps an
edge, 0 removes it; masks may be fractional (EAP-IG) and carry gradients (EAP: d metric / d mask = grad . (clean -
ablated) for every edge from one backward pass).

Why hand-written rather than TransformerLens hooks: the TransformerLens 4 bridge (see hooks.py) does expose the right
hook points (`blocks.L.hook_q_input` per head, `blocks.L.attn.hook_result`), and hooks.py uses it to check this
module. But batched ACDC needs (a) a different edge mask for every row of a stacked batch, (b) a forward pass that
starts at layer L from cached clean activations (everything below the receiver being tested is unpatched in reverse
topological order), and (c) per-sender outputs kept apart all the way down. With hooks each of these is a stack of
closures over a full forward from the embeddings (the bridge costs ~5x a plain HF forward on tiny models); written
out, the whole graph is one einsum per receiver group. tests/test_interp_graph.py checks that the hook values and
logits computed here equal the bridge's and HF's.

Shapes: K = stacked mask configurations (candidate edge sets), N = examples, S = senders, T = positions, d = d_model.
GQA models are handled by giving each query head its own copy of its key/value input (the receiver is per query head).
An o_proj bias (absent in Llama) is split evenly over the heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from latlab.interp.graph import CircuitGraph


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class Ablation:
    """Sender outputs that replace a removed edge's contribution; shape [N or 1, S, T, d]."""

    kind: str  # "corrupted" | "zero" | "mean"
    outputs: Tensor

    def per_sender(self, n: int) -> tuple[Tensor, Tensor]:
        """Ablated outputs [S, n, T, d] and their prefix sums over senders [S+1, n, T, d], cached per n."""
        cache = self.__dict__.setdefault("_cache", {})
        if n not in cache:
            corr = self.outputs.expand(n, -1, -1, -1).transpose(0, 1)
            cache[n] = (corr, torch.cat([torch.zeros_like(corr[:1]), corr.cumsum(0)], 0))
        return cache[n]


class EdgeModel:
    """A frozen copy (in `dtype`) of a HF LlamaForCausalLM's weights with an edge-masked forward pass."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float64, answer_position: int = -1):
        cfg = model.config
        if getattr(cfg, "model_type", "") not in ("llama",):
            raise ValueError(f"EdgeModel supports Llama-architecture models, got {cfg.model_type!r}")
        self.cfg, self.dtype, self.answer_position = cfg, dtype, answer_position
        self.n_layers, self.n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.graph = CircuitGraph(self.n_layers, self.n_heads)
        self.eps = cfg.rms_norm_eps
        inner = model.model
        self._rotary = inner.rotary_emb
        self._causal = ~torch.ones(cfg.max_position_embeddings, cfg.max_position_embeddings, dtype=torch.bool).tril()
        group = self.n_heads // cfg.num_key_value_heads
        w = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
        H, dh, d = self.n_heads, self.head_dim, cfg.hidden_size
        self.W_E = w(inner.embed_tokens.weight)
        self.W_U = w(model.lm_head.weight)
        self.ln_final = w(inner.norm.weight)
        self.layers = []
        self._head_params: dict[tuple[int, int], dict] = {}

        def kv(t, shape):  # GQA: one copy of the key/value weights per query head
            return None if t is None else w(t).view(*shape).repeat_interleave(group, 0)

        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            o_bias = None if att.o_proj.bias is None else w(att.o_proj.bias) / H
            self.layers.append(dict(
                ln1=w(layer.input_layernorm.weight), ln2=w(layer.post_attention_layernorm.weight),
                Wq=w(att.q_proj.weight).view(H, dh, d),
                bq=None if att.q_proj.bias is None else w(att.q_proj.bias).view(H, dh),
                Wk=kv(att.k_proj.weight, (-1, dh, d)), bk=kv(att.k_proj.bias, (-1, dh)),
                Wv=kv(att.v_proj.weight, (-1, dh, d)), bv=kv(att.v_proj.bias, (-1, dh)),
                Wo=w(att.o_proj.weight).view(d, H, dh).permute(1, 0, 2), bo=o_bias,  # Wo: [H, d, dh]
                gate=w(mlp.gate_proj.weight), gate_b=w(mlp.gate_proj.bias), up=w(mlp.up_proj.weight),
                up_b=w(mlp.up_proj.bias), down=w(mlp.down_proj.weight), down_b=w(mlp.down_proj.bias), act=mlp.act_fn,
            ))
        # Flat edge layout (graph.edges order): per layer [H, 3(q,k,v), n_attn], then MLP [n_mlp]; final [S].
        self.n_edges = len(self.graph.edges)
        self._attn_slices, self._mlp_slices = [], []
        start = 0
        for layer in range(self.n_layers):
            n = self.graph.attn_prefix(layer)
            self._attn_slices.append(slice(start, start + H * 3 * n))
            start += H * 3 * n
            m = self.graph.mlp_prefix(layer)
            self._mlp_slices.append(slice(start, start + m))
            start += m
        self._final_slice = slice(start, start + len(self.graph.senders))
        assert self._final_slice.stop == self.n_edges

    # -- pieces -------------------------------------------------------------------------------------------------
    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def _rope(self, T: int) -> tuple[Tensor, Tensor]:
        pos = torch.arange(T).unsqueeze(0)
        cos, sin = self._rotary(torch.zeros(1, T, 1, dtype=torch.float32), pos)
        return cos[0].to(self.dtype), sin[0].to(self.dtype)  # [T, dh]

    def _attention(self, p: dict, x: Tensor, rope, q_position: int | None = None) -> Tensor:
        """x: q/k/v inputs [K, H, 3, N, T, d] -> per-head results [K, H, N, T', d]; T' = 1 at q_position if given
        (the last layer only feeds the answer position, so its queries are needed there alone)."""
        cos, sin = rope
        K, H, _, N, T, d = x.shape
        x = self._norm(x, p["ln1"])
        qs = slice(None) if q_position is None else slice(q_position, q_position + 1)
        def proj(xi: Tensor, W: Tensor, b: Tensor | None) -> Tensor:  # [K, H, N, T, d] -> [H, K, N, T, dh]
            out = torch.einsum("khntd,hed->hknte", xi, W)
            return out if b is None else out + b[:, None, None, None, :]

        q = proj(x[:, :, 0, :, qs], p["Wq"], p["bq"])
        k, v = proj(x[:, :, 1], p["Wk"], p["bk"]), proj(x[:, :, 2], p["Wv"], p["bv"])
        q, k = q * cos[qs] + _rotate_half(q) * sin[qs], k * cos + _rotate_half(k) * sin
        scores = q @ k.transpose(-1, -2) * self.head_dim**-0.5  # [H, K, N, T', T]
        pattern = scores.masked_fill(self._causal[qs][:, :T] if q_position is not None else self._causal[:T, :T],
                                     float("-inf")).softmax(-1)
        out = torch.einsum("hknte,hde->khntd", pattern @ v, p["Wo"])
        return out if p["bo"] is None else out + p["bo"]

    def _mlp(self, p: dict, x: Tensor) -> Tensor:
        x = self._norm(x, p["ln2"])
        lin = torch.nn.functional.linear
        return lin(p["act"](lin(x, p["gate"], p["gate_b"])) * lin(x, p["up"], p["up_b"]), p["down"], p["down_b"])

    # -- public -------------------------------------------------------------------------------------------------
    def clean_run(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Unpatched forward: per-sender outputs [N, S, T, d] and logits at all positions [N, T, V]."""
        ones = torch.ones(1, self.n_edges, dtype=self.dtype)
        N, T = ids.shape
        zero = torch.zeros(1, len(self.graph.senders), T, self.W_E.shape[1], dtype=self.dtype)
        embed = self.W_E[ids]
        outs, logits = self._forward(ones, Ablation("zero", zero), embed[:, None], 0, all_positions=True)
        return outs[0], logits[0]

    def ablation(self, kind: str, clean_out: Tensor, corrupted_ids: Tensor | None = None) -> Ablation:
        if kind == "corrupted":
            if corrupted_ids is None:
                raise ValueError("corrupted-input patching needs corrupted_ids")
            return Ablation(kind, self.clean_run(corrupted_ids)[0])
        if kind == "zero":
            return Ablation(kind, torch.zeros_like(clean_out[:1]))
        if kind == "mean":
            return Ablation(kind, clean_out.mean(0, keepdim=True))
        raise ValueError(f"unknown ablation {kind!r}: expected corrupted, zero or mean")

    def run(self, masks: Tensor, ablation: Ablation, clean_out: Tensor, start_stage: int = 0,
            vary_head: int | None = None) -> Tensor:
        """Patched logits at the answer position, [K, N, V], for masks [K, E].

        start_stage = 2*L starts at layer L's attention, 2*L+1 at its MLP, 2*n_layers at the final residual; every
        sender before it is taken from clean_out [N, S, T, d], which is exact when no edge into an earlier receiver
        is removed (true at every step of ACDC's reverse topological sweep).
        vary_head = h (with an attention start stage) promises that the K rows differ only in head h's q/k/v masks
        at that layer: the other heads of the layer are then computed once and broadcast.
        """
        return self._forward(masks, ablation, clean_out, start_stage, vary_head=vary_head)[1]

    def _forward(self, masks, ablation, prefix_out, start_stage, all_positions=False, vary_head=None):
        K = masks.shape[0]
        N, _, T, d = prefix_out.shape
        S, H = len(self.graph.senders), self.n_heads
        corr, corr_cum = ablation.per_sender(N)  # [S, N, T, d], [S+1, N, T, d]
        # Sender outputs minus their ablated values: senders before the start stage are shared by all K rows
        # ("pre", [p, N, T, d], never copied K times); the rest are computed per row (list "new" of [K, N, T', d]).
        # A list, not one preallocated tensor, so that autograd (EAP) never sees an in-place write.
        p = self._prefix_senders(start_stage)
        pre = prefix_out[:, :p].transpose(0, 1) - corr[:p]
        new: list[Tensor] = []

        def mix(m: Tensor, n: int, pos=slice(None)) -> Tensor:
            """Receiver inputs for masks m [k, r, n] over the first n senders -> [k, r, N, T', d]."""
            k, r = m.shape[:2]
            q = min(n, p)
            pv = pre[:q, :, pos]
            out = (m[:, :, :q].reshape(k * r, q) @ pv.reshape(q, -1)).view(k, r, *pv.shape[1:])
            if n > p:
                nv = torch.stack([t[:k] if t.dim() == 3 else t[:k, :, pos] for t in new[: n - p]], 1)
                out = out + (m[:, :, p:n] @ nv.reshape(k, n - p, -1)).view(k, r, *nv.shape[2:])
            return out + corr_cum[n, :, pos]

        rope = self._rope(T)
        a = self.answer_position % T
        for layer in range(self.n_layers):
            n, mi, par = self.graph.attn_prefix(layer), self.graph.mlp_prefix(layer), self.layers[layer]
            # Past the last attention only the answer position is read, so the last layer computes queries and its
            # MLP there alone (T' = 1).
            qpos = a if (layer == self.n_layers - 1 and not all_positions) else None
            at = slice(None) if qpos is None else a
            one = (lambda r, dim: r) if qpos is None else (lambda r, dim: r.squeeze(dim))  # noqa: E731
            if 2 * layer >= start_stage:
                attn_masks = masks[:, self._attn_slices[layer]].reshape(K, H, 3, n)
                if vary_head is not None and 2 * layer == start_stage and K > 1:
                    x = mix(attn_masks[:1].reshape(1, H * 3, n), n).view(1, H, 3, N, T, d)
                    res = one(self._attention(par, x, rope, qpos), 3).expand(K, *([-1] * (4 if qpos is None else 3)))
                    x = mix(attn_masks[:, vary_head], n).view(K, 1, 3, N, T, d)
                    res_h = one(self._attention(self._one_head(layer, vary_head), x, rope, qpos)[:, 0], 2)
                    res = [res_h if h == vary_head else res[:, h] for h in range(H)]
                else:
                    x = mix(attn_masks.reshape(K, H * 3, n), n).view(K, H, 3, N, T, d)
                    res = one(self._attention(par, x, rope, qpos), 3).unbind(1)
                new.extend(r - corr[n + h, :, at] for h, r in enumerate(res))
            if 2 * layer + 1 >= start_stage:
                x = mix(masks[:, None, self._mlp_slices[layer]], mi, at)[:, 0]
                new.append(self._mlp(par, x) - corr[mi, :, at])
        m = masks[:, None, self._final_slice]  # [K, 1, S]
        x = mix(m, S, slice(None) if all_positions else a)[:, 0]  # [K, N, (T,) d]
        logits = self._norm(x, self.ln_final) @ self.W_U.T
        outs = None
        if all_positions:  # the clean run: every sender's output, [K, N, S, T, d]
            outs = (torch.cat([pre.expand(K, -1, -1, -1, -1), torch.stack(new, 1)], 1) + corr).transpose(1, 2)
        return outs, logits

    def _one_head(self, layer: int, head: int) -> dict:
        key = (layer, head)
        if key not in self._head_params:
            p = self.layers[layer]
            sl = slice(head, head + 1)
            self._head_params[key] = {k: (v[sl] if k in ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo") and v is not None
                                          else v) for k, v in p.items()}
        return self._head_params[key]

    def _prefix_senders(self, start_stage: int) -> int:
        layer, is_mlp = divmod(start_stage, 2)
        if layer >= self.n_layers:
            return len(self.graph.senders)
        return self.graph.mlp_prefix(layer) if is_mlp else self.graph.attn_prefix(layer)

    def stage_of(self, receiver) -> int:
        if receiver.kind == "final":
            return 2 * self.n_layers
        return 2 * receiver.layer + (1 if receiver.kind == "mlp" else 0)

    def hook_values(self, ids: Tensor) -> dict[str, Tensor]:
        """Unpatched activations under TransformerLens hook names, for checking against the bridge."""
        outs, logits = self.clean_run(ids)
        g, values = self.graph, {"hook_embed": outs[:, 0], "logits": logits}
        resid = outs[:, 0]
        for layer in range(self.n_layers):
            a = g.attn_prefix(layer)
            values[f"blocks.{layer}.attn.hook_result"] = outs[:, a:a + self.n_heads].transpose(1, 2)  # [N, T, H, d]
            values[f"blocks.{layer}.hook_mlp_out"] = outs[:, g.mlp_prefix(layer)]
            resid = outs[:, : g.mlp_prefix(layer) + 1].sum(1)
            values[f"blocks.{layer}.hook_resid_post"] = resid
        return values


MetricFn = Callable[[Tensor], Tensor]  # patched logits [K, N, V] -> loss per configuration [K] (lower is better)


def kl_metric(clean_logits: Tensor) -> MetricFn:
    """KL(clean || patched) at the answer position, averaged over examples: ACDC's default metric."""
    clean_logp = clean_logits.log_softmax(-1)  # [N, V]

    def metric(logits: Tensor) -> Tensor:
        logp = logits.log_softmax(-1)
        return (clean_logp.exp() * (clean_logp - logp)).sum(-1).mean(-1)

    return metric


def label_nll_metric(labels: Tensor) -> MetricFn:
    """Mean negative log-probability of `labels` [N] (e.g. the clean model's top token): a task metric with a
    non-zero gradient at the clean point, which EAP needs (KL's gradient there is zero)."""

    def metric(logits: Tensor) -> Tensor:
        return -logits.log_softmax(-1).gather(-1, labels.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(-1)

    return metric


def logit_diff_metric(correct: Tensor, wrong: Tensor) -> MetricFn:
    """Negative mean logit difference (correct - wrong): lower is better, like the other metrics."""

    def metric(logits: Tensor) -> Tensor:
        K = logits.shape[0]
        pick = lambda ids: logits.gather(-1, ids.expand(K, -1).unsqueeze(-1)).squeeze(-1)  # noqa: E731
        return -(pick(correct) - pick(wrong)).mean(-1)

    return metric
