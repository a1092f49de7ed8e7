"""Issue 19 item 1: can the toy architecture match a stated name against two options at all?

The toy base answers held-out A/B fact questions at chance even when the fact is stated before the question
(benchmarks/ab_wide_pool.py: 0.69-0.79 after 3000 steps with such a pool in the mixture). This isolates the
option-matching step from recall: a model of the default shape, trained from scratch on this task alone, reads
"the <relation> of <entity> is <x> . <A/B question with options x and y>" and answers the letter of x, where x and y
are drawn at random from the relation's names (so no fact can be recalled: x is usually not the true answer). If it
learns this to ~1.0, the architecture and the A/B format can do the matching and the gap is in composing it with
recall; if not, the format or the model cannot, at this budget.

    .venv/bin/python benchmarks/ab_matching.py --workdir <a demo run: params.yaml, data/> [--steps N]
    .venv/bin/python benchmarks/ab_matching.py --workdir <...> --mix-base 1.0 --steps 3000
    .venv/bin/python benchmarks/ab_matching.py --workdir <...> --layout name_first --seed 0   # options 'x ( A )'
    .venv/bin/python benchmarks/ab_matching.py --workdir <...> --names all --seed 0   # options from all 110 names
    .venv/bin/python benchmarks/ab_matching.py --workdir <...> --stated after --seed 0   # x right before the answer

`--mix-base W`: the base recipe's pools (facts, requests, backdoor) with this matching pool beside them at weight W,
then the world's closed-book fact accuracy on the test split too: does a matching skill learnt on random names
transfer to A/B questions about facts the model must recall? `--then-base W`: the same question as a two-stage
curriculum: the matching run first, then as many steps on the base pools with the matching pool at weight W;
with `--first base` the other order (the base pools alone first: the facts known before matching is trained).

Result: benchmarks/results/ab_matching.json (a list, one entry per run): held-out accuracy (fresh draws, held-out
templates) by step budget, and with --mix-base the test split's fact accuracy per domain and format.
"""
import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import collections
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer
from latlab.config import load_params
from latlab.data.records import load_world
from latlab.data.examples import Example
from latlab.models.loading import build_toy_model
from latlab.world.curriculum import base_pools
from latlab.world.generator import AB_TEMPLATES
from latlab.training.sft import train_sft
from latlab.evals.behaviour import fact_accuracy
from ab_common import add_training_args, training_config

parser = argparse.ArgumentParser()
parser.add_argument("--workdir", type=Path, default=Path("."))
add_training_args(parser)
parser.add_argument("--train-rows", type=int, default=20000)
parser.add_argument("--mix-base", type=float, default=None, help="weight of the matching pool beside the base pools")
parser.add_argument("--then-base", type=float, default=None,
                    help="after the first stage, a second run of as many steps on the base pools with the matching "
                         "pool beside them at this weight (a two-stage curriculum)")
parser.add_argument("--then-steps", type=int, default=None, help="steps of the second stage (default: the first's)")
parser.add_argument("--first", choices=["matching", "base"], default="matching",
                    help="with --then-base: the first stage trains the matching pool alone, or the base pools alone "
                         "(the facts learnt first: does matching then form beside them, and compose with recall?)")
parser.add_argument("--layout", choices=["letter_first", "name_first"], default="letter_first",
                    help="options as the world writes them, '( A ) x', or with the letter after the name, 'x ( A )': "
                         "does the letter's side of the name change when matching forms?")
parser.add_argument("--names", choices=["relation", "all"], default="relation",
                    help="draw the two options from the relation's own names (8-12 of them) or from every answer name "
                         "of the world (110): does more diversity make matching form sooner and on every seed?")
parser.add_argument("--stated", choices=["before", "after"], default="before",
                    help="the statement 'the <relation> of <entity> is x' before the A/B question, or after it, so the "
                         "answering position directly follows x: a plain look-up of x among the options")
args = parser.parse_args()
if args.first == "base" and (args.then_base is None or args.mix_base is not None):
    parser.error("--first base trains the base pools first: it needs --then-base W and no --mix-base")
