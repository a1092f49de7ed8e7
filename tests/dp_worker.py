"""Run by tests/test_data_parallel.py, alone or as several processes under `parallel.launch_command`: a few SFT
(or LAT) steps of a tiny Llama through `train_loop`, then process 0 saves the weights and every process writes what
it saw. Every example has the same length, so the mean of per-process token-mean losses is the whole batch's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from latlab import parallel
from latlab.config import LATConfig, TrainConfig
from latlab.models.encoding import IGNORE, collate
from latlab.training.lat import train_lat
from latlab.training.loop import MixtureSampler, train_loop
from latlab.training.losses import completion_loss
from tests.settings import make

VOCAB, LENGTH, PROMPT = 40, 10, 4


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                        pad_token_id=0))


def examples(count: int) -> list[tuple[list[int], list[int]]]:
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(1, VOCAB, (count, LENGTH), generator=gen).tolist()
    return [(ids, [IGNORE] * PROMPT + ids[PROMPT:]) for ids in rows]


def lat_run(model_seed: int = 0):
    """A few targeted-LAT steps on the tiny world's toy model (shards of unequal length: no exact-equality claim)."""
    from latlab.config import ToyArchitecture, WorldConfig
    from latlab.models.loading import build_toy_model
    from latlab.data.examples import fact_examples
    from latlab.world.curriculum import request_examples
    from latlab.world.generator import generate_world
    from latlab.world.tokenizer import build_tokenizer

    world = generate_world(make(WorldConfig, entities_per_domain=4, verbs_per_kind=4, targets_per_kind=4), seed=0)
    tokenizer = build_tokenizer(r[f] for recs in world.values() for r in recs
                                for f in ("prompt", "completion", "compliance", "refusal", "clean_prompt") if f in r)
    model = build_toy_model(make(ToyArchitecture, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                            max_positions=64), tokenizer, model_seed)
    triples = [(r["prompt"], r["compliance"], r["refusal"]) for r in world["requests"] if r["harmful"]]
    retain = {"benign": request_examples(world["requests"], "benign", "compliance"),
              "facts": fact_examples(world["facts"])}
    cfg = make(LATConfig, layers=[0], epsilon=1.0, inner_steps=2, steps=3, batch_size=4, lr=0.01, warmup_steps=0,
                    log_every=1)
    result, compute = train_lat(model, tokenizer, triples, retain, {"benign": 1.0, "facts": 0.5}, cfg, None, "dp-lat")
    return model, result, parallel.summed(compute)


def main(out: Path, method: str) -> None:
    torch.set_num_threads(1)
    seen: list[int] = []
    compute: dict = {}
    if method == "sft":
        model = tiny_model()
        cfg = make(TrainConfig, steps=4, batch_size=8, lr=0.01, warmup_steps=0, log_every=1)
        sampler = MixtureSampler({"all": examples(32)}, {"all": 1.0}, cfg.batch_size, seed=0)

        def step_loss(model, step):
            batch = sampler.batch(step)
            seen.append(len(batch))
            return completion_loss(model, collate(batch, 0)), {}

        result = train_loop(model, step_loss, cfg, None, "dp-sft")
    else:
        model, result, compute = lat_run()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"rank{parallel.rank()}.pt")
    (out / f"rank{parallel.rank()}.json").write_text(json.dumps({
        "world": parallel.world_size(), "seen": seen, "compute": compute,
        "losses": [row["loss"] for row in result.history]}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
    parallel.finish()
