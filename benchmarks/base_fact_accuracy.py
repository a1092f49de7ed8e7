"""Fact accuracy (test split, per domain and format) of the `base` model of every seed of a study work directory:
the check that a cheaper base still knows the world (issue 14).

    python -m flows.study --profile P --no-conclusions --stages check generate base    # P sets base.steps
    python benchmarks/base_fact_accuracy.py runs/<study> benchmarks/results/<name>.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from latlab.data.records import load_world
from latlab.evals.behaviour import fact_accuracy
from latlab.models.loading import load_saved


def main(workdir: str, out: str) -> None:
    result = {}
    for seed_dir in sorted(Path(workdir).glob("seed_*")):
        world = load_world(seed_dir / "data" / "world")
        model, tokenizer = load_saved(seed_dir / "models" / "base", "cpu", "float32")
        metrics, _ = fact_accuracy(model, tokenizer, world["facts"], "test", 64)
        result[seed_dir.name] = {k: v for k, v in metrics.items() if k.count(".") == 2}  # fact_acc.<domain>.<format>
        print(seed_dir.name, {k: round(v, 3) for k, v in result[seed_dir.name].items()}, flush=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
