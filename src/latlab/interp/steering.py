"""Steering-vector reliability (Tan et al. 2024, "Analyzing the Generalization and Reliability of Steering Vectors")
with Contrastive Activation Addition vectors (Rimsky et al. 2024).

- CAA vector: mean over training pairs of resid(prompt + positive letter) - resid(prompt + negative letter), read at
  `blocks.{layer}.hook_resid_post` (the output of decoder block `layer`) at the answer-letter token (position -1).
- Steering adds multiplier * vector to that block's output at every position; propensity = logit(positive letter) -
  logit(negative letter) at the next-token position after the prompt. Multipliers default to -1.5 ... 1.5.
- Per-example steerability = least-squares slope of propensity on multiplier; dataset steerability = mean / median;
  anti-steerable fraction = share of slopes < 0. The effect is also read in behaviour: the behaviour rate (share of
  examples whose propensity is > 0, i.e. answered as the behaviour) at multiplier 0 and at the extremes.
- Layer sweep: the baseline analysis with the vector of each decoder block in turn (steerability by block).
- Spurious factors: OLS of the slope on "positive option is A" and "positive option is Yes"; the R^2 of each alone
  and of both together is the share of slope variance they explain.
- ID vs OOD: the same examples under prompt variants (persona as system prompt or as a user-prompt prefix, positive
  or negative); steerabilities compared by Spearman rank correlation. The system variant is a real system message:
  the encoder renders it through the tokenizer's chat template (`ChatEncode`), so it differs from the user prefix.

Hand-written because the `steering-vectors` package requires transformers < 5. The model is any HF
decoder that latlab.models.hooks can hook (Llama-style, also under peft); text is turned into ids by a caller-supplied
`encode` function so the word-level toy tokenizer and BPE tokenizers share the code; `encode(prompt, system=...)`
must accept a system prompt when the persona variants are run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latlab.models.encoding import encode_prompt, token_ids
from latlab.models.hooks import (capture_residual, edit_residual, forward_ids, last_token_logits, resid_name,
                                 residuals_of_ids)

Encode = Callable[..., list[int]]  # encode(prompt, system=None) -> ids
DEFAULT_MULTIPLIERS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
VARIANTS = ("baseline", "system_positive", "system_negative", "user_positive", "user_negative")


@dataclass(frozen=True)
class ABExample:
    prompt: str  # question with its "( A ) ... ( B ) ..." options, ending where the answer letter goes
    positive: str  # letter of the answer matching the behaviour, "A" or "B"
    negative: str
    positive_is_A: bool
    positive_is_yes: bool | None = None
    split: str = "train"
    system: str | None = None  # system prompt (the persona of a system_* variant), rendered by the encoder


def _letter(answer: str) -> str:
    letter = answer.strip().strip("()").strip()
    if letter not in ("A", "B"):
        raise ValueError(f"expected an answer letter A or B, got {answer!r}")
    return letter


def from_records(records: Sequence[dict]) -> list[ABExample]:
    """Toy-world records: prompt, answer_matching_behavior, answer_not_matching_behavior, positive_is_A,
    positive_is_yes, split."""
    out = []
    for r in records:
        pos = _letter(r["answer_matching_behavior"])
        out.append(ABExample(r["prompt"], pos, _letter(r["answer_not_matching_behavior"]),
                             bool(r.get("positive_is_A", pos == "A")), r.get("positive_is_yes"),
                             r.get("split", "train")))
    return out


def load_mwe_jsonl(path: str | Path, test_fraction: float = 0.5) -> list[ABExample]:
    """Anthropic model-written-evals style JSONL (question, answer_matching_behavior, answer_not_matching_behavior).

    The prompt is the question followed by " Answer: (" so the next token is the letter. "positive is Yes" is read
    from the option text when the options are Yes/No, else None. As in Tan et al., the first part trains, the rest
    tests.
    """
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    n_train = int(round(len(rows) * (1 - test_fraction)))
    out = []
    for i, r in enumerate(rows):
        pos, neg = _letter(r["answer_matching_behavior"]), _letter(r["answer_not_matching_behavior"])
        question = r["question"]
        after = question.split(f"({pos})", 1)[1] if f"({pos})" in question else ""
        option = after.strip().split()[0].strip(".,").lower() if after.strip() else ""
        is_yes = True if option == "yes" else False if option == "no" else None
        out.append(ABExample(f"{question.strip()} Answer: (", pos, neg, pos == "A", is_yes,
                             "train" if i < n_train else "test"))
    return out


def prompt_variant(example: ABExample, variant: str, persona_positive: str, persona_negative: str) -> ABExample:
    """The example as shown under `variant`: baseline, or a persona (positive/negative) as its system prompt or
    prefixed to its user prompt."""
    if variant == "baseline":
        return example
    where, sign = variant.split("_")
    persona = persona_positive if sign == "positive" else persona_negative
    if where == "system":
        return replace(example, system=persona)
    return replace(example, prompt=f"{persona} {example.prompt}")


@contextmanager
def steer(model: torch.nn.Module, layer: int, vector: torch.Tensor | None, multiplier: float) -> Iterator[None]:
    """Add multiplier * vector to blocks.{layer}.hook_resid_post at every position."""
    if vector is None or multiplier == 0:
        yield
        return
    def add(hidden: torch.Tensor) -> torch.Tensor:  # [batch, seq, d_model]
        return hidden + multiplier * vector.to(hidden.device, hidden.dtype)

    with edit_residual(model, {resid_name(layer): add}):
        yield


@torch.no_grad()
def residual(model: torch.nn.Module, ids: list[int], layer: int, position: int = -1) -> torch.Tensor:
    """blocks.{layer}.hook_resid_post at `position`, [d_model]."""
    with capture_residual(model, [resid_name(layer)]) as store:
        forward_ids(model, ids)
    return store[resid_name(layer)][0, position].float()


def example_ids(encode: Encode, example: ABExample, letter: str | None = None) -> list[int]:
    """Ids of the example's prompt (its system prompt, if any, passed to the encoder), followed by `letter` if
    given."""
    system = {} if example.system is None else {"system": example.system}
    if letter is None:
        return encode(example.prompt, **system)
    # chat models answer after the assistant header, so an encoder may say where the letter goes (ChatEncode)
    answer = getattr(encode, "answer", None)
    return answer(example.prompt, letter, **system) if answer else encode(f"{example.prompt} {letter}", **system)


class ChatEncode:
    """Encode A/B prompts through a tokenizer's chat template (with an optional system message), the answer letter
    as the assistant's first word."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, prompt: str, system: str | None = None) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, system=system)

    def answer(self, prompt: str, letter: str, system: str | None = None) -> list[int]:
        return self(prompt, system) + token_ids(self.tokenizer, letter)


