"""Circuit outputs: JSON (nodes, edges, scores), a picture of the circuit, metric-vs-τ, ROC and faithfulness curves.

Drawn with matplotlib only (no graphviz binary): components sit on rows by layer (embeddings at the bottom, the
final residual at the top); an edge is an arrow from its sender component to its receiver component, coloured by
the input it enters (q, k, v, MLP, final residual).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from latlab.interp.graph import CircuitGraph  # noqa: E402

_COLORS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "mlp": "tab:purple", "final": "tab:red"}


def circuit_record(graph: CircuitGraph, kept: np.ndarray, scores: np.ndarray | None = None, **extra) -> dict:
    edges = []
    for i, e in enumerate(graph.edges):
        edges.append({"sender": e.sender.label, "receiver": e.receiver.label, "sender_hook": e.sender.hook,
                      "receiver_hook": e.receiver.hook, "in_circuit": bool(kept[i]),
                      "score": None if scores is None else float(scores[i])})
    used = {x for e in edges if e["in_circuit"] for x in (e["sender"], _component(e["receiver"]))}
    nodes = [{"name": s.label, "kind": s.kind, "layer": s.layer, "in_circuit": s.label in used} for s in graph.senders]
    nodes.append({"name": "resid_final", "kind": "final", "layer": graph.n_layers, "in_circuit": "resid_final" in used})
    return {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "n_edges": len(edges),
            "n_circuit_edges": int(np.sum(kept)), "nodes": nodes, "edges": edges, **extra}


def write_circuit_json(record: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return path


def _component(receiver_label: str) -> str:
    """'a1.0.q' -> 'a1.0' (the head the input belongs to); MLPs and the final residual are their own component."""
    return receiver_label.rsplit(".", 1)[0] if receiver_label.count(".") == 2 else receiver_label


def _position(name: str, n_heads: int, n_layers: int) -> tuple[float, float]:
    if name == "embed":
        return (n_heads / 2, 0.0)
    if name == "resid_final":
        return (n_heads / 2, 2 * n_layers + 1)
    if name.startswith("m"):
        return (n_heads + 0.5, 2 * int(name[1:]) + 2)
    layer, head = (int(x) for x in name[1:].split("."))
    return (float(head), 2 * layer + 1)


def draw_circuit(record: dict, path: str | Path, title: str = "circuit") -> Path:
    H, L = record["n_heads"], record["n_layers"]
    fig, ax = plt.subplots(figsize=(1.2 * H + 3, 1.0 * L + 2.5))
    names = [n["name"] for n in record["nodes"]]
    active = {n["name"] for n in record["nodes"] if n["in_circuit"]}
    for name in names:
        x, y = _position(name, H, L)
        ax.scatter([x], [y], s=500, c="gold" if name in active else "lightgrey", edgecolors="black", zorder=3)
        ax.annotate(name, (x, y), ha="center", va="center", fontsize=7, zorder=4)
    for e in record["edges"]:
        if not e["in_circuit"]:
            continue
        kind = e["receiver"].rsplit(".", 1)[-1] if e["receiver"].count(".") == 2 else (
            "final" if e["receiver"] == "resid_final" else "mlp")
        (x0, y0), (x1, y1) = _position(e["sender"], H, L), _position(_component(e["receiver"]), H, L)
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color=_COLORS[kind], lw=1.5,
                                                              shrinkA=11, shrinkB=11, connectionstyle="arc3,rad=0.15"))
    for kind, color in _COLORS.items():
        ax.plot([], [], color=color, label=f"into {kind}")
    ax.legend(loc="upper left", fontsize=7, bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{title}: {record['n_circuit_edges']} of {record['n_edges']} edges")
    ax.axis("off")
    return _save(fig, path)


def plot_metric_vs_tau(taus, metrics, n_edges, path: str | Path, metric_name: str = "KL") -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(taus, metrics, "o-", color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("τ")
    ax.set_ylabel(f"{metric_name} of circuit", color="tab:blue")
    twin = ax.twinx()
    twin.plot(taus, n_edges, "s--", color="tab:grey")
    twin.set_ylabel("edges kept", color="tab:grey")
    ax.set_title("ACDC: metric and circuit size vs τ")
    return _save(fig, path)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path) -> Path:
    """curves: name -> (fpr, tpr, auc)."""
    fig, ax = plt.subplots(figsize=(4, 4))
    for name, (fpr, tpr, area) in curves.items():
        order = np.lexsort((tpr, fpr))
        ax.plot(np.r_[0, fpr[order], 1], np.r_[0, tpr[order], 1], "o-", ms=3, label=f"{name} (AUC {area:.2f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("edge FPR")
    ax.set_ylabel("edge TPR")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_faithfulness(results: dict[str, dict], path: str | Path) -> Path:
    """Faithfulness f against the share of edges kept (log axis; the empty circuit, f = 0 at 0 edges, is left off),
    one line per behaviour of `results` (name -> circuit_faithfulness output), CPR and CMD in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, result in results.items():
        curve = result["curve"]
        points = [(x, f) for x, f in zip(curve["fraction"], curve["faithfulness"]) if x > 0]
        ax.plot(*zip(*points), "o-", ms=3, label=f"{name} (CPR {result['cpr']:.2f}, CMD {result['cmd']:.2f})")
    ax.axhline(1.0, ls=":", color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("edges kept (fraction of all, top by |EAP score|)")
    ax.set_ylabel("faithfulness f")
    ax.set_title("Circuit faithfulness over edge budgets (MIB)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
