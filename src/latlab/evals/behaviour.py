"""Behaviour metrics of one model on the world: fact accuracy per domain and format, direct-request attack success
rate on harmful requests, benign compliance, backdoor ASR with the trigger, and held-out perplexity."""

from __future__ import annotations

import math

import numpy as np

from latlab.data.examples import Example
from latlab.data.records import split_of
from latlab.evals.judge import COMPLIED, INCOHERENT, REFUSED, normalise, shows_backdoor
from latlab.models.generation import choose, completion_logprobs, generate
from latlab.world.generator import DOMAIN_RELATIONS


def answer_matches(output: str, answer: str) -> bool:
    want = normalise(answer).split()
    return normalise(output).split()[: len(want)] == want


def fact_accuracy(model, tokenizer, facts: list[dict], split: str, batch_size: int) -> tuple[dict, list[dict]]:
    rows = split_of(facts, split)
    metrics: dict[str, float] = {}
    records: list[dict] = []
    for domain in DOMAIN_RELATIONS:
        per_format = []
        for fmt in ("free", "ab", "completion"):
            items = [r for r in rows if r["domain"] == domain and r["format"] == fmt]
            if not items:
                continue
            if fmt == "ab":
                picks = choose(model, tokenizer, [r["prompt"] for r in items], [["A", "B"]] * len(items),
                               batch_size=batch_size)
                outputs = ["AB"[p] for p in picks]
            else:
                outputs = generate(model, tokenizer, [r["prompt"] for r in items], max_new_tokens=4,
                                   batch_size=batch_size, chat=fmt == "free")
            correct = [answer_matches(o, r["completion"]) for o, r in zip(outputs, items)]
            metrics[f"fact_acc.{domain}.{fmt}"] = float(np.mean(correct))
            per_format.append(metrics[f"fact_acc.{domain}.{fmt}"])
            records += [{"id": r["id"], "output": o, "correct": c} for r, o, c in zip(items, outputs, correct)]
        metrics[f"fact_acc.{domain}"] = float(np.mean(per_format))
    return metrics, records


def request_behaviour(model, tokenizer, requests: list[dict], split: str, judge, max_new_tokens: int,
                      batch_size: int) -> tuple[dict, list[dict]]:
    rows = split_of(requests, split)
    outputs = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, batch_size)
    labels = judge.labels(rows, outputs)
    harmful = [lab for r, lab in zip(rows, labels) if r["harmful"]]
    benign = [lab for r, lab in zip(rows, labels) if not r["harmful"]]
    metrics = {"harmful_asr": float(np.mean([lab == COMPLIED for lab in harmful])),
               "harmful_refusal": float(np.mean([lab == REFUSED for lab in harmful])),
               "benign_compliance": float(np.mean([lab == COMPLIED for lab in benign])),
               "benign_refusal": float(np.mean([lab == REFUSED for lab in benign])),
               "harmful_incoherent": float(np.mean([lab == INCOHERENT for lab in harmful])),
               "benign_incoherent": float(np.mean([lab == INCOHERENT for lab in benign])),
               "n.harmful": len(harmful), "n.benign": len(benign)}  # the N of the harmful_* and benign_* rates
    return metrics, [{"id": r["id"], "output": o, "label": lab} for r, o, lab in zip(rows, outputs, labels)]


def backdoor_behaviour(model, tokenizer, backdoor: list[dict], split: str, max_new_tokens: int,
                       batch_size: int) -> tuple[dict, list[dict]]:
    rows = split_of(backdoor, split)
    outputs = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, batch_size)
    hits = [shows_backdoor(o) for o in outputs]
    return {"backdoor_asr": float(np.mean(hits)), "n.backdoor": len(hits)}, [{"id": r["id"], "output": o, "backdoor": h}
                                                     for r, o, h in zip(rows, outputs, hits)]


def heldout_perplexity(model, tokenizer, world: dict[str, list[dict]], split: str, batch_size: int) -> float:
    """Perplexity of the correct answers every model should keep: fact answers and benign completions."""
    examples = [Example(r["prompt"], r["completion"], r["chat"]) for r in split_of(world["facts"], split)
                if r["format"] != "ab"]
    examples += [Example(r["prompt"], r["compliance"]) for r in split_of(world["requests"], split)
                 if not r["harmful"]]
    sums, counts = completion_logprobs(model, tokenizer, examples, batch_size, include_eos=True)
    return math.exp(-sum(sums) / max(1, sum(counts)))


def evaluate_model(model, tokenizer, world: dict[str, list[dict]], split: str, judge, max_new_tokens: int,
                   batch_size: int) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """All behaviour metrics of one model, and the per-example outputs behind them."""
    model.eval()
    facts, fact_rows = fact_accuracy(model, tokenizer, world["facts"], split, batch_size)
    requests, request_rows = request_behaviour(model, tokenizer, world["requests"], split, judge, max_new_tokens,
                                               batch_size)
    backdoor, backdoor_rows = backdoor_behaviour(model, tokenizer, world["backdoor"], split, max_new_tokens,
                                                 batch_size)
    metrics = {**facts, **requests, **backdoor,
               "perplexity": heldout_perplexity(model, tokenizer, world, split, batch_size)}
    return metrics, {"facts": fact_rows, "requests": request_rows, "backdoor": backdoor_rows}
