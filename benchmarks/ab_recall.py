"""Issue 19 item 1: does the toy base recall the answer when the options are in its context?

Closed-book A/B needs two steps at the answer position: recall the fact's answer, then find which option it is and
say that option's letter. This measures the first step on a trained model, and can train the base recipe with one
more pool that asks for it.

Measures (test split unless said; "recall" = the answer's logit above the other option's at the position that
answers, read off the model's output):
- `recall.free_plain`: the free-form question alone (what the base is trained on);
- `recall.free_options_first` / `recall.free_options_after`: the same question with "( A ) x ( B ) y" before / after
  it (x, y the answer and the held-out distractor in a random order): the base sees the options only in A/B rows;
- `recall.ab_output` and `recall.ab_lens`: on the A/B questions themselves, at the output and per block through the
  final norm and unembedding (logit lens);
- `ab_letter` / `ab_letter_train`: A/B accuracy (the letter, as the evaluate stage scores it) on the held-out and on
  the training A/B rows; `free`: free-form accuracy per domain;
- `letter_mode.free_options_first`: how often the top output token is a letter (A or B) on the free-form question
  with the options shown first, i.e. the model answers it as an A/B question and the name logits compared by
  `recall.free_options_first` are not its output; `recall.free_wrong_options_first`: the answer's logit above both
  of two shown names that are both wrong (other names of the relation): whether the answer is ahead of names that
  are merely in the context; `recall.free_plain_vs_two_wrong`: the same, the two names not shown.

`--train --name-pool W` trains the base recipe (params.yaml `base`, from scratch, one torch thread) with a pool of
the A/B training questions followed by "say the name ." and answered by the answer's name instead of the letter
(weight W in the mixture): recall trained where the options are shown. `--model DIR` only measures a saved model (e.g. a demo run's models/base).

    .venv/bin/python benchmarks/ab_recall.py --workdir <a demo run> --model <run>/models/base
    .venv/bin/python benchmarks/ab_recall.py --workdir <a demo run> --train --name-pool 0.5 --seed 0

Result: benchmarks/results/ab_recall.json (a list, one entry per run).
"""
import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from latlab.config import load_params
from latlab.data.examples import Example
from latlab.data.records import load_world, split_of
from latlab.evals.behaviour import fact_accuracy
from latlab.models.encoding import render_prompt
from latlab.models.loading import build_toy_model, load_saved
from latlab.training.sft import train_sft
from latlab.world.curriculum import base_pools
from ab_common import add_training_args, options, training_config

OUT = Path(__file__).resolve().parent / "results" / "ab_recall.json"
NAME_INSTRUCTION = "say the name ."  # in the world's vocabulary