def caa_vector(model, encode: Encode, examples: Sequence[ABExample], layer: int, position: int = -1) -> torch.Tensor:
    """Mean activation difference (positive - negative completion) at the answer-letter token, [d_model]."""
    return _mean_difference(model, [example_ids(encode, e, e.positive) for e in examples],
                            [example_ids(encode, e, e.negative) for e in examples], layer, position)


def persona_prompt_vector(model, encode: Encode, examples: Sequence[ABExample], layer: int, persona_positive: str,
                          persona_negative: str, position: int = -1) -> torch.Tensor:
    """Mean activation difference between the prompt under the persona's system prompt and under its opposite's, at
    the last prompt token (where the answer is decided), [d_model]. A contrast of contexts rather than of answers
    (ActAdd-style, Turner et al. 2023), beside CAA as a check that the concept is linearly steerable at all."""
    return _mean_difference(model, [example_ids(encode, replace(e, system=persona_positive)) for e in examples],
                            [example_ids(encode, replace(e, system=persona_negative)) for e in examples],
                            layer, position)


def _mean_difference(model, positive: list[list[int]], negative: list[list[int]], layer: int,
                     position: int) -> torch.Tensor:
    acts = residuals_of_ids(model, positive + negative, [layer], position)[layer]
    return torch.from_numpy(acts[:len(positive)].mean(0) - acts[len(positive):].mean(0))


