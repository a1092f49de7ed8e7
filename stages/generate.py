"""DVC stage `generate`: the toy world's datasets and its word-level tokenizer, deterministic from `seed`."""

from __future__ import annotations

from latlab.config import Params, section_dict
from latlab.data.records import write_jsonl
from latlab.tracking import stage_run
from latlab.world.generator import generate_world
from latlab.world.tokenizer import world_tokenizer
from stages.common import TOKENIZER_DIR, WORLD_DIR, run_stage, stage_done, write_metrics


def generate(params: Params) -> None:
    world = generate_world(params.world, params.seed)
    for name, records in world.items():
        write_jsonl(WORLD_DIR / f"{name}.jsonl", records)
    tokenizer = world_tokenizer(world)
    tokenizer.save_pretrained(TOKENIZER_DIR)
    metrics = {f"rows.{name}.{split}": sum(r["split"] == split for r in records)
               for name, records in world.items() for split in ("train", "validation", "test")}
    metrics["vocab_size"] = len(tokenizer)
    metrics_path = write_metrics("generate", metrics)
    with stage_run(params.tracking, "generate", {"seed": params.seed, "world": section_dict(params, "world")}) as run:
        run.log_metrics(metrics)
        run.log_artifact(WORLD_DIR, "world")
    stage_done("generate", [WORLD_DIR, TOKENIZER_DIR, metrics_path],
               {"records": sum(len(records) for records in world.values()), "vocab_size": len(tokenizer)})


def main() -> None:
    run_stage("generate", generate)


if __name__ == "__main__":
    main()