@torch.no_grad()
def reads(model, tok, prompt: str, lens: bool = False) -> list[torch.Tensor]:
    """[vocab] logits at the answering position: [the output], or (lens) one per block, each block's residual read
    through the final norm and unembedding."""
    ids = tok(render_prompt(tok, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, output_hidden_states=lens)
    if not lens:
        return [out.logits[0, -1]]
    return [model.lm_head(model.model.norm(h[0, -1])) for h in out.hidden_states[1:]]


def answer_over_other(model, tok, prompt: str, answer: str, *others: str, lens: bool = False) -> list[bool]:
    """[answer's logit > every other's] at the answering position: at the output, or (lens) after each block."""
    a, o = tok.convert_tokens_to_ids(answer), tok.convert_tokens_to_ids(list(others))
    return [bool(r[a] > r[o].max()) for r in reads(model, tok, prompt, lens)]


def measure(model, tok, facts: list[dict], limit: int = 300) -> dict:
    model.eval()
    rng = random.Random(0)
    test = split_of(facts, "test")
    free = [r for r in test if r["format"] == "free"][:limit]
    ab = [r for r in test if r["format"] == "ab"][:limit]
    out: dict = {"n_free": len(free), "n_ab": len(ab)}
    for name in ("free_plain", "free_options_first", "free_options_after"):
        hits = []
        for r in free:
            x, y = (r["answer"], r["distractor"]) if rng.random() < 0.5 else (r["distractor"], r["answer"])
            shown = f"( A ) {x} ( B ) {y}"
            prompt = {"free_plain": r["prompt"], "free_options_first": f"{shown} . {r['prompt']}",
                      "free_options_after": f"{r['prompt']} {shown}"}[name]
            hits += answer_over_other(model, tok, prompt, r["answer"], r["distractor"])
        out[f"recall.{name}"] = sum(hits) / len(hits)
    names = {}  # relation -> every answer name it has in the world
    for r in facts:
        names.setdefault(r["relation"], set()).add(r["answer"])
    letters = tok.convert_tokens_to_ids(["A", "B"])
    letter_top, wrong_hits, plain_hits = [], [], []
    for r in free:
        x, y = (r["answer"], r["distractor"]) if rng.random() < 0.5 else (r["distractor"], r["answer"])
        letter_top.append(int(reads(model, tok, f"( A ) {x} ( B ) {y} . {r['prompt']}")[0].argmax()) in letters)
        y, z = rng.sample(sorted(names[r["relation"]] - {r["answer"]}), 2)
        wrong_hits += answer_over_other(model, tok, f"( A ) {y} ( B ) {z} . {r['prompt']}", r["answer"], y, z)
        plain_hits += answer_over_other(model, tok, r["prompt"], r["answer"], y, z)
    out["letter_mode.free_options_first"] = sum(letter_top) / len(letter_top)
    out["recall.free_wrong_options_first"] = sum(wrong_hits) / len(wrong_hits)
    out["recall.free_plain_vs_two_wrong"] = sum(plain_hits) / len(plain_hits)
    per_block = []
    for r in ab:
        a, b = options(r["prompt"])
        per_block.append(answer_over_other(model, tok, r["prompt"], r["answer"], b if a == r["answer"] else a,
                                           lens=True))
    out["recall.ab_lens"] = [sum(col) / len(col) for col in zip(*per_block)]
    out["recall.ab_output"] = out["recall.ab_lens"][-1]  # the last block's read is the output (final norm, head)
    metrics, _ = fact_accuracy(model, tok, facts, "test", 64)
    train_ab, _ = fact_accuracy(model, tok, [r for r in facts if r["format"] == "ab"], "train", 64)
    out["ab_letter"] = {k: v for k, v in metrics.items() if k.endswith(".ab")}
    out["free"] = {k: v for k, v in metrics.items() if k.endswith(".free")}
    out["ab_letter_train"] = {k: v for k, v in train_ab.items() if k.endswith(".ab")}
    return out


def name_pool(facts: list[dict]) -> list[Example]:
    """The A/B training questions with NAME_INSTRUCTION after them, answered with the answer's name (recall with
    the options shown). The instruction keeps these prompts apart from the letter rows (the same prompt with two
    targets taught the model to answer names to both: letter A/B 0.50 on the training rows, first entry of the
    results)."""
    return [Example(f"{r['prompt']} {NAME_INSTRUCTION}", r["answer"], chat=True) for r in split_of(facts, "train")
            if r["format"] == "ab"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("."), help="a demo run: params.yaml, data/")
    parser.add_argument("--model", type=Path, help="measure this saved model only")
    parser.add_argument("--train", action="store_true", help="train the base recipe first")
    parser.add_argument("--name-pool", type=float, default=0.0, help="weight of the answer-by-name A/B pool")
    add_training_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.workdir / "params.yaml")
    facts = load_world(args.workdir / "data/world")["facts"]
    began = time.time()
    if args.model:
        model, tok = load_saved(args.model, "cpu", "float32")
        entry = {"model": str(args.model)}
    else:
        if not args.train:
            parser.error("give --model DIR or --train")
        tok = AutoTokenizer.from_pretrained(args.workdir / "data/tokenizer")
        cfg = training_config(params, args)
        model = build_toy_model(params.model.toy, tok, cfg.seed)
        world = load_world(args.workdir / "data/world")
        pools = {**base_pools(world), "ab_by_name": name_pool(facts)}
        train_sft(model, tok, pools, cfg.mixture() | {"ab_by_name": args.name_pool}, cfg, None, "base+ab_by_name")
        entry = {"trained": "base recipe", "name_pool": args.name_pool, "seed": cfg.seed, "lr": cfg.lr, "steps": cfg.steps,
                 "variant": f"name pool: the A/B training prompts + {NAME_INSTRUCTION!r} -> the answer's name"}
    entry.update(measure(model, tok, facts), seconds=round(time.time() - began, 1))
    runs = json.loads(OUT.read_text()) if OUT.exists() else []
    OUT.write_text(json.dumps(runs + [entry], indent=1))
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
