"""R2D2 (Mazeika et al. 2024, HarmBench, "Robust Refusal Dynamic Defense"): adversarial training against GCG.

A persistent pool of adversarial test cases (a training-split harmful request and its GCG suffix) is carried across
model updates. Every outer step runs a few GCG steps on every pool case against the current weights (the suffix
keeps improving as the model changes), then updates the model with
- toward: cross-entropy of the refusal on the attacked prompt (prompt + suffix);
- away: -log(1 - p) of the GCG target string on the attacked prompt, ignoring tokens whose log p < `away_logp_floor`
  (-5: they are already unlikely and the term's gradient would only add noise);
- SFT on benign data (the UltraChat term of HarmBench; here the world's benign requests and facts).
Every `reset_every` steps a fraction of the pool is replaced by fresh requests with fresh random suffixes.

Built on `latlab.training.loop.train_loop` (checkpoint/resume, NaN guard, progress). The pool is saved beside the
checkpoint so a resumed run continues with the same cases. Compute (forward/backward passes and tokens, GCG
included) is counted and returned, for the LAT-vs-R2D2 compute comparison. Hand-written because HarmBench's
implementation is tied to its multi-GPU launcher and its own model wrappers; the GCG core is `latlab.attacks.gcg`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latlab import parallel
from latlab.attacks.common import allowed_token_mask
from latlab.attacks.gcg import SuffixCase, gcg_search, initial_suffix, suffix_case
from latlab.config import GCGConfig, R2D2Config
from latlab.data.examples import Example
from latlab.models.compute import Compute
from latlab.models.encoding import IGNORE, collate, context_limit, encode_all, to_device, token_ids
from latlab.models.scoring import away_loss
from latlab.training.loop import MixtureSampler, TrainResult, train_loop
from latlab.training.losses import completion_loss


@dataclass
class PoolCase:
    request: int  # index into the harmful training requests
    suffix: torch.Tensor  # [suffix_tokens]


@dataclass
class R2D2Result(TrainResult):
    compute: dict = field(default_factory=dict)  # model + GCG work, `latlab.models.compute.Compute.as_dict`
    pool: list[dict] = field(default_factory=list)  # final test cases: request id and suffix text


def gcg_settings(cfg: R2D2Config) -> GCGConfig:
    return GCGConfig(suffix_tokens=cfg.suffix_tokens, steps=cfg.gcg_steps, topk=cfg.topk,
                     search_width=cfg.search_width, target_tokens=cfg.target_tokens, ascii_only=cfg.ascii_only,
                     seed=cfg.seed)


class R2D2Trainer:
    """Holds the pool and the compute counter; `step_loss` is the function `train_loop` calls."""

    def __init__(self, model, tokenizer, harmful: list[dict], sft_pools: dict[str, list[Example]],
                 cfg: R2D2Config, pool_file: Path | None = None):
        if not harmful:
            raise ValueError("R2D2 needs harmful training requests for its adversarial pool")
        self.tokenizer, self.harmful, self.cfg, self.pool_file = tokenizer, harmful, cfg, pool_file
        self.gcg = gcg_settings(cfg)
        self.device = next(model.parameters()).device
        self.allowed = allowed_token_mask(tokenizer, model.get_input_embeddings().weight.shape[0], cfg.ascii_only)
        self.cases = [suffix_case(tokenizer, r["prompt"], r["compliance"], cfg.target_tokens, self.device)
                      for r in harmful]
        max_length = context_limit(model)
        encoded = {name: encode_all(tokenizer, examples, max_length) for name, examples in sft_pools.items()}
        self.sampler = MixtureSampler(encoded, {"benign": cfg.mix_benign, "facts": cfg.mix_facts,
                                                "harmful": cfg.mix_refusal},
                                      cfg.batch_size, cfg.seed)
        self.compute = Compute()
        self.pool: list[PoolCase] = []
        self.pool_loss: list[float] = []

    # --- the pool ---
    def _fresh(self, rng: np.random.Generator, generator: torch.Generator, count: int) -> list[PoolCase]:
        picks = rng.choice(len(self.harmful), size=count, replace=count > len(self.harmful))
        # a fresh suffix survives delivery as text after its prompt, as every suffix GCG keeps does (attacks/gcg.py)
        return [PoolCase(int(i), initial_suffix(self.tokenizer, [self.cases[int(i)]], self.allowed,
                                                self.cfg.suffix_tokens, generator).to(self.device))
                for i in picks]

    def _refresh(self, step: int) -> None:
        rng = np.random.default_rng([self.cfg.seed, step, 1])
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        if not self.pool and not self._restore(step):
            self.pool = self._fresh(rng, generator, self.cfg.pool_size)
        elif step % self.cfg.reset_every == 0:
            count = round(self.cfg.reset_fraction * len(self.pool))
            for slot, case in zip(rng.choice(len(self.pool), size=count, replace=False),
                                  self._fresh(rng, generator, count)):
                self.pool[int(slot)] = case

    def _restore(self, step: int) -> bool:
        if step == 0 or self.pool_file is None or not self.pool_file.exists():
            return False
        state = json.loads(self.pool_file.read_text())
        if state["next_step"] != step:
            return False
        self.pool = [PoolCase(i, torch.tensor(s, device=self.device)) for i, s in state["pool"]]
        self.compute = Compute(**state["compute"])
        return True

    def _save(self, next_step: int) -> None:
        if self.pool_file is None or next_step % self.cfg.checkpoint_every or not parallel.is_main():
            return
        self.pool_file.parent.mkdir(parents=True, exist_ok=True)
        self.pool_file.write_text(json.dumps({"next_step": next_step, "compute": self.compute.as_dict(),
                                              "pool": [[c.request, c.suffix.tolist()] for c in self.pool]}))

    def attack_pool(self, model, step: int) -> None:
        """A few GCG steps on every pool case against the current weights."""
        generator = torch.Generator().manual_seed(int(np.random.default_rng([self.cfg.seed, step, 2]).integers(2**31)))
        self.pool_loss = []
        for case in self.pool:
            found = gcg_search(model, self.tokenizer, [self.cases[case.request]], self.gcg, self.allowed,
                               case.suffix, generator, self.compute)
            case.suffix = found.suffix
            self.pool_loss.append(found.loss)

    # --- the model's losses ---
    def attacked_batches(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(prompt+suffix -> refusal, prompt+suffix -> GCG target) batches for the current pool."""
        toward, away = [], []
        eos = [self.tokenizer.eos_token_id]
        for case in self.pool:
            layout: SuffixCase = self.cases[case.request]
            prompt = torch.cat([layout.before, case.suffix, layout.after]).tolist()
            refusal = token_ids(self.tokenizer, self.harmful[case.request]["refusal"]) + eos
            toward.append((prompt + refusal, [IGNORE] * len(prompt) + refusal))
            target = layout.target.tolist()
            away.append((prompt + target, [IGNORE] * len(prompt) + target))
        pad = self.tokenizer.pad_token_id
        return collate(toward, pad), collate(away, pad)

    def attacked_losses(self, model) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(toward-refusal CE, away-from-target loss, tokens through the model) on the current pool."""
        toward_batch, away_batch = (to_device(b, self.device) for b in self.attacked_batches())
        toward = model(**toward_batch).loss
        logits = model(input_ids=away_batch["input_ids"], attention_mask=away_batch["attention_mask"]).logits
        away = away_loss(logits, away_batch["labels"], self.cfg.away_logp_floor)
        tokens = int(toward_batch["attention_mask"].sum() + away_batch["attention_mask"].sum())
        return toward, away, tokens

    def step_loss(self, model, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        self._refresh(step)
        self.attack_pool(model, step)
        toward, away, tokens = self.attacked_losses(model)
        sft_batch = collate(self.sampler.batch(step), self.tokenizer.pad_token_id)
        sft = completion_loss(model, sft_batch)
        cfg = self.cfg
        tokens += int(sft_batch["attention_mask"].sum())
        self.compute.forward(tokens)
        self.compute.backward(tokens)  # train_loop runs the backward of this loss
        self._save(step + 1)
        loss = cfg.coef_toward * toward + cfg.coef_away * away + cfg.coef_sft * sft
        return loss, {"toward": toward.item(), "away": away.item(), "sft": sft.item(),
                      "pool_gcg_loss": float(np.mean(self.pool_loss))}


def train_r2d2(model, tokenizer, harmful: list[dict], sft_pools: dict[str, list[Example]], cfg: R2D2Config,
               checkpoint_dir: Path | None, description: str = "r2d2", on_log=None) -> R2D2Result:
    """harmful: training-split harmful request records (prompt, compliance = GCG target, refusal);
    sft_pools: {"benign": [...], "facts": [...], "harmful": [...]} examples for the SFT term ("harmful": clean
    harmful prompts -> refusal, the RT replay that keeps un-attacked prompts refused)."""
    pool_file = None if checkpoint_dir is None else checkpoint_dir.with_name(checkpoint_dir.name + ".r2d2_pool.json")
    trainer = R2D2Trainer(model, tokenizer, harmful, sft_pools, cfg, pool_file)
    extra = {"harmful": len(harmful), "pools": {n: len(v) for n, v in sft_pools.items()}}
    result = train_loop(model, trainer.step_loss, cfg, checkpoint_dir, description, on_log, fingerprint_extra=extra)
    if pool_file is not None:
        pool_file.unlink(missing_ok=True)
    pool = [{"request": trainer.harmful[c.request]["id"], "suffix": tokenizer.decode(c.suffix)} for c in trainer.pool]
    return R2D2Result(**vars(result), compute=trainer.compute.as_dict(), pool=pool)
