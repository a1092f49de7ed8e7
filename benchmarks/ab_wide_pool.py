"""Issue 19 item 1: does a wide A/B training pool make the toy base answer held-out A/B questions?

`--scb`: symbol-content binding (every A/B training row answers the letter and then the option's text).
`--name-first`: the reverse, the option's text and then its letter, scored by generation (a diagnostic only).

The world's A/B training rows show each train template once per fact, in both orders, with one distractor; the base
then answers held-out A/B questions at chance (0.44-0.59) and its own training rows barely better (0.53-0.57). This
adds a pool of every train template x every distractor of the fact's relation that no held-out question uses x both
orders (`--weight` in the base mixture), trains the base recipe from scratch at one torch thread and reports fact
accuracy per domain and format on the test split, and A/B accuracy on the training rows (memorisation) and on the held-out A/B questions with the fact stated first.
`--verify W` adds a yes/no verification pool ("is the capital of X lonim ?" for the answer and each such
distractor, yes and no balanced): comparing one recalled answer with one given name, the step A/B needs twice.
`--in-context W` adds the wide pool's questions with the fact stated first ("the capital of X is lonim . <A/B
question>"): the option-matching step taught where the answer need not be recalled, to see whether it transfers to
closed-book A/B.

    .venv/bin/python benchmarks/ab_wide_pool.py --workdir <a demo run: params.yaml, data/> --weight 0.5
    .venv/bin/python benchmarks/ab_wide_pool.py --workdir <...> --name-first --weight 0.5 --lr 0.001 --seed 1

Result: benchmarks/results/ab_wide_pool.json (a list, one entry per run).
"""
import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import collections
import json
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
from latlab.models.generation import generate
from ab_common import add_training_args, options, training_config

parser = argparse.ArgumentParser()
parser.add_argument("--workdir", type=Path, default=Path("."))
parser.add_argument("--weight", type=float, default=0.5)
parser.add_argument("--verify", type=float, default=0.0, help="weight of the yes/no verification pool")
parser.add_argument("--in-context", type=float, default=0.0, help="weight of the fact-in-context A/B pool")
parser.add_argument("--scb", action="store_true",
                    help="symbol-content binding (Xue et al. 2024, arXiv 2406.01026): every A/B training row answers "
                         "the letter and then the option's text ('A lonim'), so the loss also asks what the chosen "
                         "letter stands for; the first answer token, the one A/B accuracy reads, is still the letter")
parser.add_argument("--name-first", action="store_true",
                    help="every A/B training row answers the option's text and then its letter ('lonim A'): the fact "
                         "written out before the letter, a one-step chain of thought. Scored by greedy generation "
                         "(name, then letter), not by the pipeline's first-token judge: a diagnostic for the issue "
                         "owner's decision, not a candidate recipe")
add_training_args(parser)
args = parser.parse_args()
if args.scb and args.name_first:
    parser.error("--scb and --name-first put the text on opposite sides of the letter: choose one")
root, weight = args.workdir, args.weight
out = Path(__file__).resolve().parent / "results" / "ab_wide_pool.json"
torch.set_num_threads(1)
params = load_params(root / "params.yaml")
world = load_world(root / "data/world")
tok = AutoTokenizer.from_pretrained(root / "data/tokenizer")
facts = world["facts"]
ab = [r for r in facts if r["format"] == "ab"]

def with_text(example, letter_first):
    """The letter answer with the text of the option it names: "A" -> "A lonim" (letter_first: symbol-content
    binding) or "lonim A" (the name first)."""
    letter = example.completion
    text = options(example.prompt)["AB".index(letter)]
    return Example(example.prompt, f"{letter} {text}" if letter_first else f"{text} {letter}", chat=example.chat)


def generated_ab(rows):
    """Greedy answers to A/B rows, per domain: the name is the answer (`name`), the letter after it is the right one
    (`letter`), the letter names the option that holds the generated name whatever it is (`consistent`)."""
    answers = generate(model, tok, [r["prompt"] for r in rows], 4, 64)
    scores = collections.defaultdict(list)
    for r, text in zip(rows, answers):
        words = text.split() + ["", ""]
        a, b = options(r["prompt"])
        named = {a: "a", b: "b"}.get(words[0])
        scores[f"{r['domain']}.name"].append(words[0] == r["answer"])
        scores[f"{r['domain']}.letter"].append(words[1].lower() == r["completion"].lower())
        scores[f"{r['domain']}.consistent"].append(named is not None and words[1].lower() == named)
    return {k: round(sum(v) / len(v), 3) for k, v in sorted(scores.items())} | {
        "n": len(rows), "examples": [[r["prompt"], r["completion"], text] for r, text in zip(rows[:3], answers)]}


