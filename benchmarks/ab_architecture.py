"""Issue 19 item 1: does a deeper toy model, or tied input/output embeddings, let the base answer closed-book A/B?

Hypotheses tested (each by training the base recipe from scratch, params.yaml's `base`, at one torch thread):
- depth: closed-book A/B needs recall (entity + relation -> answer) and then a matching step (attend to the option
  equal to the recalled answer, read its letter) after it; in 4 blocks the recall may finish too late for the match.
  `--layers 6` gives two more blocks at the default width.
- tied embeddings: the matching head's query holds the recalled answer as an unembedding direction and its key the
  option's token embedding; with W_U = W_E an identity-like QK would match them. `--tie`.
Measured: the world's fact accuracy per domain and format on the test split (held-out templates and distractors) and
the A/B accuracy on the training rows (can the model even fit them?).

    .venv/bin/python benchmarks/ab_architecture.py --workdir <a demo run: data/> [--layers N] [--tie] [--seed S]

Result: benchmarks/results/ab_architecture.json (a list, one entry per run); the table is in ab_architecture.md.
"""
import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from latlab.config import load_params
from latlab.data.records import load_world
from latlab.evals.behaviour import fact_accuracy
from latlab.models.loading import build_toy_model
from latlab.training.sft import train_sft
from latlab.world.curriculum import base_pools

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("."), help="a run's folder with data/world, data/tokenizer")
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: params.yaml's model.toy)")
    parser.add_argument("--tie", action="store_true", help="tie the unembedding to the token embedding")
    parser.add_argument("--seed", type=int, default=None, help="initialisation and batch seed (default: base.seed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(ROOT / "params.yaml")
    world = load_world(args.workdir / "data/world")
    tokenizer = AutoTokenizer.from_pretrained(args.workdir / "data/tokenizer")
    cfg = params.base.model_copy(update={} if args.seed is None else {"seed": args.seed})
    arch = params.model.toy.model_copy(update={} if args.layers is None else {"num_layers": args.layers})
    model = build_toy_model(arch, tokenizer, cfg.seed)
    if args.tie:  # the same config with W_U = W_E, initialised from the same seed
        config = model.config
        config.tie_word_embeddings = True
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    began = time.time()
    train_sft(model, tokenizer, base_pools(world), cfg.mixture(), cfg, None, "ab-architecture")
    model.eval()
    run = {"layers": arch.num_layers, "tied": args.tie, "seed": cfg.seed, "steps": cfg.steps,
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
