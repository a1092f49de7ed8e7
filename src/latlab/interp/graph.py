"""The edge-level computational graph of ACDC (Conmy et al. 2023, "Towards Automated Circuit Discovery").

Senders write to the residual stream: the token embeddings, every attention head's output, every MLP's output.
Receivers read it: every head's q, k and v input separately, every MLP's input, and the final residual (what the
unembedding reads). There is an edge from every sender to every receiver that comes later in the forward pass.

Names follow TransformerLens hook points so a circuit reads as patches: sender `blocks.1.attn.hook_result[3]`,
receiver `blocks.2.hook_q_input[0]`. Short labels (`a1.3`, `a2.0.q`, `m1`, `embed`, `resid_final`) are used in
pictures and JSON. Senders are indexed in forward order (embed, then per layer its heads, then its MLP); the senders
that feed any receiver are a prefix of that order, which `patching.py` uses for prefix sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sender:
    index: int
    kind: str  # "embed" | "head" | "mlp"
    layer: int  # -1 for the embedding
    head: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "embed":
            return "embed"
        return f"a{self.layer}.{self.head}" if self.kind == "head" else f"m{self.layer}"

    @property
    def hook(self) -> str:
        if self.kind == "embed":
            return "hook_embed"
        if self.kind == "head":
            return f"blocks.{self.layer}.attn.hook_result[{self.head}]"
        return f"blocks.{self.layer}.hook_mlp_out"


@dataclass(frozen=True)
class Receiver:
    kind: str  # "q" | "k" | "v" | "mlp" | "final"
    layer: int  # n_layers for the final residual
    head: int | None = None
    n_senders: int = 0  # it reads senders[0:n_senders]

    @property
    def label(self) -> str:
        if self.kind == "final":
            return "resid_final"
        return f"a{self.layer}.{self.head}.{self.kind}" if self.head is not None else f"m{self.layer}"

    @property
    def hook(self) -> str:
        if self.kind == "final":
            return f"blocks.{self.layer - 1}.hook_resid_post"
        if self.kind == "mlp":
            return f"blocks.{self.layer}.hook_mlp_in"
        return f"blocks.{self.layer}.hook_{self.kind}_input[{self.head}]"


@dataclass(frozen=True)
class Edge:
    sender: Sender
    receiver: Receiver

    @property
    def label(self) -> str:
        return f"{self.sender.label}->{self.receiver.label}"


@dataclass
class CircuitGraph:
    n_layers: int
    n_heads: int
    senders: list[Sender] = field(init=False)
    receivers: list[Receiver] = field(init=False)  # topological order

    def __post_init__(self) -> None:
        self.senders = [Sender(0, "embed", -1)]
        self.receivers = []
        for layer in range(self.n_layers):
            n_before_attn = len(self.senders)
            for head in range(self.n_heads):
                for kind in ("q", "k", "v"):
                    self.receivers.append(Receiver(kind, layer, head, n_before_attn))
            for head in range(self.n_heads):
                self.senders.append(Sender(len(self.senders), "head", layer, head))
            self.receivers.append(Receiver("mlp", layer, None, len(self.senders)))
            self.senders.append(Sender(len(self.senders), "mlp", layer))
        self.receivers.append(Receiver("final", self.n_layers, None, len(self.senders)))

    def attn_prefix(self, layer: int) -> int:
        """Number of senders computed before layer `layer`'s attention."""
        return 1 + layer * (self.n_heads + 1)

    def mlp_prefix(self, layer: int) -> int:
        return self.attn_prefix(layer) + self.n_heads

    @property
    def edges(self) -> list[Edge]:
        return [Edge(self.senders[s], r) for r in self.receivers for s in range(r.n_senders)]

    def edge_index(self) -> dict[str, int]:
        return {e.label: i for i, e in enumerate(self.edges)}
