"""Issue 19 item 1: does a deeper toy model, or tied input/output embeddings, let the base answer closed-book A/B?

Hypotheses tested (each by training the base recipe from scratch, params.yaml's `base`, at one torch thread):
- depth: closed-book A/B needs recall (entity + relation -> answer) and then a matching step (attend to the option
  equal to the recalled answer, read its letter) after it; in 4 blocks the recall may finish too late for the match.
  `--layers 6` gives two more blocks at the default width.
- tied embeddings: the matching head's query holds the recalled answer as an unembedding direction and its key the
  option's token embedding; with W_U = W_E an identity-like QK would match them. `--tie`.
- width: the facts and the matching circuit may compete for a 128-wide residual stream; `--width 256` doubles it
  (heads keep their number, so each head is twice as wide; the MLP keeps its 3x ratio).
- verification (a data change, not an architecture one): `--verify W` adds a pool of yes/no rows "is <x> the
  <relation> of <entity> ? yes or no" (x the answer, or one of two other names of the relation; training facts) at
  weight W, to train the comparison "recalled answer vs a stated name" that A/B needs, without letters.
Measured: the world's fact accuracy per domain and format on the test split (held-out templates and distractors) and
the A/B accuracy on the training rows (can the model even fit them?).

    .venv/bin/python benchmarks/ab_architecture.py --workdir <a demo run: data/> [--layers N] [--width D] [--lr LR] [--tie] [--verify W] [--seed S]

Result: benchmarks/results/ab_architecture.json (a list, one entry per run); the table is in ab_architecture.md.
"""
import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from latlab.config import load_params
from latlab.data.examples import Example
from latlab.data.records import load_world
from latlab.evals.behaviour import fact_accuracy
from latlab.models.loading import build_toy_model
from latlab.training.sft import train_sft
from latlab.world.curriculum import base_pools
from ab_common import add_training_args, training_config

ROOT = Path(__file__).resolve().parents[1]


def verification_examples(facts: list[dict]) -> list[Example]:
    """Per training fact (entity, relation): "is <answer> ..." -> yes and two "is <other name> ..." -> no, the other
    names drawn (random.Random(0)) from the names the world uses for that relation."""
    rng = random.Random(0)
    names: dict[tuple[str, str], set[str]] = {}
    for r in facts:
        names.setdefault((r["domain"], r["relation"]), set()).update({r["answer"], r["distractor"]})
    seen, rows = set(), []
    for r in facts:
        if r["split"] != "train" or (r["entity"], r["relation"]) in seen:
            continue
        seen.add((r["entity"], r["relation"]))
        others = sorted(names[(r["domain"], r["relation"])] - {r["answer"]})
        for name, answer in [(r["answer"], "yes")] + [(o, "no") for o in rng.sample(others, min(2, len(others)))]:
            rows.append(Example(f"is {name} the {r['relation']} of {r['entity']} ? yes or no", answer))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("."), help="a run's folder with data/world, data/tokenizer")
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: params.yaml's model.toy)")
    parser.add_argument("--width", type=int, default=None,
                        help="hidden size; the MLP keeps params.yaml's ratio (default: params.yaml's model.toy)")
    parser.add_argument("--tie", action="store_true", help="tie the unembedding to the token embedding")
    parser.add_argument("--verify", type=float, default=None, help="weight of a yes/no verification pool")
    add_training_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(ROOT / "params.yaml")
    world = load_world(args.workdir / "data/world")
    tokenizer = AutoTokenizer.from_pretrained(args.workdir / "data/tokenizer")
    cfg = training_config(params, args)
    arch = params.model.toy.model_copy(update={} if args.layers is None else {"num_layers": args.layers})
    if args.width is not None:
        arch = arch.model_copy(update={"hidden_size": args.width,
                                       "intermediate_size": args.width * arch.intermediate_size // arch.hidden_size})
    model = build_toy_model(arch, tokenizer, cfg.seed)
    if args.tie:  # the same config with W_U = W_E, initialised from the same seed
        config = model.config
        config.tie_word_embeddings = True
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    pools, weights = base_pools(world), cfg.mixture()
    if args.verify is not None:
        pools["verify"], weights["verify"] = verification_examples(world["facts"]), args.verify
    began = time.time()
    train_sft(model, tokenizer, pools, weights, cfg, None, "ab-architecture")
    model.eval()
    run = {"layers": arch.num_layers, "width": arch.hidden_size, "tied": args.tie, "verify": args.verify,
           "seed": cfg.seed, "lr": cfg.lr, "steps": cfg.steps,
           "seconds": round(time.time() - began, 1)}
    for split in ("test", "train"):
        metrics = fact_accuracy(model, tokenizer, world["facts"], split, 64)[0]
        run[split] = {k: round(v, 3) for k, v in metrics.items() if k.count(".") == 2}  # fact_acc.<domain>.<format>
    out = ROOT / "benchmarks" / "results" / "ab_architecture.json"
    runs = (json.loads(out.read_text()) if out.exists() else []) + [run]
    out.write_text(json.dumps(runs, indent=1) + "\n")
    print(json.dumps(run, indent=1))


if __name__ == "__main__":
    main()
