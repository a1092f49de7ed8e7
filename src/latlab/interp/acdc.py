"""ACDC, Automatic Circuit DisCovery (Conmy et al. 2023), over the edge-level graph of graph.py.

Receivers are visited in reverse topological order (final residual, last MLP, last layer's heads, ...); for each
incoming edge (latest sender first) the edge is removed on top of every edge removed so far, and the removal is kept
if the metric (KL from the clean model by default, or a task loss) rises by less than tau over the current value;
otherwise the edge is restored. Removed edges take their sender's value on the corrupted input, zero, or the mean.

Two implementations that make the same decisions:
- `acdc_reference`: one candidate edge per full forward pass from the embeddings, as in the paper's code.
- `acdc_batched`: speculates on the decisions of the current receiver's remaining edges and evaluates them all in
  one stacked forward pass (`EdgeModel.run_removals`, row k = the circuit so far minus edge k and minus the earlier
  edges guessed removed). Walking the rows reproduces the greedy decisions; a wrong guess invalidates the rows after
  it, which are re-evaluated from the corrected state, with their (slightly off) values as the next guesses. The
  first guess is "removed" (circuits are sparse) or, once most decisions so far were "kept", "kept". Forward passes
  = receivers + wrong guesses instead of one per edge. The pass starts at the receiver's layer from cached clean
  activations (below the receiver nothing is patched yet), computes once what all rows share (everything not
  downstream of the receiver through a kept edge) and skips components no kept edge reads. Both implementations run
  in float64 (see EdgeModel): their metric values differ by ~1e-16, far below any τ, so a decision can only flip at
  an exact tie; tests/test_interp_acdc.py checks equal circuits on sparse (planted) and dense (random) models.
  On a CPU the engine is compute-bound, so the gain is work not done rather than the stacking itself:
  benchmarks/acdc.py (OMP_NUM_THREADS=1, best of 3) measured 17x and 23x (3 layers x 4 heads, 8 and 32 examples)
  and 101x (4 x 8, 1519 edges) on the planted models, whose circuit is 7 edges, but only 3.4x on a random-init
  model where 178 of 262 edges stay in the circuit (little to skip, many wrong guesses).

`tau_sweep` + `roc_points` + `auc` give the edge-level ROC against a ground-truth edge set, as in the paper.
With a task loss instead of KL, a removal can *lower* the loss and greedy ACDC then drops real circuit edges (edge
AUC 0.83 with the clean-label NLL and corrupted patching on the planted model, 1.0 with KL): prefer KL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from latlab.interp.patching import Ablation, EdgeModel, MetricFn


@dataclass
class AcdcResult:
    tau: float
    kept: np.ndarray  # [E] bool, edges in the circuit
    score: np.ndarray  # [E] metric increase measured when the edge was tested
    metric: float  # metric of the final circuit
    forwards: int
    seconds: float
    edge_labels: list[str] = field(default_factory=list)

    @property
    def circuit(self) -> list[str]:
        return [lab for lab, k in zip(self.edge_labels, self.kept) if k]


def _receiver_edges(em: EdgeModel) -> list[tuple[object, list[int]]]:
    """(receiver, its edge indices latest-sender-first) in reverse topological order."""
    spans, start = [], 0
    for r in em.graph.receivers:
        spans.append((r, list(range(start, start + r.n_senders))[::-1]))
        start += r.n_senders
    return spans[::-1]


def acdc_reference(em: EdgeModel, clean_out: torch.Tensor, ablation: Ablation, metric: MetricFn,
                   tau: float) -> AcdcResult:
    t0 = time.perf_counter()
    mask = torch.ones(1, em.n_edges, dtype=em.dtype, device=em.device)
    score = np.zeros(em.n_edges)
    with torch.no_grad():
        cur = metric(em.run(mask, ablation, clean_out, 0)).item()
        forwards = 1
        for _, edges in _receiver_edges(em):
            for e in edges:
                mask[0, e] = 0.0
                new = metric(em.run(mask, ablation, clean_out, 0)).item()
                forwards += 1
                score[e] = new - cur
                if new - cur < tau:
                    cur = new
                else:
                    mask[0, e] = 1.0
    return AcdcResult(tau, mask[0].cpu().numpy() > 0.5, score, cur, forwards, time.perf_counter() - t0,
                      [e.label for e in em.graph.edges])


def acdc_batched(em: EdgeModel, clean_out: torch.Tensor, ablation: Ablation, metric: MetricFn, tau: float,
                 max_rows: int = 64) -> AcdcResult:
    """Same decisions as `acdc_reference`; max_rows bounds the stacked configurations per forward pass."""
    t0 = time.perf_counter()
    mask = torch.ones(em.n_edges, dtype=em.dtype, device=em.device)
    score = np.zeros(em.n_edges)
    with torch.no_grad():
        cur = metric(em.run(mask[None], ablation, clean_out, 2 * em.n_layers)).item()
        forwards, tally = 1, {True: 0, False: 0}  # decisions so far: removed / kept
        for receiver, edges in _receiver_edges(em):
            first = min(edges)  # edge index - first = sender index
            # Is the edge removed? A wrong guess costs a forward. First guess: the majority decision so far ("removed"
            # at the start: circuits are sparse); then the estimates that rows past a wrong guess give.
            guess = dict.fromkeys(edges, tally[True] >= tally[False])
            todo = list(edges)
            while todo:
                chain = todo[:max_rows]
                assumed = [guess[e] for e in chain]
                logits = em.run_removals(mask, receiver, [e - first for e in chain], ablation, clean_out, assumed)
                values = metric(logits).tolist()
                forwards += 1
                valid, wrong, base = 0, False, cur  # base: the metric of the state a row assumes before its edge
                for e, new, assume in zip(chain, values, assumed):
                    if wrong:  # the row assumed a wrong state: its value only estimates the edge's decision
                        guess[e] = new - base < tau
                    else:
                        valid += 1
                        score[e] = new - cur
                        removed = new - cur < tau
                        tally[removed] += 1
                        if removed:
                            mask[e] = 0.0
                            cur = new
                        wrong = removed != assume
                    if assume:
                        base = new
                todo = todo[valid:]
    return AcdcResult(tau, mask.cpu().numpy() > 0.5, score, cur, forwards, time.perf_counter() - t0,
                      [e.label for e in em.graph.edges])


def tau_sweep(em: EdgeModel, clean_out, ablation, metric, taus, batched: bool = True) -> list[AcdcResult]:
    run = acdc_batched if batched else acdc_reference
    return [run(em, clean_out, ablation, metric, float(t)) for t in taus]


def roc_points(results: list[AcdcResult], truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge TPR and FPR per τ against a ground-truth mask [E]."""
    truth = truth.astype(bool)
    tpr = np.array([(r.kept & truth).sum() / max(truth.sum(), 1) for r in results])
    fpr = np.array([(r.kept & ~truth).sum() / max((~truth).sum(), 1) for r in results])
    return fpr, tpr


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC polyline through (0,0), the sweep's points (sorted by FPR, then TPR) and (1,1)."""
    pts = sorted(zip(np.r_[0.0, fpr, 1.0], np.r_[0.0, tpr, 1.0]))
    x, y = np.array(pts).T
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


