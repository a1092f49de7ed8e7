"""The outer training loop every trainer shares: AdamW, warmup + cosine schedule, gradient clipping, a progress bar,
per-step logging, checkpoint/resume and the non-finite-loss guard.

A trainer supplies `step_loss(model, step) -> (loss, metrics)`; batch sampling must be a pure function of the step
(see `MixtureSampler`) so that a resumed run sees exactly the batches an uninterrupted run would. A checkpoint is
resumed only when its fingerprint matches: the training settings, the trainer's `fingerprint_extra` and, inside
`checkpoint_inputs(digest)`, the stage's input data, starting model and code; otherwise the run starts fresh and says
so. A trainer's work `counters` are checkpointed with the step, so a resumed run's metrics count the whole run.
`request_stop()` (the stages' SIGTERM handler) makes the loop save a checkpoint after the current step and raise
`TrainingStopped`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latlab import parallel
from latlab.config import TrainConfig
from latlab.training.checkpoint import checkpoint_fingerprint, clear_checkpoint, load_checkpoint, save_checkpoint

StepLoss = Callable[[torch.nn.Module, int], tuple[torch.Tensor, dict[str, float]]]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the last good weights were checkpointed before raising."""


class TrainingStopped(SystemExit):
    """A stop was requested (SIGTERM); the loop saved a checkpoint after its current step. Exit status 143 (128 +
    SIGTERM), as if the signal had ended the process."""

    def __init__(self, message: str):
        super().__init__(143)
        self.message = message


_INPUTS: ContextVar[str | None] = ContextVar("latlab_checkpoint_inputs", default=None)
_STOP = {"active": False, "requested": False}


@contextmanager
def checkpoint_inputs(digest: str) -> Iterator[None]:
    """Inside the block every checkpoint fingerprint also covers `digest` (the stage's input data, starting model and
    code), so a checkpoint written from other inputs is never resumed."""
    token = _INPUTS.set(digest)
    try:
        yield
    finally:
        _INPUTS.reset(token)


def request_stop() -> bool:
    """Ask the running training loop to checkpoint after its current step and raise TrainingStopped; False (nothing
    happens) when no loop is running."""
    if _STOP["active"]:
        _STOP["requested"] = True
    return _STOP["active"]


@contextmanager
def _accepting_stop() -> Iterator[None]:
    _STOP.update(active=True, requested=False)
    try:
        yield
    finally:
        _STOP.update(active=False, requested=False)


def _stop_requested() -> bool:
    """The same answer on every data-parallel process (any process asked to stop stops them all)."""
    if parallel.world_size() == 1:
        return _STOP["requested"]
    return bool(parallel.mean(torch.tensor(float(_STOP["requested"]), device=parallel.device())).item() > 0)


Counters = dict[str, object]  # name -> a dataclass (e.g. models.compute.Compute) or a dict of numbers


def _counter_state(counters: Counters) -> dict[str, dict]:
    return {name: dict(c) if isinstance(c, dict) else dict(vars(c)) for name, c in counters.items()}


def _restore_counters(counters: Counters, saved: dict[str, dict]) -> None:
    for name, counter in counters.items():
        (counter if isinstance(counter, dict) else vars(counter)).update(saved.get(name, {}))


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    wall_seconds: float = 0.0
    forward_backward_passes: int = 0


class MixtureSampler:
    """Draws batches from named pools of encoded examples with fixed weights, deterministically per step."""

    def __init__(self, pools: dict[str, list], weights: dict[str, float], batch_size: int, seed: int):
        self.names = [n for n in pools if weights.get(n, 0) > 0 and pools[n]]
        if not self.names:
            raise ValueError("training mixture is empty: every pool is empty or has weight 0")
        total = sum(weights[n] for n in self.names)
        self.probs = np.array([weights[n] / total for n in self.names])
        self.pools, self.batch_size, self.seed = pools, batch_size, seed

    def batch(self, step: int) -> list:
        rng = np.random.default_rng([self.seed, step])
        choices = rng.choice(len(self.names), size=self.batch_size, p=self.probs)
        drawn = [self.pools[self.names[c]][rng.integers(len(self.pools[self.names[c]]))] for c in choices]
        return parallel.shard(drawn)


