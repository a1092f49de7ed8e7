"""Issue 19 item 2: does the base recipe train the persona concepts in, and what would a yes/no step buy?

The base recipe (`latlab.world.curriculum.persona_examples`) teaches each persona question three ways (as the persona
under its system prompt, against it under the opposite's, the default answer without one); `--with-yes-no` adds the
statement as a plain yes/no question under both prompts (the recipe of a04bf10, dropped after this benchmark's
three seeds). This trains the default-shaped model from scratch on the base pools and measures on the held-out persona questions (validation + test)
the share answered as the persona (propensity logit(persona letter) - logit(other letter) > 0) with no system prompt,
under the persona's and under the opposite's; also the world's closed-book free-form fact accuracy (test split), so
a persona pool that costs the facts shows.

    .venv/bin/python benchmarks/persona_recipe.py --workdir <a demo run: params.yaml, data/> [--seed S] [--with-yes-no] [--mix-personas W]

Result: benchmarks/results/persona_recipe.json (a list, one entry per run) and persona_recipe.md (the table of all;
the runs before the recipe change are labelled "base recipe (with the yes/no step)" and "without the yes/no step").
"""
import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer
from latlab.config import load_params
from latlab.data.records import load_world
from latlab.evals.behaviour import fact_accuracy
from latlab.interp.steering import ChatEncode, from_records, prompt_variant, propensities
from latlab.models.loading import build_toy_model
from latlab.training.sft import train_sft
from latlab.world.curriculum import base_pools, persona_examples

VARIANTS = {"no prompt": "baseline", "persona's prompt": "system_positive", "opposite's prompt": "system_negative"}


def persona_rates(model, tokenizer, concepts: list[dict]) -> dict[str, dict]:
    """{concept: {variant: share of held-out questions answered as the persona, "n": questions}}."""
    encode, out = ChatEncode(tokenizer), {}
    for concept in sorted({r["persona"] for r in concepts}):
        rows = [r for r in concepts if r["persona"] == concept and r["split"] != "train"]
        examples = from_records(rows)
        out[concept] = {"n": len(rows)}
        for name, variant in VARIANTS.items():
            shown = [prompt_variant(e, variant, rows[0]["persona_positive"], rows[0]["persona_negative"])
                     for e in examples]
            out[concept][name] = float(np.mean(propensities(model, encode, shown, None, 0, [0.0])[:, 0] > 0))
    return out


def markdown(runs: list[dict]) -> str:
    lines = ["| recipe | persona mix | seed | steps | concept | N | as the persona: no prompt / persona's / opposite's | "
             "free-form fact accuracy (test, general / forget / related) |", "|" + " --- |" * 8]
    for run in runs:
        facts = " / ".join(f"{run['fact_accuracy'].get(f'fact_acc.{d}.free', float('nan')):.2f}"
                           for d in ("general", "forget", "related"))
        for concept, rates in run["persona_rates"].items():
            cells = " / ".join(f"{rates[v]:.2f}" for v in VARIANTS)
            lines.append(f"| {run['recipe']} | {run.get('mix_personas', 1.0)} | {run['seed']} | {run['steps']} | {concept} "
                         f"| {rates['n']} | {cells} "
                         f"| {facts} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("."))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: params.yaml's base.steps)")
    parser.add_argument("--seed", type=int, default=None, help="initialisation and batch seed (default: base.seed)")
    parser.add_argument("--with-yes-no", action="store_true",
                        help="add the plain yes/no persona rows (persona_examples(yes_no=True))")
    parser.add_argument("--mix-personas", type=float, default=None,
                        help="weight of the persona pool (default: params.yaml's base.mix_personas)")
    args = parser.parse_args()
    results = Path(__file__).resolve().parent / "results"
    torch.set_num_threads(1)
    params = load_params(args.workdir / "params.yaml")
    world = load_world(args.workdir / "data/world")
    tokenizer = AutoTokenizer.from_pretrained(args.workdir / "data/tokenizer")
    cfg = params.base.model_copy(update={k: v for k, v in (("steps", args.steps), ("seed", args.seed),
                                                           ("mix_personas", args.mix_personas)) if v is not None})
    pools = base_pools(world)
    if args.with_yes_no:
        pools["personas"] = persona_examples(world["concepts"], yes_no=True)
    model = build_toy_model(params.model.toy, tokenizer, cfg.seed)
    began = time.time()
    train_sft(model, tokenizer, pools, cfg.mixture(), cfg, None, "persona-recipe")
    model.eval()
    run = {"recipe": "with the yes/no step" if args.with_yes_no else "without the yes/no step (letters only)",
           "mix_personas": cfg.mix_personas, "seed": cfg.seed, "steps": cfg.steps,
           "persona_rows": len(pools["personas"]),
           "seconds": round(time.time() - began, 1),
           "persona_rates": persona_rates(model, tokenizer, world["concepts"]),
           "fact_accuracy": {k: v for k, v in fact_accuracy(model, tokenizer, world["facts"], "test", 64)[0].items()
                             if k.endswith(".free")}}
    out = results / "persona_recipe.json"
    runs = (json.loads(out.read_text()) if out.exists() else []) + [run]
    out.write_text(json.dumps(runs, indent=1) + "\n")
    (results / "persona_recipe.md").write_text(markdown(runs))
    print(markdown([run]))


if __name__ == "__main__":
    main()