@dataclass
class PatchingSetup:
    """Everything ACDC and EAP need for one model and dataset."""

    em: EdgeModel
    clean_out: torch.Tensor  # [N, S, T, d]
    clean_logits: torch.Tensor  # [N, V] at the answer position
    ablation: Ablation
    metric: MetricFn


def prepare(model: torch.nn.Module, ids: torch.Tensor, corrupted_ids: torch.Tensor | None = None,
            ablation: str = "zero", metric: str = "kl", answer_position: int = -1) -> PatchingSetup:
    """metric: "kl" (KL from the clean model, ACDC's default) or "label_nll" (NLL of the clean top token)."""
    from latlab.interp.patching import kl_metric, label_nll_metric

    em = EdgeModel(model, answer_position=answer_position)
    with torch.no_grad():
        clean_out, logits = em.clean_run(ids)
    clean_logits = logits[:, answer_position]
    fn = kl_metric(clean_logits) if metric == "kl" else label_nll_metric(clean_logits.argmax(-1))
    return PatchingSetup(em, clean_out, clean_logits, em.ablation(ablation, clean_out, corrupted_ids), fn)


@torch.no_grad()
def single_edge_effects(setup: PatchingSetup, batch: int = 64) -> np.ndarray:
    """[E] the metric with one edge removed and every other edge kept (one patched forward per edge, `batch` at a
    time): an edge whose removal alone changes nothing on the dataset is invisible to any effect-based method."""
    em, out = setup.em, []
    for start in range(0, em.n_edges, batch):
        rows = torch.arange(start, min(start + batch, em.n_edges))
        masks = torch.ones(len(rows), em.n_edges, dtype=em.dtype, device=em.device)
        masks[torch.arange(len(rows)), rows] = 0
        out.append(setup.metric(em.run(masks, setup.ablation, setup.clean_out)).cpu())
    return torch.cat(out).numpy()
