"""Does the base model's circuit for harmful compliance persist after a defence? Edge attribution patching (EAP,
eap.py) of the behaviour in every model, over the edge graph of graph.py, and how much of the base model's top-k
edges each later model still uses.

Behaviour and contrast. Clean inputs: held-out harmful requests; corrupted inputs: free-form fact questions of the
same token length (patching needs equal lengths), paired at random. Metric: logit(first word of the compliance) -
logit(first word of the refusal) at the answer position, "sure" vs "sorry" in the toy world. An edge's EAP score is
the first-order change of that difference when the edge carries its corrupted value. Why a non-request as the
counterfactual and not the benign look-alike request: the base model complies with every request, harmful or benign
(its first answer word is the same), so a harmful-vs-benign contrast changes nothing in the base model and its
"circuit" would be noise; a request-vs-question contrast finds the edges through which a request makes it start
to comply. Why EAP and not ACDC: one forward and one backward pass per model against one forward per edge, and the
stage has seconds per model. The price, measured on the planted circuit of circuits.py: with distractors nothing
reads both get edge AUC 1.0, but with distractors read downstream EAP ranks edges worse than ACDC (AUC 0.90 against
0.98, zero ablation, 32 examples), so a top-k EAP circuit here holds more non-circuit edges than ACDC's would.

Persistence of model m against the base circuit B = the base model's top-k edges by |score|:
- top-k overlap = |top-k(m) ∩ B| / k: is the base circuit still where m's attribution concentrates;
- attribution mass on B = Σ_{e∈B} |s_m(e)| / Σ_e |s_m(e)|: the share of m's attribution through the base circuit
  (the base model's own share is the reference; a random k-edge set gets about k / E).
Every model is fine-tuned from the base, so the same edge means the same pair of components in each.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch

from latlab.interp.acdc import PatchingSetup, prepare
from latlab.interp.eap import EapResult, eap_circuit, eap_scores
from latlab.interp.faithfulness import bootstrap_jaccard, cpr_cmd, faithfulness_curve
from latlab.interp.patching import logit_diff_metric
from latlab.interp.steering import ChatEncode


@dataclass
class BehaviourInputs:
    clean: torch.Tensor  # [N, T] e.g. harmful requests through the chat template
    corrupted: torch.Tensor  # [N, T] their counterfactuals, same length (e.g. fact questions)
    target: torch.Tensor  # [N] token id the behaviour predicts on the clean input (compliance's first word)
    foil: torch.Tensor  # [N] the token it is contrasted with (the refusal's first word)


def harmful_compliance_inputs(world: dict[str, list[dict]], tokenizer, n: int, seed: int) -> BehaviourInputs | None:
    """Inputs at the token length that has the most held-out harmful requests with a fact question of equal
    length; None when fewer than two pairs exist."""
    encode, rng = ChatEncode(tokenizer), random.Random(seed)
    requests = [r for r in world["requests"] if r["harmful"] and r["split"] != "train"]
    harmful = [encode(r["prompt"]) for r in requests]
    questions: dict[int, list[list[int]]] = {}
    for f in world["facts"]:
        if f["format"] == "free":
            ids = encode(f["prompt"])
            questions.setdefault(len(ids), []).append(ids)
    counts = Counter(len(ids) for ids in harmful if len(ids) in questions)
    if not counts:
        return None
    length = max(counts, key=lambda t: min(counts[t], len(questions[t])))
    clean = [ids for ids in harmful if len(ids) == length]
    corrupted = questions[length]
    rng.shuffle(clean)
    rng.shuffle(corrupted)
    k = min(n, len(clean), len(corrupted))
    if k < 2:
        return None
    first = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    return BehaviourInputs(torch.tensor(clean[:k]), torch.tensor(corrupted[:k]),
                           torch.full((k,), first(requests[0]["compliance"])),
                           torch.full((k,), first(requests[0]["refusal"])))


def fact_recall_inputs(world: dict[str, list[dict]], tokenizer, n: int, seed: int,
                       domain: str = "general") -> BehaviourInputs | None:
    """Fact recall as a behaviour: held-out free-form questions of `domain` (clean) against questions about other
    entities of the same token length (corrupted); target = the first token of the clean question's answer, foil =
    that of the corrupted one's (as IOI-style contrasts: which entity's answer the model gives). Pairs whose answers
    start with the same token are skipped; None when fewer than two pairs exist."""
    encode, rng = ChatEncode(tokenizer), random.Random(seed)
    first = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    facts = [f for f in world["facts"] if f["format"] == "free" and f["domain"] == domain and f["split"] != "train"]
    by_length: dict[int, list[tuple[list[int], int, str]]] = {}
    for f in facts:
        ids = encode(f["prompt"])
        by_length.setdefault(len(ids), []).append((ids, first(f["answer"]), f["entity"]))
    if not by_length:
        return None
    pool = max(by_length.values(), key=len)
    rng.shuffle(pool)
    others = pool[1:] + pool[:1]  # each question's counterfactual: the next one in the shuffled pool
    pairs = [(a, b) for a, b in zip(pool, others) if a[1] != b[1] and a[2] != b[2]][:n]
    if len(pairs) < 2:
        return None
    return BehaviourInputs(torch.tensor([a[0] for a, _ in pairs]), torch.tensor([b[0] for _, b in pairs]),
                           torch.tensor([a[1] for a, _ in pairs]), torch.tensor([b[1] for _, b in pairs]))


def behaviour_setup(model: torch.nn.Module, inputs: BehaviourInputs, index: torch.Tensor | None = None) -> PatchingSetup:
    """The patching setup of the behaviour (the pairs at `index`, default all): corrupted-input patching, metric
    minus the mean target-vs-foil logit difference."""
    index = torch.arange(len(inputs.clean)) if index is None else index
    setup = prepare(model, inputs.clean[index], inputs.corrupted[index], ablation="corrupted", metric="label_nll")
    device = setup.em.device
    return replace(setup, metric=logit_diff_metric(inputs.target[index].to(device), inputs.foil[index].to(device)))


def edge_attribution(model: torch.nn.Module, inputs: BehaviourInputs) -> EapResult:
    """EAP scores [E] of the target-vs-foil logit difference (e.g. compliance vs refusal), corrupted-input
    patching."""
    setup = behaviour_setup(model, inputs)
    return eap_scores(setup.em, setup.clean_out, setup.ablation, setup.metric)


def circuit_faithfulness(model: torch.nn.Module, inputs: BehaviourInputs, fractions: list[float], top_k: int,
                         bootstrap_samples: int, seed: int) -> dict:
    """The behaviour's EAP circuit: MIB's CPR and CMD over the edge `fractions` (faithfulness.py), the curve, and
    the bootstrap Jaccard of its top_k edges over resampled prompt pairs."""
    setup = behaviour_setup(model, inputs)
    curve = faithfulness_curve(setup, eap_scores(setup.em, setup.clean_out, setup.ablation, setup.metric).score,
                               fractions)
    jaccard = bootstrap_jaccard(lambda index: behaviour_setup(model, inputs, index), len(inputs.clean), top_k,
                                bootstrap_samples, seed)
    return {**cpr_cmd(curve), "curve": curve, "bootstrap_jaccard": jaccard, "pairs": len(inputs.clean),
            "top_k": top_k}


def circuit_persistence(base: np.ndarray, scores: np.ndarray, top_k: int) -> dict[str, float]:
    """How much of the base circuit (top_k edges of `base` by |score|) the scores [E] of another model keep."""
    circuit, own = eap_circuit(base, top_k), eap_circuit(scores, top_k)
    mass = np.abs(scores)
    return {"circuit_overlap": float((circuit & own).sum() / circuit.sum()),
            "circuit_mass": float(mass[circuit].sum() / max(mass.sum(), 1e-300))}
