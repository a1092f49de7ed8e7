"""Supervised fine-tuning on a weighted mixture of (prompt, completion) pools, with the loss on completions only.

Used for the base model (trained from scratch on the world), refusal training (RT) and as the retain term of later
trainers. Plain cross-entropy through the HF model's own `labels` path.
"""

from __future__ import annotations

from pathlib import Path

from latlab.config import TrainConfig
from latlab.data.examples import Example
from latlab.models.encoding import collate, context_limit, encode_all
from latlab.training.loop import MixtureSampler, TrainResult, train_loop
from latlab.training.losses import completion_loss


def train_sft(model, tokenizer, pools: dict[str, list[Example]], weights: dict[str, float], cfg: TrainConfig,
              checkpoint_dir: Path | None, description: str, on_log=None) -> TrainResult:
    max_length = context_limit(model)
    encoded = {name: encode_all(tokenizer, examples, max_length) for name, examples in pools.items()}
    sampler = MixtureSampler(encoded, weights, cfg.batch_size, cfg.seed)

    def step_loss(model, step: int):
        return completion_loss(model, collate(sampler.batch(step), tokenizer.pad_token_id)), {}

    extra = {"pools": {n: len(v) for n, v in pools.items()}, "weights": weights}
    return train_loop(model, step_loss, cfg, checkpoint_dir, description, on_log, fingerprint_extra=extra)
