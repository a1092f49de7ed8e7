"""One call from a model and a dataset to the circuit outputs of issue 5: ACDC τ sweep (batched), the circuit at the
chosen τ as JSON and picture, the metric-vs-τ curve, EAP / EAP-IG scores, and, given a ground truth, edge ROC curves
and AUCs. `validate_on_planted_circuit` runs it on the planted-circuit Llama of groundtruth.py, with distractors that
nothing reads (separable by construction: every method gets AUC 1.0) or that are read downstream (weak leaks and a
cancelling pair, which one-edge-at-a-time methods cannot tell from the circuit); `validate_on_tracr` on the
tracr-compiled programs of tracr.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latlab.interp.acdc import acdc_batched, auc, prepare, roc_points
from latlab.interp.eap import eap_scores, score_auc
from latlab.interp.groundtruth import DISTRACTORS, planted_circuit_model, planted_dataset, truth_mask
from latlab.interp.render import circuit_record, draw_circuit, plot_metric_vs_tau, plot_roc, write_circuit_json
from latlab.config import AcdcConfig


def discover_circuit(model: torch.nn.Module, ids: torch.Tensor, cfg: AcdcConfig, out_dir: str | Path,
                     corrupted_ids: torch.Tensor | None = None, truth: np.ndarray | None = None,
                     name: str = "circuit", other_truths: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """ACDC's τ sweep and chosen circuit, EAP and EAP-IG scores, written to out_dir/<name>*; with a ground-truth
    mask [E] `truth`, ROC AUCs per method and the chosen circuit's TPR/FPR, and the AUCs against each of
    `other_truths` under `<key>.acdc_auc`, `<key>.eap_auc`, `<key>.eap_ig_auc`."""
    out_dir = Path(out_dir)
    s = prepare(model, ids, corrupted_ids, ablation=cfg.ablation, metric=cfg.metric)
    sweep = [acdc_batched(s.em, s.clean_out, s.ablation, s.metric, t, cfg.max_rows) for t in cfg.taus]
    chosen = acdc_batched(s.em, s.clean_out, s.ablation, s.metric, cfg.tau, cfg.max_rows)
    # EAP needs a metric with a gradient at the clean point (see eap.py): the clean top token's NLL.
    task = prepare(model, ids, corrupted_ids, ablation=cfg.ablation, metric="label_nll")
    eap = eap_scores(task.em, task.clean_out, task.ablation, task.metric)
    ig = eap_scores(task.em, task.clean_out, task.ablation, task.metric, ig_steps=cfg.eap_ig_steps) \
        if cfg.eap_ig_steps else None

    record = circuit_record(s.em.graph, chosen.kept, chosen.score, tau=chosen.tau, metric=cfg.metric,
                            ablation=cfg.ablation, circuit_metric=chosen.metric,
                            eap_scores=eap.score.tolist(), eap_ig_scores=None if ig is None else ig.score.tolist())
    write_circuit_json(record, out_dir / f"{name}.json")
    draw_circuit(record, out_dir / f"{name}.png", title=f"{name} (τ={chosen.tau:g})")
    plot_metric_vs_tau([r.tau for r in sweep], [r.metric for r in sweep], [int(r.kept.sum()) for r in sweep],
                       out_dir / f"{name}_metric_vs_tau.png", metric_name=cfg.metric)
    metrics = {"n_edges": float(s.em.n_edges), "circuit_edges": float(chosen.kept.sum()),
               "circuit_metric": chosen.metric, "acdc_seconds": float(sum(r.seconds for r in sweep)),
               "eap_seconds": eap.seconds}
    if truth is not None:
        fpr, tpr = roc_points(sweep, truth)
        curves = {"ACDC": (fpr, tpr, auc(fpr, tpr))}
        metrics["acdc_auc"] = curves["ACDC"][2]
        metrics["eap_auc"] = score_auc(eap.score, truth)
        curves["EAP"] = (*_score_roc(eap.score, truth), metrics["eap_auc"])
        if ig is not None:
            metrics["eap_ig_auc"] = score_auc(ig.score, truth)
            curves["EAP-IG"] = (*_score_roc(ig.score, truth), metrics["eap_ig_auc"])
        for key, other in (other_truths or {}).items():
            metrics[f"{key}.acdc_auc"] = auc(*roc_points(sweep, other))
            metrics[f"{key}.eap_auc"] = score_auc(eap.score, other)
            if ig is not None:
                metrics[f"{key}.eap_ig_auc"] = score_auc(ig.score, other)
        metrics["circuit_tpr"] = float((chosen.kept & truth).sum() / truth.sum())
        metrics["circuit_fpr"] = float((chosen.kept & ~truth).sum() / (~truth).sum())
        plot_roc(curves, out_dir / f"{name}_roc.png")
    return metrics


def _score_roc(score: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(truth.astype(int), np.abs(score))
    return fpr, tpr


def validate_on_planted_circuit(cfg: AcdcConfig, out_dir: str | Path, n_layers: int = 3, n_heads: int = 4,
                                seed: int = 0, distractors: str = "isolated") -> dict[str, float]:
    """discover_circuit's metrics (ACDC, EAP, EAP-IG edge AUCs against the planted edges) on the planted model with
    `distractors` "isolated" or "read" (groundtruth.DISTRACTORS); outputs named planted_circuit[_read_distractors]."""
    model = planted_circuit_model(n_layers=n_layers, n_heads=n_heads, seed=seed, **DISTRACTORS[distractors])
    ids = planted_dataset(cfg.n_examples, seed=seed + 1)
    corrupted = planted_dataset(cfg.n_examples, seed=seed + 2) if cfg.ablation == "corrupted" else None
    from latlab.interp.patching import EdgeModel  # graph only, for the ground-truth mask

    truth = truth_mask(EdgeModel(model).graph, cfg.ablation)
    name = "planted_circuit" if distractors == "isolated" else f"planted_circuit_{distractors}_distractors"
    return discover_circuit(model, ids, cfg, out_dir, corrupted, truth, name=name)


def validate_on_tracr(cfg: AcdcConfig, out_dir: str | Path, program: str, seed: int = 0) -> dict[str, float]:
    """discover_circuit on a tracr-compiled program (latlab.interp.tracr) with zero ablation, as the ACDC paper's
    tracr experiments, on cfg.n_examples random inputs; AUCs against the compiled data flow (`truth_edges` edges)
    and, under `exercised.*`, against those of its edges whose removal alone changes the output on these inputs
    (`exercised_edges`; the rest are inert on every input, e.g. the query and key of an attend-to-all selector)."""
    from latlab.interp.acdc import single_edge_effects
    from latlab.interp.tracr import encode, load_program, random_sequences, tracr_llama, truth_mask

    compiled = load_program(program)
    model = tracr_llama(compiled)
    ids = encode(compiled, random_sequences(compiled, cfg.n_examples, seed))
    zero = cfg.model_copy(update={"ablation": "zero"})
    setup = prepare(model, ids, ablation="zero", metric=cfg.metric)
    truth = truth_mask(compiled, setup.em.graph)
    exercised = truth & (single_edge_effects(setup) > EXERCISED_EFFECT)
    metrics = discover_circuit(model, ids, zero, out_dir, truth=truth, name=f"tracr_{program}",
                               other_truths={"exercised": exercised})
    return {**metrics, "truth_edges": float(truth.sum()), "exercised_edges": float(exercised.sum())}


EXERCISED_EFFECT = 1e-9  # single-edge metric (KL, nats) above float64 noise (inert edges measure 0 to 1e-13)