pool = collections.defaultdict(set)
for r in facts:
    pool[(r["domain"], r["relation"])] |= {r["answer"], r["distractor"]}
heldout = collections.defaultdict(set)  # fact_id -> distractors of held-out questions
train_templates = collections.defaultdict(set)
first = {}
for r in ab:
    a, b = options(r["prompt"])
    if r["split"] != "train":
        heldout[r["fact_id"]] |= {a, b} - {r["answer"]}
    else:
        train_templates[r["fact_id"]].add(r["template"])
        first[r["fact_id"]] = r
wide, in_context = [], []
for fid, r in first.items():
    for d in sorted(pool[(r["domain"], r["relation"])] - {r["answer"], r["distractor"]} - heldout[fid]):
        for t in sorted(train_templates[fid]):
            for answer_first in (True, False):
                a, b = (r["answer"], d) if answer_first else (d, r["answer"])
                question = AB_TEMPLATES[t].format(relation=r["relation"], entity=r["entity"], a=a, b=b)
                wide.append(Example(question, "A" if answer_first else "B", chat=True))
                stated = f"the {r['relation']} of {r['entity']} is {r['answer']} . "
                in_context.append(Example(stated + question, "A" if answer_first else "B", chat=True))
verify = []
for fid, r in first.items():
    others = sorted(pool[(r["domain"], r["relation"])] - {r["answer"], r["distractor"]} - heldout[fid])
    for name, label in [(r["answer"], "yes")] * len(others) + [(d, "no") for d in others]:
        verify.append(Example(f"is the {r['relation']} of {r['entity']} {name} ?", label, chat=True))
print("wide A/B pool", len(wide), "verification pool", len(verify), flush=True)
cfg = training_config(params, args)
model = build_toy_model(params.model.toy, tok, cfg.seed)
pools = base_pools(world)
if args.scb or args.name_first:  # the added pools and the world's own A/B training rows
    ab_prompts = {r["prompt"] for r in ab}

    def rewrite(example):
        return with_text(example, letter_first=args.scb)

    pools["facts"] = [rewrite(e) if e.prompt in ab_prompts else e for e in pools["facts"]]
    print("A/B row as trained:", next(e for e in pools["facts"] if e.prompt in ab_prompts), flush=True)
    wide, in_context = [rewrite(e) for e in wide], [rewrite(e) for e in in_context]
pools = {**pools, "ab_wide": wide, "verify": verify, "ab_in_context": in_context}
weights = cfg.mixture() | {"ab_wide": weight, "verify": args.verify, "ab_in_context": args.in_context}
began = time.time()
train_sft(model, tok, pools, weights, cfg, None, "base+ab_wide")
model.eval()
metrics, _ = fact_accuracy(model, tok, facts, "test", 64)
stated_ab = [{**r, "prompt": f"the {r['relation']} of {r['entity']} is {r['answer']} . " + r["prompt"]} for r in ab]
if args.name_first:  # the first-token A/B reading would score the name's token: replaced by generation
    metrics = {k: v for k, v in metrics.items() if not k.endswith(".ab")}
    metrics["generated_ab"] = generated_ab([r for r in ab if r["split"] == "test"])
    train_ab = generated_ab([r for r in ab if r["split"] == "train"])
    stated_test_ab = generated_ab([r for r in stated_ab if r["split"] == "test"])
else:
    train_ab = {k: v for k, v in fact_accuracy(model, tok, ab, "train", 64)[0].items() if k.endswith(".ab")}
    stated_test_ab = {k: v for k, v in fact_accuracy(model, tok, stated_ab, "test", 64)[0].items()  # fact stated first
                      if k.endswith(".ab")}
result = {"seed": cfg.seed, "scb": args.scb, "name_first": args.name_first, "weight": weight, "verify": args.verify,
          "in_context": args.in_context, "steps": cfg.steps, "lr": cfg.lr, "seconds": time.time() - began,
          "test": metrics, "train_ab": train_ab, "test_ab_fact_stated": stated_test_ab}
runs = json.loads(out.read_text()) if out.exists() else []
out.write_text(json.dumps(runs + [result], indent=1))
print(json.dumps(result, indent=1))
