"""Is a circuit faithful, and is it stable? The MIB benchmark's circuit performance ratio and circuit-model difference
(Mueller et al. 2025, "MIB: A Mechanistic Interpretability Benchmark", circuit localisation track) over edge budgets,
and the bootstrap stability of an attribution circuit over resampled prompts.

Faithfulness of the circuit C_k made of the top-k edges by |score| (every other edge carries its corrupted value):
    f(k) = (m(C_k) - m(empty)) / (m(model) - m(empty))
with m the behaviour's logit difference, "empty" every edge corrupted and "model" none. MIB's summaries, areas over
the fraction of edges kept (trapezoids on a linear axis from 0 to 1, as MIB's edge-budget grid):
    CPR = area under f        (higher: the circuit carries the behaviour; 1 for a circuit as good as the model)
    CMD = area under |1 - f|  (lower: the circuit behaves like the model, neither less nor more)
A circuit can reach f > 1 (it drops edges that worked against the behaviour): CPR rewards that, CMD does not.

Stability: the Jaccard index between the top-k edge set of the full prompt set and that of a bootstrap resample of
its (clean, corrupted) pairs, mean and percentile interval over resamples. An attribution whose top edges change
with the prompts sampled describes the sample, not the behaviour.

Hand-written: MIB's code builds on its own EAP package pinned to TransformerLens 2; both summaries are a few lines
over the edge-masked forward pass (patching.py) the project's ACDC and EAP share.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from latlab.interp.acdc import PatchingSetup
from latlab.interp.eap import eap_circuit, eap_scores


@torch.no_grad()
def faithfulness_curve(setup: PatchingSetup, score: np.ndarray, fractions: list[float]) -> dict[str, list[float]]:
    """{"fraction", "edges", "faithfulness"} of the top-k circuits by |score| [E], k = round(fraction x E) for
    every fraction in (0, 1] (0 and 1 added: f is 0 and 1 there by definition). ValueError when the behaviour's
    metric does not change between the model and the empty circuit (nothing to be faithful to)."""
    em = setup.em
    grid = sorted({0.0, 1.0, *(float(f) for f in fractions)})
    ks = [int(round(f * em.n_edges)) for f in grid]
    masks = torch.zeros(len(ks), em.n_edges, dtype=em.dtype, device=em.device)
    for row, k in enumerate(ks):
        masks[row, torch.as_tensor(eap_circuit(score, k))] = 1
    # metric() is a loss (lower is better, e.g. minus the logit difference): f uses it as is, the sign cancels
    values = setup.metric(em.run(masks, setup.ablation, setup.clean_out)).cpu().numpy()
    empty, full = values[0], values[-1]
    if abs(full - empty) < 1e-12:
        raise ValueError("faithfulness: the metric is the same with every edge corrupted as in the model")
    faithful = (values - empty) / (full - empty)
    return {"fraction": grid, "edges": ks, "faithfulness": faithful.tolist()}


def cpr_cmd(curve: dict[str, list[float]]) -> dict[str, float]:
    """MIB's CPR (area under f) and CMD (area under |1 - f|) of a faithfulness_curve, on the fraction axis."""
    x, f = np.asarray(curve["fraction"]), np.asarray(curve["faithfulness"])
    area = lambda y: float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))  # noqa: E731
    return {"cpr": area(f), "cmd": area(np.abs(1 - f))}


def bootstrap_jaccard(setup_of: Callable[[torch.Tensor], PatchingSetup], n_pairs: int, top_k: int, samples: int,
                      seed: int, confidence: float = 0.95) -> dict[str, float]:
    """Jaccard between the EAP top-k edge set of all n_pairs prompt pairs and of `samples` resamples with
    replacement; `setup_of(index [n])` gives the patching setup of those pairs. Returns mean, ci_low, ci_high,
    samples (the percentile interval over resamples)."""
    full = eap_circuit(_eap(setup_of(torch.arange(n_pairs))), top_k)
    rng = np.random.default_rng(seed)
    values = []
    for _ in tqdm(range(samples), desc="bootstrap Jaccard: resamples", leave=False):
        index = torch.as_tensor(rng.integers(0, n_pairs, n_pairs))
        other = eap_circuit(_eap(setup_of(index)), top_k)
        values.append(float((full & other).sum() / (full | other).sum()))
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"mean": float(np.mean(values)), "ci_low": float(low), "ci_high": float(high), "samples": samples}


def _eap(setup: PatchingSetup) -> np.ndarray:
    return eap_scores(setup.em, setup.clean_out, setup.ablation, setup.metric).score
