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
topological order), (c) per-sender outputs kept apart all the way down, and (d) to compute once what every row shares
and not at all what no kept edge reads (`run_removals`). With hooks each of these is a stack of closures over a full
forward from the embeddings (the bridge costs ~5x a plain HF forward on tiny models); written out, the whole graph is
one einsum per receiver group. tests/test_interp_graph.py checks that the hook values and logits computed here equal
the bridge's and HF's; tests/test_interp_acdc.py that `run_removals` equals one full forward per row.

Shapes: K = stacked mask configurations (candidate edge sets), N = examples, S = senders, T = positions, d = d_model.
GQA models are handled by giving each query head its own copy of its key/value input (the receiver is per query head).
An o_proj bias (absent in Llama) is split evenly over the heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from latlab.interp.graph import CircuitGraph, Receiver


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

    def deltas(self, sender_out: Tensor) -> Tensor:
        """sender_out [N, S', T, d] minus the ablated outputs, as [S', N, T, d]; cached for the last sender_out seen,
        which batched ACDC passes on every call."""
        last = self.__dict__.get("_deltas")
        if last is None or last[0] is not sender_out:
            n, s = sender_out.shape[:2]
            last = self.__dict__["_deltas"] = (sender_out, sender_out.transpose(0, 1) - self.per_sender(n)[0][:s])
        return last[1]


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
        self.device = inner.embed_tokens.weight.device
        # True above the diagonal: the positions a query may not read. `is_causal = False` (tracr's compiled models,
        # latlab.interp.tracr) lets every position read every other.
        self._causal = ~torch.ones(cfg.max_position_embeddings, cfg.max_position_embeddings, dtype=torch.bool,
                                   device=self.device).tril(0 if getattr(cfg, "is_causal", True) else
                                                            cfg.max_position_embeddings)
        group = self.n_heads // cfg.num_key_value_heads
        w = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
        H, dh, d = self.n_heads, self.head_dim, cfg.hidden_size
        self.W_E = w(inner.embed_tokens.weight)
        self.W_U = w(model.lm_head.weight)
        self.ln_final = w(inner.norm.weight)
        self.layers = []
        self._head_params: dict[tuple[int, tuple[int, ...]], dict] = {}

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
        return torch.nn.functional.rms_norm(x, weight.shape, weight, self.eps)

    def _rope(self, T: int) -> tuple[Tensor, Tensor]:
        cache = self.__dict__.setdefault("_rope_cache", {})  # ACDC asks for the same T thousands of times
        if T not in cache:
            pos = torch.arange(T, device=self.device).unsqueeze(0)
            cos, sin = self._rotary(torch.zeros(1, T, 1, dtype=torch.float32, device=self.device), pos)
            cache[T] = cos[0].to(self.dtype), sin[0].to(self.dtype)  # [T, dh]
        return cache[T]

    def _attention(self, p: dict, q_in: Tensor, k_in: Tensor, v_in: Tensor, rope,
                   q_position: int | None = None) -> Tensor:
        """q/k/v inputs [k, H, N, T', d] -> per-head results [k, H, N, T', d]; T' = 1 for the queries (and results)
        when q_position is given (the last layer only feeds the answer position). The three k's may differ (1 or K):
        an input shared by every row is projected once and broadcast."""
        cos, sin = rope
        T = k_in.shape[-2]
        qs = slice(None) if q_position is None else slice(q_position, q_position + 1)

        def proj(xi: Tensor, W: Tensor, b: Tensor | None) -> Tensor:  # [k, H, N, T, d] -> [H, k, N, T, dh]
            out = torch.einsum("khntd,hed->hknte", self._norm(xi, p["ln1"]), W)
            return out if b is None else out + b[:, None, None, None, :]

        q, k, v = proj(q_in, p["Wq"], p["bq"]), proj(k_in, p["Wk"], p["bk"]), proj(v_in, p["Wv"], p["bv"])
        q, k = q * cos[qs] + _rotate_half(q) * sin[qs], k * cos + _rotate_half(k) * sin
        scores = q @ k.transpose(-1, -2) * self.head_dim**-0.5  # [H, k, N, T', T]
        pattern = scores.masked_fill(self._causal[:T, :T][qs], float("-inf")).softmax(-1)
        out = torch.einsum("hknte,hde->khntd", pattern @ v, p["Wo"])
        return out if p["bo"] is None else out + p["bo"]

    def _mlp(self, p: dict, x: Tensor) -> Tensor:
        x = self._norm(x, p["ln2"])
        lin = torch.nn.functional.linear
        return lin(p["act"](lin(x, p["gate"], p["gate_b"])) * lin(x, p["up"], p["up_b"]), p["down"], p["down_b"])

    # -- public -------------------------------------------------------------------------------------------------
    def clean_run(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Unpatched forward: per-sender outputs [N, S, T, d] and logits at all positions [N, T, V]."""
        ids = ids.to(self.device)  # callers build ids on the CPU (groundtruth, behaviour_circuits)
        ones = torch.ones(1, self.n_edges, dtype=self.dtype, device=self.device)
        N, T = ids.shape
        zero = torch.zeros(1, len(self.graph.senders), T, self.W_E.shape[1], dtype=self.dtype, device=self.device)
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

    def run(self, masks: Tensor, ablation: Ablation, clean_out: Tensor, start_stage: int = 0) -> Tensor:
        """Patched logits at the answer position, [K, N, V], for masks [K, E].

        start_stage = 2*L starts at layer L's attention, 2*L+1 at its MLP, 2*n_layers at the final residual; every
        sender before it is taken from clean_out [N, S, T, d], which is exact when no edge into an earlier receiver
        is removed (true at every step of ACDC's reverse topological sweep).
        """
        return self._forward(masks, ablation, clean_out, start_stage)[1]

    def run_removals(self, mask: Tensor, receiver: Receiver, senders: Sequence[int], ablation: Ablation,
                     clean_out: Tensor, assume_removed: Sequence[bool] | None = None) -> Tensor:
        """Patched logits [K, N, V] for the rows batched ACDC speculates on: row k is `mask` [E] with the edge from
        senders[k] into `receiver` removed, and also the edges from those of senders[0..k-1] marked in
        `assume_removed` (default: all of them, a removal chain). Exact under the same condition as `run`, and
        computed with the least work that gives the same numbers:
        - the pass starts at the receiver's stage from clean_out;
        - only what depends on the row is computed K times: the receiver's head (or MLP, or the final residual) and
          whatever reads it, directly or not, through an edge still in `mask`; everything else once;
        - a component whose output reaches the logits through no edge in `mask` is not computed at all (it enters
          every input it feeds with weight 0, so leaving it out changes no value)."""
        logits = self._forward(mask[None], ablation, clean_out, self.stage_of(receiver),
                               chain=(receiver, list(senders), assume_removed), live=self._live_senders(mask))[1]
        return logits.expand(len(senders), -1, -1)

    def _forward(self, masks, ablation, prefix_out, start_stage, all_positions=False, chain=None, live=None):
        N, _, T, d = prefix_out.shape
        S, H = len(self.graph.senders), self.n_heads
        corr, corr_cum = ablation.per_sender(N)  # [S, N, T, d], [S+1, N, T, d]
        # Sender outputs minus their ablated values. Senders before the start stage are shared by all rows ("pre",
        # [p, N, T, d]); the rest ("new") are [k, N, T', d], with k = 1 for those that are the same in every row (the
        # rows of a removal chain differ only downstream of its receiver), or None where not computed (see `live`).
        # T' = 1 for senders computed at the answer position only. A list, not one preallocated tensor, so that
        # autograd (EAP) never sees an in-place write.
        p = self._prefix_senders(start_stage)
        pre = ablation.deltas(prefix_out)[:p]
        new: list[Tensor | None] = []
        a = self.answer_position % T
        answer, everywhere = slice(a, a + 1), slice(None)

        def mix(m: Tensor, n: int, pos: slice) -> tuple[Tensor, dict[int, Tensor]]:
            """Inputs of the receivers with masks m [k, r, n] over the first n senders: [k, r, N, T', d], and for the
            receivers that read a row-dependent sender while m is shared (k = 1), their [K, N, T', d] inputs."""
            k, r = m.shape[:2]
            q = min(n, p)
            pv = pre[:q, :, pos]
            out = (m[:, :, :q].reshape(k * r, q) @ pv.reshape(q, -1)).view(k, r, *pv.shape[1:]) + corr_cum[n, :, pos]
            by_rows: dict[int, list[int]] = {}  # shared senders and row-dependent ones: one batched matmul each
            for i, t in enumerate(new[: n - p], p):
                if t is not None:
                    by_rows.setdefault(t.shape[0], []).append(i)
            rows: dict[int, Tensor] = {}  # at most one row-dependent group: k_s = K
            for k_s, idx in sorted(by_rows.items(), key=lambda kv: kv[0] != 1):  # row-dependent last: they read `out`
                vals = torch.stack([new[i - p] if pos == everywhere or new[i - p].shape[2] != T else
                                    new[i - p][:, :, pos] for i in idx], 1)
                if k_s == k or k_s == 1:
                    cols = slice(idx[0], idx[-1] + 1) if idx[-1] - idx[0] + 1 == len(idx) else idx  # a view if it can
                    out = out + (m[:, :, cols] @ vals.flatten(2)).view(-1, r, *vals.shape[2:])
                    continue
                w = m[0][:, idx]  # [r, l]
                reads = w.ne(0).any(1).nonzero().flatten().tolist()
                per_row = (w[reads] @ vals.flatten(2)).view(k_s, len(reads), *vals.shape[2:])
                rows = {i: out[:, i] + per_row[:, j] for j, i in enumerate(reads)}
            return out, rows

        def chained(x: Tensor, m_r: Tensor, pos: slice) -> Tensor:
            """x [1, N, T', d], the chain receiver's input under `masks` (reading mask row m_r [n]) -> [K, N, T', d]:
            row k loses sender k and the earlier ones assumed removed, i.e. minus their (output - ablated)."""
            idx = torch.tensor(chain[1], device=self.device)
            lost = pre[idx][:, :, pos] * m_r[idx].view(-1, 1, 1, 1)  # [K, N, T', d]
            if chain[2] is None:
                return x - lost.cumsum(0)
            assumed = torch.tensor(chain[2], dtype=x.dtype, device=self.device).view(-1, 1, 1, 1)
            return x - (lost * assumed).cumsum(0) - lost * (1 - assumed)

        target = None if chain is None else chain[0]
        rope = self._rope(T)
        for layer in range(self.n_layers):
            n, mi = self.graph.attn_prefix(layer), self.graph.mlp_prefix(layer)
            # Past the last attention only the answer position is read, so the last layer computes queries and its
            # MLP there alone.
            last = layer == self.n_layers - 1 and not all_positions
            qpos, at = (a, answer) if last else (None, slice(None))
            if 2 * layer >= start_stage:
                heads = list(range(H)) if live is None else [h for h in range(H) if live[n + h]]
                res: dict[int, Tensor] = {}
                if heads:
                    am = masks[:, self._attn_slices[layer]].reshape(-1, H, 3, n)
                    am = am if len(heads) == H else am[:, heads]
                    ins = self._split_qkv(mix, am, n, at)
                    if target is not None and target.layer == layer and target.head in heads:
                        j, h = "qkv".index(target.kind), heads.index(target.head)
                        ins[j][1][h] = chained(ins[j][0][:, h], am[0, h, j], at if j == 0 else slice(None))
                    res = self._attention_groups(layer, heads, ins, rope, qpos)
                new.extend(None if h not in res else res[h] - corr[n + h, :, at] for h in range(H))
            if 2 * layer + 1 >= start_stage:
                if live is not None and not live[mi]:
                    new.append(None)
                    continue
                m_mlp = masks[:, None, self._mlp_slices[layer]]
                base, rows = mix(m_mlp, mi, at)
                x = rows.get(0, base[:, 0])
                if target is not None and target.kind == "mlp" and target.layer == layer:
                    x = chained(x, m_mlp[0, 0], at)
                new.append(self._mlp(self.layers[layer], x) - corr[mi, :, at])
        m_final = masks[:, None, self._final_slice]  # [k, 1, S]
        base, rows = mix(m_final, S, slice(None) if all_positions else answer)
        x = rows.get(0, base[:, 0])  # [k, N, T', d]
        if target is not None and target.kind == "final":
            x = chained(x, m_final[0, 0], answer)
        logits = self._norm(x, self.ln_final) @ self.W_U.T
        if not all_positions:
            return None, logits[:, :, 0]
        # the clean run: every sender's output, [k, N, S, T, d]
        return (torch.cat([pre.expand(len(logits), -1, -1, -1, -1), torch.stack(new, 1)], 1) + corr).transpose(1, 2), \
            logits

    @staticmethod
    def _split_qkv(mix, am: Tensor, n: int, at) -> list[tuple[Tensor, dict[int, Tensor]]]:
        """mix() of the q, k and v receivers of some heads (masks am [k, h, 3, n]) as one (inputs, row-dependent)
        pair per kind, keyed by head. One mix call where all three are read at every position (one matmul instead
        of three); at the last layer the queries are read at the answer position alone."""
        k, h = am.shape[:2]
        am = am.transpose(1, 2)  # [k, 3, h, n]: each kind's inputs come out contiguous
        if at == slice(None):
            base, rows = mix(am.reshape(k, 3 * h, n), n, at)
            base = base.view(k, 3, h, *base.shape[2:])
            return [(base[:, j], {i % h: x for i, x in rows.items() if i // h == j}) for j in range(3)]
        base, rows = mix(am[:, 1:].reshape(k, 2 * h, n), n, slice(None))
        base = base.view(k, 2, h, *base.shape[2:])
        return [mix(am[:, 0], n, at)] + [(base[:, j - 1], {i % h: x for i, x in rows.items() if i // h == j - 1})
                                         for j in (1, 2)]

    def _attention_groups(self, layer: int, heads: list[int], ins, rope, qpos) -> dict[int, Tensor]:
        """Results {head: [k, N, T', d]} of `heads` from mix()'s (shared, row-dependent) q/k/v inputs: the heads
        whose inputs are all shared run once, the others with K rows, each group in one batched call."""
        varying = sorted({j for _, rows in ins for j in rows})
        shared = [j for j in range(len(heads)) if j not in varying]
        out: dict[int, Tensor] = {}
        for group in (shared, varying):
            if not group:
                continue
            if group is shared:
                x = [base if len(group) == len(heads) else base[:, group] for base, _ in ins]
            else:
                x = []
                for base, rows in ins:
                    parts = [rows.get(j, base[:, j]) for j in group]
                    k = max(t.shape[0] for t in parts)
                    x.append(torch.stack([t.expand(k, -1, -1, -1) for t in parts], 1))
            res = self._attention(self._heads_params(layer, tuple(heads[j] for j in group)), *x, rope, qpos)
            out.update({heads[j]: r for j, r in zip(group, res.unbind(1))})
        return out

    def _heads_params(self, layer: int, heads: tuple[int, ...]) -> dict:
        if len(heads) == self.n_heads:
            return self.layers[layer]
        key = (layer, heads)
        if key not in self._head_params:
            idx = torch.tensor(heads, device=self.device)
            self._head_params[key] = {k: (v[idx] if k in ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo") and v is not None
                                          else v) for k, v in self.layers[layer].items()}
        return self._head_params[key]

    def _live_senders(self, mask: Tensor) -> list[bool]:
        """Senders whose output reaches the logits through edges kept in mask [E] (a path of nonzero entries)."""
        m = mask.detach() != 0
        live = m[self._final_slice].clone()
        H = self.n_heads
        for layer in reversed(range(self.n_layers)):
            n, mi = self.graph.attn_prefix(layer), self.graph.mlp_prefix(layer)
            if live[mi]:
                live[:mi] |= m[self._mlp_slices[layer]]
            attn = m[self._attn_slices[layer]].view(H, 3, n)[live[n:n + H]]
            live[:n] |= attn.any(0).any(0)
        return live.tolist()

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