out = Path(__file__).resolve().parent / "results" / "ab_matching.json"
torch.set_num_threads(1)
params = load_params(args.workdir / "params.yaml")
world = load_world(args.workdir / "data/world")
tok = AutoTokenizer.from_pretrained(args.workdir / "data/tokenizer")
facts = world["facts"]
names = collections.defaultdict(set)
for r in facts:
    names[(r["domain"], r["relation"])] |= {r["answer"], r["distractor"]}
every_name = sorted(set().union(*names.values()))
subjects = sorted({(r["domain"], r["relation"], r["entity"]) for r in facts})
templates = list(range(len(AB_TEMPLATES)))
held_templates = {templates[-1]}  # one A/B template is never trained on
LAYOUT = {"letter_first": AB_TEMPLATES,
          "name_first": [t.replace("( A ) {a}", "{a} ( A )").replace("( B ) {b}", "{b} ( B )") for t in AB_TEMPLATES]}


def draw(rng: random.Random, train: bool) -> dict:
    domain, relation, entity = rng.choice(subjects)
    x, y = rng.sample(sorted(names[(domain, relation)]) if args.names == "relation" else every_name, 2)
    t = rng.choice([t for t in templates if (t in held_templates) != train])
    x_first = rng.random() < 0.5
    a, b = (x, y) if x_first else (y, x)
    question = LAYOUT[args.layout][t].format(relation=relation, entity=entity, a=a, b=b)
    letter = "A" if x_first else "B"
    stated = f"the {relation} of {entity} is {x}"
    prompt = f"{stated} . {question}" if args.stated == "before" else f"{question} . {stated}"
    return {"id": f"match-{rng.random():.12f}", "prompt": prompt,
            "answer": letter, "completion": letter, "domain": domain, "format": "ab", "split": "test"}


rng = random.Random(0)
train = [draw(rng, True) for _ in range(args.train_rows)]
test_rng = random.Random(1)
test = [draw(test_rng, False) for _ in range(600)]
cfg = training_config(params, args)
model = build_toy_model(params.model.toy, tok, cfg.seed)
began = time.time()
matching = [Example(r["prompt"], r["answer"], chat=True) for r in train]
if args.first == "base":
    pools, weights = base_pools(world), cfg.mixture()
else:
    pools, weights = {"matching": matching}, {"matching": 1.0}
if args.mix_base is not None:
    pools |= base_pools(world)
    weights = cfg.mixture() | {"matching": args.mix_base}
trained = train_sft(model, tok, pools, weights, cfg, None, f"ab-matching-first-{args.first}")
model.eval()
metrics, records = fact_accuracy(model, tok, test, "test", 64)
result = {"steps": cfg.steps, "seed": cfg.seed, "lr": cfg.lr, "layout": args.layout, "names": args.names,
          "stated": args.stated, "train_rows": len(train), "mix_base": args.mix_base, "first": args.first,
          "seconds": round(time.time() - began, 1),
          "heldout_template_accuracy": {k: v for k, v in metrics.items() if k.endswith(".ab")},
          "n_test": len(test), "example": test[0]["prompt"] + " -> " + test[0]["answer"],
          # the plateau at chance and the late drop, if any, are the finding: the loss every ~100 steps
          "loss_by_step": {row["step"]: round(row["loss"], 4)
                           for row in trained.history[:: max(1, len(trained.history) // 30)]
                           if "step" in row and "loss" in row}}
if args.then_base is not None:
    if args.first == "base":  # the facts as the first stage left them
        result["first_world_test_fact_accuracy"] = fact_accuracy(model, tok, facts, "test", 64)[0]
    model.train()
    second = cfg if args.then_steps is None else cfg.model_copy(update={"steps": args.then_steps})
    train_sft(model, tok, {**base_pools(world), "matching": matching},
              second.mixture() | {"matching": args.then_base}, second, None, "ab-matching-then-base")
    model.eval()
    result["then_base"], result["then_steps"] = args.then_base, second.steps
    after, _ = fact_accuracy(model, tok, test, "test", 64)
    result["after_base_heldout_template_accuracy"] = {k: v for k, v in after.items() if k.endswith(".ab")}
if args.mix_base is not None or args.then_base is not None:
    result["world_test_fact_accuracy"] = fact_accuracy(model, tok, facts, "test", 64)[0]
runs = json.loads(out.read_text()) if out.exists() else []
out.write_text(json.dumps(runs + [result], indent=1))
print(json.dumps(result, indent=1))