def _fingerprint(cfg: TrainConfig, extra: dict | None) -> str:
    blob = json.dumps({"cfg": cfg.model_dump(mode="json"), "extra": extra or {}, "inputs": _INPUTS.get()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _schedule(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_loop(model: torch.nn.Module, step_loss: StepLoss, cfg: TrainConfig, checkpoint_dir: Path | None,
               description: str, on_log: Callable[[int, dict], None] | None = None,
               fingerprint_extra: dict | None = None, parameters=None,
               counters: Counters | None = None) -> TrainResult:
    """`counters`: the trainer's work counters (mutated by `step_loss`), checkpointed and restored with the step."""
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    fingerprint = _fingerprint(cfg, fingerprint_extra)
    counters = counters or {}
    parallel.broadcast_parameters(params)
    saves = checkpoint_dir is not None and parallel.is_main()
    result = TrainResult()
    start = 0
    if checkpoint_dir is not None:
        found = checkpoint_fingerprint(checkpoint_dir)
        if found is not None and found != fingerprint:
            if parallel.is_main():
                print(f"{description}: the checkpoint in {checkpoint_dir} was made with other settings, data, starting "
                      "model or code: starting fresh", flush=True)
            if saves:
                clear_checkpoint(checkpoint_dir)
        restored = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, fingerprint)
        if restored is not None:
            start, result.history, saved_counters = restored
            result.resumed_from = start
            result.forward_backward_passes = start  # one optimizer step per step: the metrics count the whole run
            _restore_counters(counters, saved_counters)
            print(f"{description}: resumed from checkpoint at step {start} ({checkpoint_dir})")
    model.train()
    began = time.perf_counter()
    running: dict[str, list[float]] = {}

    def save(step: int, counted: dict[str, dict]) -> None:
        save_checkpoint(checkpoint_dir, model, optimizer, scheduler, step, result.history, fingerprint, counted)

    with _accepting_stop(), tqdm(total=cfg.steps, initial=start, desc=description, dynamic_ncols=True,
                                 mininterval=2.0, disable=not parallel.is_main()) as bar:
        for step in range(start, cfg.steps):
            before = _counter_state(counters)
            loss, metrics = step_loss(model, step)
            # the mean over processes, so that every process takes the same non-finite decision
            loss_value = parallel.mean(loss.detach())
            if not torch.isfinite(loss_value):
                if saves:
                    save(step, before)
                where = f"; last good checkpoint: {checkpoint_dir}" if checkpoint_dir is not None else ""
                raise NonFiniteLossError(f"{description}: loss is {loss_value.item()} at step {step}{where}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            parallel.average_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            result.forward_backward_passes += 1
            for key, value in {"loss": loss_value.item(), **metrics}.items():
                running.setdefault(key, []).append(value)
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                row = {"step": done, "lr": scheduler.get_last_lr()[0],
                       **{k: float(np.mean(v)) for k, v in running.items()}}
                running.clear()
                result.history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if on_log is not None:
                    on_log(done, row)
            if saves and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save(done, _counter_state(counters))
            if _stop_requested():
                if saves:
                    save(done, _counter_state(counters))
                where = f"checkpoint saved to {checkpoint_dir}" if checkpoint_dir is not None else "no checkpoint dir"
                message = f"{description}: stopped at step {done} of {cfg.steps}; {where}"
                print(message, file=sys.stderr, flush=True)
                raise TrainingStopped(message)
    model.eval()
    result.wall_seconds = time.perf_counter() - began
    if saves:
        clear_checkpoint(checkpoint_dir)
    return result
