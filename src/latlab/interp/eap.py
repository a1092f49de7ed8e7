"""Edge Attribution Patching (Syed, Rager & Conmy 2023) and EAP-IG (Hanna, Pezzelle & Belinkov 2024).

EAP scores every edge from two forward passes (clean, and the corrupted one that gives the ablated sender outputs)
and one backward pass: with the edge masks of patching.py held at 1, d metric / d mask[s -> r] equals
grad_r . (out_s(clean) - out_s(ablated)), so the first-order change of the metric when the edge is removed is
    score = -d metric / d mask = grad_r . (ablated - clean).
The metric must have a non-zero gradient at the clean point, so EAP uses a task metric (the default is the clean
model's top-token NLL); KL from the clean model has zero gradient there.

EAP-IG averages the mask gradient along the straight path from "every edge ablated" (mask 0) to the clean model
(mask 1), which removes the first-order blind spot (integrated gradients over edge masks; the paper integrates over
the input embeddings, this variant integrates over the edges themselves and keeps IG's completeness property:
the scores sum to metric(all ablated) - metric(clean)).

Hand-written because the maintained EAP packages (auto-circuit, eap) pin TransformerLens 2/3.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from latlab.interp.patching import Ablation, EdgeModel, MetricFn


@dataclass
class EapResult:
    score: np.ndarray  # [E] estimated metric increase when the edge is removed
    seconds: float
    forwards: int
    backwards: int


def eap_scores(em: EdgeModel, clean_out: torch.Tensor, ablation: Ablation, metric: MetricFn,
               ig_steps: int = 0) -> EapResult:
    """ig_steps = 0: plain EAP (mask = 1); ig_steps = n: EAP-IG with n midpoints on the path mask 0 -> 1."""
    t0 = time.perf_counter()
    alphas = [1.0] if ig_steps <= 0 else [(i + 0.5) / ig_steps for i in range(ig_steps)]
    grad = torch.zeros(em.n_edges, dtype=em.dtype, device=em.device)
    for alpha in alphas:
        mask = torch.full((1, em.n_edges), alpha, dtype=em.dtype, device=em.device, requires_grad=True)
        value = metric(em.run(mask, ablation, clean_out, 0)).sum()
        (g,) = torch.autograd.grad(value, mask)
        grad += g[0] / len(alphas)
    return EapResult((-grad).cpu().numpy(), time.perf_counter() - t0, len(alphas), len(alphas))


def eap_circuit(score: np.ndarray, top_k: int) -> np.ndarray:
    """[E] bool: the top_k edges by |score| (an EapResult's score)."""
    keep = np.zeros(len(score), dtype=bool)
    keep[np.argsort(-np.abs(score), kind="stable")[:top_k]] = True
    return keep


def score_auc(score: np.ndarray, truth: np.ndarray) -> float:
    """Edge ROC AUC of ranking by |score| against the ground-truth mask [E]."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth.astype(int), np.abs(score)))
