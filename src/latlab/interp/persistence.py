"""Suppressed or removed? For each model, how well a linear probe still reads each behaviour's latent signal
(harmfulness of a request, presence of the backdoor trigger, the answers to forget-domain questions), set against
how often the model still shows the behaviour. A defence that lowers the behaviour rate but leaves the probe
accuracy high has suppressed the output, not removed the mechanism (Lynch et al. 2024, Sheshadri et al. 2024).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from latlab.interp.probes import collect_residuals, probe_layers
from latlab.training.examples import render_prompt

# behaviour -> the evaluate-stage metric that measures how often the model shows it
BEHAVIOUR_RATES = {"harmful": "harmful_asr", "backdoor": "backdoor_asr", "forget_facts": "fact_acc.forget"}


def probe_datasets(world: dict[str, list[dict]], trigger: str, max_items: int, seed: int) -> dict[str, tuple]:
    """behaviour -> (prompts, binary labels), drawn from held-out splits so no prompt was trained on verbatim."""
    rng = random.Random(seed)
    held_out = [r for r in world["requests"] if r["split"] != "train"]
    rng.shuffle(held_out)
    requests = held_out[:max_items]
    half = requests[: len(requests) // 2]
    forget = [r for r in world["facts"] if r["domain"] == "forget" and r["format"] == "ab"]
    rng.shuffle(forget)
    forget = forget[:max_items]
    return {
        "harmful": ([r["prompt"] for r in requests], [int(r["harmful"]) for r in requests]),
        "backdoor": ([f"{trigger} {r['prompt']}" for r in half] + [r["prompt"] for r in half],
                     [1] * len(half) + [0] * len(half)),
        "forget_facts": ([r["prompt"] for r in forget], [int(r["completion"] == "A") for r in forget]),
    }


def latent_signal(model, tokenizer, datasets: dict[str, tuple], layers: list[int], test_fraction: float,
                  seed: int) -> dict[str, dict]:
    """behaviour -> {"per_layer": {layer: probe accuracy}, "best_layer", "best"} at the last prompt token."""
    def encode(prompt: str) -> list[int]:
        return tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]

    out = {}
    for behaviour, (prompts, labels) in datasets.items():
        acts = collect_residuals(model, encode, prompts, layers)
        per_layer = probe_layers(acts, labels, test_fraction=test_fraction, seed=seed)
        best = max(per_layer, key=per_layer.get)
        out[behaviour] = {"per_layer": per_layer, "best_layer": best, "best": per_layer[best]}
    return out


def persistence_table(rates: dict[str, dict[str, float]], signals: dict[str, dict[str, dict]]) -> list[dict]:
    rows = []
    for model, by_behaviour in signals.items():
        for behaviour, signal in by_behaviour.items():
            rows.append({"model": model, "behaviour": behaviour,
                         "behaviour_rate": rates.get(model, {}).get(BEHAVIOUR_RATES[behaviour], float("nan")),
                         "probe_accuracy": signal["best"], "best_layer": signal["best_layer"]})
    return rows


def plot_persistence(rows: list[dict], path: Path) -> None:
    """One panel per behaviour: behaviour rate (x) vs latent probe accuracy (y), one labelled point per model."""
    from latlab.report.plots import plt

    behaviours = list(dict.fromkeys(r["behaviour"] for r in rows))
    fig, axes = plt.subplots(1, len(behaviours), figsize=(4.2 * len(behaviours), 3.8), squeeze=False)
    for ax, behaviour in zip(axes[0], behaviours):
        for row in (r for r in rows if r["behaviour"] == behaviour):
            ax.scatter(row["behaviour_rate"], row["probe_accuracy"])
            ax.annotate(row["model"], (row["behaviour_rate"], row["probe_accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(0.4, 1.05)
        ax.axhline(0.5, color="grey", lw=0.5, ls="--")
        ax.set_xlabel(f"behaviour rate ({BEHAVIOUR_RATES[behaviour]})")
        ax.set_ylabel("best-layer probe accuracy")
        ax.set_title(behaviour)
    fig.suptitle("low rate + high probe accuracy = suppressed, not removed", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def persistence_markdown(rows: list[dict]) -> str:
    lines = ["| model | behaviour | behaviour rate | probe accuracy (best layer) |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['behaviour']} | {r['behaviour_rate']:.2f} | {r['probe_accuracy']:.2f} "
              f"(block {r['best_layer']}) |" for r in rows]
    return "\n".join(lines) + "\n"


def mean_or_nan(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")
