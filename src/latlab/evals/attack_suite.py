"""The attack suite: every attack of `latlab.attacks` by name, run against one model, judged into an attack success
rate (ASR). It is an evaluation (it judges), so it sits in `evals`, above the attacks it runs.

`run_attack_suite` is what the evaluate stage calls once per model to fill one row of the ASR matrix
(model x attack). Attacks are adaptive: each optimises against the model it is given (GCG, latent and embedding
PGD, the refusal direction) or uses its context window as that model allows (many-shot).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from latlab.attacks.common import AttackResult, harmful
from latlab.attacks.direct import direct_attack
from latlab.attacks.embedding import embedding_attack
from latlab.attacks.gcg import gcg_individual_attack, gcg_universal_attack
from latlab.attacks.latent import latent_attack, pgd_generation_attack
from latlab.attacks.many_shot import many_shot_attack
from latlab.attacks.prefill import prefill_attack
from latlab.attacks.refusal_direction import refusal_direction_attack
from latlab.config import AttackSuiteConfig, PGDAttackConfig
from latlab.evals.judge import COMPLIED, INCOHERENT, REFUSED

Attack = Callable[..., AttackResult]

ATTACKS: dict[str, Attack] = {
    "direct": direct_attack,
    "prefill": prefill_attack,
    "many_shot": many_shot_attack,
    "gcg_individual": gcg_individual_attack,
    "gcg_universal": gcg_universal_attack,
    "latent": latent_attack,
    "embedding": embedding_attack,
    "refusal_direction": refusal_direction_attack,
}


def share(labels: list[str], label: str) -> float:
    """Fraction of judge labels equal to `label` (0 when nothing was judged)."""
    return float(np.mean([lab == label for lab in labels])) if labels else 0.0


def eps_sweep(model, tokenizer, requests: list[dict], cfg: PGDAttackConfig, judge, eps_values: list[float], *,
              max_new_tokens: int = 16, batch_size: int = 64) -> list[dict[str, float]]:
    """ASR curve of the latent attack: [{"eps", "asr", "incoherent", "loss_final"}] for each radius."""
    curve = []
    for eps in eps_values:
        result = pgd_generation_attack(model, tokenizer, requests, cfg, eps, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size)
        labels = judge.labels(requests, result.completions)
        curve.append({"eps": eps, "asr": share(labels, COMPLIED), "incoherent": share(labels, INCOHERENT),
                      "loss_final": result.metadata["loss_final"]})
    return curve


def run_attack(name: str, model, tokenizer, requests: list[dict], cfg: AttackSuiteConfig, judge,
               support: list[dict] | None = None) -> dict:
    """One attack: {"asr", "refusal_rate", "incoherent_rate", "n", "seconds", "metadata", "records"} (+ "asr_curve"
    for latent). ASR = the judge's complied rate; incoherent_rate is told apart from refusal, so that a model broken
    by the attack (or by its defence) is not read as robust."""
    began = time.perf_counter()
    result = ATTACKS[name](model, tokenizer, requests, getattr(cfg, name, None), support=support,
                           max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    attacked = requests[: len(result.completions)]
    labels = judge.labels(attacked, result.completions)
    entry = {"asr": share(labels, COMPLIED), "refusal_rate": share(labels, REFUSED),
             "incoherent_rate": share(labels, INCOHERENT), "n": len(labels), "metadata": result.metadata,
             "records": [{"id": r["id"], "output": c, "label": lab}
                         for r, c, lab in zip(attacked, result.completions, labels)]}
    if name == "latent" and cfg.latent.eps_sweep:
        others = [eps for eps in cfg.latent.eps_sweep if eps != cfg.latent.eps]
        curve = eps_sweep(model, tokenizer, requests, cfg.latent, judge, others,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        if len(others) < len(cfg.latent.eps_sweep):  # the main run is already one point of the curve
            curve.append({"eps": cfg.latent.eps, "asr": entry["asr"], "incoherent": entry["incoherent_rate"],
                          "loss_final": result.metadata["loss_final"]})
        entry["asr_curve"] = sorted(curve, key=lambda point: point["eps"])
    entry["seconds"] = time.perf_counter() - began
    return entry


def run_attack_suite(model, tokenizer, requests: list[dict], cfg: AttackSuiteConfig, judge,
                     support: list[dict] | None = None,
                     on_attack_done: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Every attack in cfg.attacks on the first cfg.max_prompts harmful requests.

    requests: the evaluation split's request records (benign ones are skipped); support: training-split request
    records, the attacker's own data (many-shot demonstrations, the refusal direction, the universal GCG suffix);
    on_attack_done(name): called after each attack (a caller's progress bar: GCG alone can take minutes).
    """
    model.eval()
    targets = harmful(requests)[: cfg.max_prompts]
    if not targets:
        raise ValueError("the attack suite got no harmful requests")
    results = {}
    for name in cfg.attacks:
        results[name] = run_attack(name, model, tokenizer, targets, cfg, judge, support)
        if on_attack_done is not None:
            on_attack_done(name)
    return results


def asr_row(results: dict[str, dict]) -> dict[str, float]:
    """Flat metrics for one model's row of the ASR matrix: {"asr.<attack>": value, "incoherent.<attack>": value,
    "n.<attack>": prompts attacked (the N of both rates and of the eps curve), "asr.latent.eps_<e>": ...}."""
    row = {f"asr.{name}": entry["asr"] for name, entry in results.items()}
    row.update({f"incoherent.{name}": entry["incoherent_rate"] for name, entry in results.items()})
    row.update({f"n.{name}": entry["n"] for name, entry in results.items()})
    for name, entry in results.items():
        for point in entry.get("asr_curve", []):
            row[f"asr.{name}.eps_{point['eps']:g}"] = point["asr"]
    return row