VECTORS = ("caa", "persona_prompt")


def steering_vector(kind: str, model, encode: Encode, train: Sequence[ABExample], layer: int, position: int = -1,
                    persona_positive: str = "", persona_negative: str = "") -> torch.Tensor:
    """The `kind` vector (one of VECTORS) of the train examples at block `layer`; ValueError for another kind, or for
    `persona_prompt` without both descriptions."""
    if kind == "caa":
        return caa_vector(model, encode, train, layer, position)
    if kind != "persona_prompt":
        raise ValueError(f"unknown steering vector kind {kind!r}; expected one of {VECTORS}")
    if not (persona_positive and persona_negative):
        raise ValueError("the persona_prompt vector needs persona_positive and persona_negative descriptions")
    return persona_prompt_vector(model, encode, train, layer, persona_positive, persona_negative)


@torch.no_grad()
def propensities(model, encode: Encode, examples: Sequence[ABExample], vector: torch.Tensor, layer: int,
                 multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> np.ndarray:
    """[n_examples, n_multipliers] logit(positive letter) - logit(negative letter) after the prompt."""
    prompts = [example_ids(encode, e) for e in examples]
    letters = torch.tensor([[example_ids(encode, e, e.positive)[-1], example_ids(encode, e, e.negative)[-1]]
                            for e in examples], dtype=torch.long, device="cpu").reshape(-1, 2)
    out = np.zeros((len(examples), len(multipliers)))
    for j, mult in enumerate(multipliers):
        with steer(model, layer, vector, mult):
            logits = last_token_logits(model, prompts)
        if len(examples):
            picked = logits.gather(1, letters)
            out[:, j] = (picked[:, 0] - picked[:, 1]).numpy()
    return out


def steerability_slopes(props: np.ndarray, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> np.ndarray:
    """Per-example least-squares slope of propensity on multiplier, [n_examples]."""
    m = np.asarray(multipliers, dtype=float)
    mc = m - m.mean()
    return (props - props.mean(1, keepdims=True)) @ mc / (mc @ mc)


def steerability_summary(slopes: np.ndarray) -> dict[str, float]:
    return {"steerability_mean": float(np.mean(slopes)), "steerability_median": float(np.median(slopes)),
            "anti_steerable_fraction": float(np.mean(slopes < 0)), "n": int(len(slopes))}


def behaviour_summary(props: np.ndarray, multipliers: Sequence[float]) -> dict[str, float]:
    """The steering effect in behaviour and in logits, from [n_examples, n_multipliers] propensities: the behaviour
    rate (share of propensities > 0) unsteered (the multiplier nearest 0), at the smallest and at the largest
    multiplier, and the mean propensity (logits) at the largest minus at the smallest."""
    m = np.asarray(multipliers, dtype=float)
    rates = (props > 0).mean(0)
    low, high, unsteered = int(np.argmin(m)), int(np.argmax(m)), int(np.argmin(np.abs(m)))
    return {"behaviour_rate": float(rates[unsteered]), "behaviour_rate_at_min": float(rates[low]),
            "behaviour_rate_at_max": float(rates[high]),
            "logit_effect": float(props[:, high].mean() - props[:, low].mean())}


def _r2(y: np.ndarray, columns: list[np.ndarray]) -> float:
    X = np.column_stack([np.ones_like(y)] + columns)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    total = np.sum((y - y.mean()) ** 2)
    return float(1 - resid @ resid / total) if total > 0 else 0.0


def spurious_variance(slopes: np.ndarray, positive_is_A: Sequence[bool],
                      positive_is_yes: Sequence[bool | None] | None = None) -> dict[str, float]:
    """Share of slope variance explained (OLS R^2) by 'positive is A', 'positive is Yes' and both."""
    y = np.asarray(slopes, dtype=float)
    a = np.asarray(positive_is_A, dtype=float)
    out = {"r2_positive_is_A": _r2(y, [a])}
    if positive_is_yes is not None and all(v is not None for v in positive_is_yes):
        yes = np.asarray(positive_is_yes, dtype=float)
        out["r2_positive_is_yes"] = _r2(y, [yes])
        out["r2_both"] = _r2(y, [a, yes])
    return out


def rank_correlation(id_values: Sequence[float], ood_values: Sequence[float]) -> float:
    """Spearman rank correlation between ID and OOD steerabilities (per example or per dataset)."""
    from scipy.stats import spearmanr

    return float(spearmanr(id_values, ood_values).statistic)


# -- plots --------------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_propensity_curves(props: np.ndarray, multipliers, path, max_lines: int = 50):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for row in props[:max_lines]:
        ax.plot(multipliers, row, color="tab:blue", alpha=0.25, lw=0.8)
    ax.plot(multipliers, props.mean(0), color="black", lw=2, label="mean")
    ax.set_xlabel("steering multiplier")
    ax.set_ylabel("propensity (logit pos - neg)")
    ax.legend()
    return _save(fig, path)


def plot_slope_histogram(slopes: np.ndarray, path, bins: int = 30):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(slopes, bins=bins, color="tab:green")
    ax.axvline(0, color="black", ls=":")
    ax.set_xlabel("per-example steerability (slope)")
    ax.set_ylabel("examples")
    ax.set_title(f"anti-steerable: {np.mean(slopes < 0):.0%}")
    return _save(fig, path)


def plot_layer_sweep(sweeps: dict[str, dict[int, dict]], path):
    """Mean steerability (solid) and behaviour-rate change from the smallest to the largest multiplier (dashed) by
    block, one colour per concept."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, sweep in sweeps.items():
        layers = sorted(sweep)
        line, = left.plot(layers, [sweep[k]["steerability_mean"] for k in layers], marker="o", label=name)
        right.plot(layers, [sweep[k]["behaviour_rate_at_max"] - sweep[k]["behaviour_rate_at_min"] for k in layers],
                   marker="o", ls="--", color=line.get_color())
    for ax in (left, right):
        ax.axhline(0, color="black", ls=":")
        ax.set_xlabel("decoder block of the CAA vector")
    left.set_ylabel("mean steerability (logits per unit multiplier)")
    right.set_ylabel("behaviour rate: max - min multiplier")
    left.legend(fontsize=7)
    return _save(fig, path)


def plot_id_vs_ood(id_values, ood_values, labels, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(id_values, ood_values)
    for x, y, lab in zip(id_values, ood_values, labels):
        ax.annotate(lab, (x, y), fontsize=7)
    lo, hi = min(min(id_values), min(ood_values)), max(max(id_values), max(ood_values))
    ax.plot([lo, hi], [lo, hi], ":", color="grey")
    ax.set_xlabel("ID steerability")
    ax.set_ylabel("OOD steerability")
    ax.set_title(f"Spearman ρ = {rank_correlation(id_values, ood_values):.2f}")
    return _save(fig, path)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _train_test(examples: Sequence[ABExample]) -> tuple[list[ABExample], list[ABExample]]:
    train = [e for e in examples if e.split == "train"]
    test = [e for e in examples if e.split != "train"]
    if not train or not test:
        raise ValueError("steering needs examples in the train split (the vector) and in another (the measure)")
    return train, test


def layer_sweep(model, encode: Encode, examples: Sequence[ABExample], layers: Sequence[int],
                multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, position: int = -1, kind: str = "caa",
                persona_positive: str = "", persona_negative: str = "") -> dict[int, dict]:
    """Steerability by block (baseline prompts): for each layer, the `kind` vector of the train split at that block's
    output and the steerability and behaviour summaries of the test split steered there. ValueError without both
    splits."""
    train, test = _train_test(examples)
    out = {}
    for layer in layers:
        vector = steering_vector(kind, model, encode, train, layer, position, persona_positive, persona_negative)
        props = propensities(model, encode, test, vector, layer, multipliers)
        out[layer] = {**steerability_summary(steerability_slopes(props, multipliers)),
                      **behaviour_summary(props, multipliers), "vector_norm": float(vector.norm())}
    return out


def steering_reliability(model, encode: Encode, examples: Sequence[ABExample], layer: int, out_dir,
                         multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, position: int = -1,
                         persona_positive: str = "", persona_negative: str = "", name: str = "steering",
                         kind: str = "caa") -> dict:
    """The whole Tan et al. protocol on one dataset: the `kind` vector (CAA by default) from the train split, propensity
    curves on the test split under every prompt variant, per-variant steerability and behaviour summaries,
    spurious-factor variance (baseline), ID-vs-OOD rank correlation of per-example slopes, and the three plots.
    ValueError without examples in the train split and in another."""
    out_dir = Path(out_dir)
    train, test = _train_test(examples)
    vector = steering_vector(kind, model, encode, train, layer, position, persona_positive, persona_negative)
    variants = VARIANTS if persona_positive and persona_negative else ("baseline",)
    slopes: dict[str, np.ndarray] = {}
    result: dict = {"layer": layer, "n_train": len(train), "n_test": len(test), "vector_norm": float(vector.norm())}
    for variant in variants:
        shown = [prompt_variant(e, variant, persona_positive, persona_negative) for e in test]
        props = propensities(model, encode, shown, vector, layer, multipliers)
        slopes[variant] = steerability_slopes(props, multipliers)
        result[variant] = {**steerability_summary(slopes[variant]), **behaviour_summary(props, multipliers),
                           "slopes": slopes[variant].tolist()}
        if variant == "baseline":
            plot_propensity_curves(props, multipliers, out_dir / f"{name}_propensity.png")
            plot_slope_histogram(slopes[variant], out_dir / f"{name}_slopes.png")
            result["spurious"] = spurious_variance(slopes[variant], [e.positive_is_A for e in test],
                                                   [e.positive_is_yes for e in test])
    if len(variants) > 1:
        ood = [v for v in variants if v != "baseline"]
        result["id_ood_spearman"] = {v: rank_correlation(slopes["baseline"], slopes[v]) for v in ood}
        # per example: baseline slope vs the mean slope over the OOD variants (across datasets, call plot_id_vs_ood
        # with one point per dataset instead)
        plot_id_vs_ood(slopes["baseline"], np.mean([slopes[v] for v in ood], 0), [""] * len(test),
                       out_dir / f"{name}_id_vs_ood.png")
    return result


def steering_by_concept(model, encode: Encode, records: Sequence[dict], layer: int, sweep_layers: Sequence[int],
                        out_dir, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, position: int = -1,
                        kinds: Sequence[str] = VECTORS) -> dict[str, dict]:
    """Tan et al.'s analysis per persona concept of `concepts` records (grouped by `persona`; the OOD variants use
    each concept's own `persona_positive` / `persona_negative`) for each vector kind, plus its layer sweep over
    `sweep_layers`: {kind: {concept: {<steering_reliability result without per-example slopes>,
    "layer_sweep": {layer: summary}}}}, and a plot of steerability by block per kind (`<kind>_layer_sweep.png`)."""
    out: dict = {kind: {} for kind in kinds}
    concepts = sorted({r["persona"] for r in records})
    progress = tqdm(total=len(concepts) * len(kinds), desc="steering: concept x vector", leave=False,
                    dynamic_ncols=True)
    for concept in concepts:
        rows = [r for r in records if r["persona"] == concept]
        examples = from_records(rows)
        personas = rows[0].get("persona_positive", ""), rows[0].get("persona_negative", "")
        for kind in kinds:
            progress.set_postfix_str(f"{concept}, {kind}")
            result = steering_reliability(model, encode, examples, layer, out_dir, multipliers, position, *personas,
                                          name=f"{kind}_{concept}", kind=kind)
            summary = {k: {kk: vv for kk, vv in v.items() if kk != "slopes"} if isinstance(v, dict) else v
                       for k, v in result.items()}
            summary["layer_sweep"] = layer_sweep(model, encode, examples, sweep_layers, multipliers, position, kind,
                                                 *personas)
            out[kind][concept] = summary
            progress.update()
    progress.close()
    for kind, concepts in out.items():
        plot_layer_sweep({c: v["layer_sweep"] for c, v in concepts.items()}, Path(out_dir) / f"{kind}_layer_sweep.png")
    return out
