"""Tan et al.'s steering analysis on a real chat model with the persona A/B sets written for this project.

The interpret stage runs it on the toy base model (whose personas are trained into it); this runs the same code
(`latlab.interp.steering.steering_by_concept`: CAA and the persona-prompt vector, five prompt variants, spurious
factors, ID/OOD rank correlation, layer sweep) on a Hugging Face model, by default the SmolLM2-135M-Instruct cache
that `make fetch-smollm2` writes. The sets (`src/latlab/interp/persona_sets/<concept>.jsonl`, model-written-evals
format, 12 statements the persona would say and 12 it would not, written by hand for this project) become A/B
questions through `latlab.data.loaders.load_persona` (the "yes" letter varies by statement); about half (by a hash
of the statement) train the vectors, the rest measure them. `descriptions.json` gives each persona and its opposite
in natural English (the system-prompt and user-prefix variants). Writes <out>/steering.json, <out>/steering.md and
the plots; from the repository root:

    python scripts/steering_real_model.py --model models/smollm2-hf --out reports/smollm2/steering
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import latlab  # noqa: F401  (offline environment first)
from latlab.data.loaders import load_persona
from latlab.interp.steering import ChatEncode, steering_by_concept
from latlab.models.hooks import decoder_layers
from latlab.models.loading import load_saved
from latlab.report.tables import steering_markdown

SETS = Path(__file__).resolve().parents[1] / "src" / "latlab" / "interp" / "persona_sets"


def persona_records(sets: Path = SETS, seed: int = 0) -> list[dict]:
    """`concepts` records of every <concept>.jsonl in `sets`, with descriptions.json's persona texts; about half of
    each concept's statements in the train split."""
    descriptions = json.loads((sets / "descriptions.json").read_text())
    records = []
    for path in sorted(sets.glob("*.jsonl")):
        if path.stem not in descriptions:
            raise KeyError(f"{sets / 'descriptions.json'}: no descriptions for the persona set {path.name}")
        d = descriptions[path.stem]
        records += load_persona(path, path.stem, validation_fraction=0.0, test_fraction=0.5, seed=seed,
                                positive=d["positive"], negative=d["negative"])
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/smollm2-hf", help="a saved HF model directory")
    parser.add_argument("--out", default="reports/smollm2/steering")
    parser.add_argument("--layer", type=int, default=12, help="block of the main analysis (CAA used 13 of 32)")
    parser.add_argument("--sweep-every", type=int, default=3, help="layer sweep over every k-th block (and the last)")
    parser.add_argument("--multipliers", type=float, nargs="+", default=[-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, tokenizer = load_saved(Path(args.model))
    model.eval()
    blocks = len(decoder_layers(model))
    sweep = sorted(set(range(0, blocks, args.sweep_every)) | {blocks - 1})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    by_kind = steering_by_concept(model, ChatEncode(tokenizer), persona_records(), args.layer, sweep, out,
                                  args.multipliers)
    result = {"model": args.model, "layer": args.layer, "sweep_layers": sweep, "multipliers": args.multipliers,
              "seconds": round(time.perf_counter() - start, 1), "steering": by_kind["caa"],
              "steering_persona_prompt": by_kind["persona_prompt"]}
    (out / "steering.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "steering.md").write_text(f"Model `{args.model}`, block {args.layer}, multipliers {args.multipliers}, "
                                     f"{result['seconds']} s.\n\n" + steering_markdown(by_kind, args.layer))
    print((out / "steering.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
