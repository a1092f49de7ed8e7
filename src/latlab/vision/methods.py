"""Group-robustness and domain-generalisation training methods as loss variants of one training loop.

ERM; GroupDRO (Sagawa et al. 2020, online exponentiated-gradient group weights); IRM (Arjovsky et al. 2019, IRMv1
gradient penalty with annealing); VREx (Krueger et al. 2021, variance of environment risks); CORAL (Sun & Saenko
2016, feature mean/covariance matching across environments); JTT (Liu et al. 2021, upsample the errors of a short ERM
run); Mixup (Zhang et al. 2018, on the pooled batch). Penalty forms and annealing follow DomainBed (Gulrajani & Lopez-
Paz 2021), which the Spawrious paper uses. Hand-written because DomainBed is not a maintained package and needs
torchvision; each method is a few lines over `(model, batch)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latlab.vision.models import build_model
from latlab.config import MethodHparams, SpawriousTrainConfig


@dataclass
class ImageData:
    x: torch.Tensor  # [n, 3, H, W] float, normalised
    y: torch.Tensor  # [n] long class index
    env: torch.Tensor  # [n] long training environment
    group: torch.Tensor  # [n] long (breed, location) group index


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    env: torch.Tensor
    group: torch.Tensor


@dataclass
class LossState:
    """Mutable state a method keeps across steps (GroupDRO's group weights)."""

    group_weights: torch.Tensor | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> float [n, 3, H, W], roughly zero-mean unit-variance."""
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25


def _per_env(batch: Batch) -> list[torch.Tensor]:
    return [batch.env == e for e in batch.env.unique()]


def _anneal(step: int, anneal_steps: int, weight: float) -> float:
    return weight if step >= anneal_steps else 1.0


def erm_loss(model, batch, state, step, hp) -> torch.Tensor:
    return F.cross_entropy(model(batch.x), batch.y)


def groupdro_loss(model, batch, state, step, hp) -> torch.Tensor:
    ids = batch.group if hp.groupdro_groups == "breed_location" else batch.env
    losses = F.cross_entropy(model(batch.x), batch.y, reduction="none")
    present = ids.unique()
    group_losses = torch.stack([losses[ids == g].mean() for g in present])
    with torch.no_grad():
        state.group_weights[present] *= torch.exp(hp.groupdro_eta * group_losses)
        state.group_weights /= state.group_weights.sum()
    return (state.group_weights[present] * group_losses).sum()


def irm_loss(model, batch, state, step, hp) -> torch.Tensor:
    logits = model(batch.x)
    scale = torch.ones((), requires_grad=True)
    nll, penalty = 0.0, 0.0
    masks = _per_env(batch)
    for mask in masks:
        env_loss = F.cross_entropy(logits[mask] * scale, batch.y[mask])
        grad = torch.autograd.grad(env_loss, [scale], create_graph=True)[0]
        nll, penalty = nll + env_loss / len(masks), penalty + grad.pow(2) / len(masks)
    weight = _anneal(step, hp.irm_anneal_steps, hp.irm_lambda)
    # DomainBed rescales so the loss magnitude does not jump when the penalty weight switches on
    return (nll + weight * penalty) / max(weight, 1.0)


def vrex_loss(model, batch, state, step, hp) -> torch.Tensor:
    logits = model(batch.x)
    risks = torch.stack([F.cross_entropy(logits[m], batch.y[m]) for m in _per_env(batch)])
    weight = _anneal(step, hp.vrex_anneal_steps, hp.vrex_lambda)
    return (risks.mean() + weight * risks.var(unbiased=False)) / max(weight, 1.0)


def _covariance(feats: torch.Tensor) -> torch.Tensor:  # [n, d] -> [d, d]
    centred = feats - feats.mean(0, keepdim=True)
    return centred.T @ centred / max(len(feats) - 1, 1)


def coral_loss(model, batch, state, step, hp) -> torch.Tensor:
    feats = model.features(batch.x)
    nll = F.cross_entropy(model.head(feats), batch.y)
    per_env = [feats[m] for m in _per_env(batch)]
    penalty, pairs = 0.0, 0
    for i in range(len(per_env)):
        for j in range(i + 1, len(per_env)):
            a, b = per_env[i], per_env[j]
            penalty = penalty + (a.mean(0) - b.mean(0)).pow(2).mean() + (_covariance(a) - _covariance(b)).pow(2).mean()
            pairs += 1
    return nll + hp.coral_weight * penalty / max(pairs, 1)


def mixup_loss(model, batch, state, step, hp) -> torch.Tensor:
    lam = float(np.random.default_rng(step).beta(hp.mixup_alpha, hp.mixup_alpha))
    perm = torch.randperm(len(batch.y))
    logits = model(lam * batch.x + (1 - lam) * batch.x[perm])
    return lam * F.cross_entropy(logits, batch.y) + (1 - lam) * F.cross_entropy(logits, batch.y[perm])


LOSSES: dict[str, Callable] = {"erm": erm_loss, "groupdro": groupdro_loss, "irm": irm_loss, "vrex": vrex_loss,
                               "coral": coral_loss, "mixup": mixup_loss}
ANNEALED = {"irm": "irm_anneal_steps", "vrex": "vrex_anneal_steps"}


class EnvBalancedSampler:
    """Each step draws batch_size / n_envs examples from every training environment (DomainBed's minibatches),
    optionally with per-example sampling weights (JTT's upsampling)."""

    def __init__(self, data: ImageData, batch_size: int, generator: torch.Generator,
                 weights: torch.Tensor | None = None):
        self.data = data
        self.envs = [torch.nonzero(data.env == e).squeeze(1) for e in data.env.unique()]
        self.per_env = max(1, batch_size // len(self.envs))
        self.generator = generator
        self.weights = weights

    def __call__(self) -> Batch:
        picks = []
        for idx in self.envs:
            w = torch.ones(len(idx)) if self.weights is None else self.weights[idx]
            picks.append(idx[torch.multinomial(w, self.per_env, replacement=True, generator=self.generator)])
        i = torch.cat(picks)
        return Batch(self.data.x[i], self.data.y[i], self.data.env[i], self.data.group[i])


def _fit(method: str, data: ImageData, cfg: SpawriousTrainConfig, hp: MethodHparams, steps: int,
         num_groups: int, weights: torch.Tensor | None = None, log: Callable | None = None) -> nn.Module:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, int(data.y.max()) + 1, cfg.width, cfg.pretrained_path).to(cfg.device)
    sampler = EnvBalancedSampler(data, cfg.batch_size, torch.Generator().manual_seed(cfg.seed), weights)
    make_opt = lambda: torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)  # noqa: E731
    opt = make_opt()
    n_groups = num_groups if hp.groupdro_groups == "breed_location" else int(data.env.max()) + 1
    state = LossState(group_weights=torch.ones(n_groups) / n_groups)
    loss_fn = LOSSES[method]
    anneal_at = getattr(hp, ANNEALED[method]) if method in ANNEALED else None
    model.train()
    for step in range(steps):
        if step == anneal_at and step > 0:
            opt = make_opt()  # DomainBed resets Adam when the penalty switches on
        batch = sampler()
        batch = Batch(*(t.to(cfg.device) for t in (batch.x, batch.y, batch.env, batch.group)))
        loss = loss_fn(model, batch, state, step, hp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step % cfg.log_every == 0 or step == steps - 1):
            log({"loss": float(loss.detach())}, step)
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Class predictions [n] for images [n, 3, H, W]."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def train_method(method: str, data: ImageData, cfg: SpawriousTrainConfig, hp: MethodHparams, num_groups: int,
                 log: Callable[[dict[str, float], int], None] | None = None) -> nn.Module:
    """Train one model with `method` for `cfg.steps` steps (JTT: plus its identification run)."""
    if method == "jtt":
        identifier = _fit("erm", data, cfg, hp, hp.jtt_identification_steps, num_groups)
        errors = predict(identifier, data.x) != data.y
        weights = torch.where(errors, hp.jtt_upweight, 1.0)
        if log:
            log({"jtt_error_set_fraction": float(errors.float().mean())}, 0)
        return _fit("erm", data, cfg, hp, cfg.steps, num_groups, weights, log)
    if method not in LOSSES:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted([*LOSSES, 'jtt'])}")
    return _fit(method, data, cfg, hp, cfg.steps, num_groups, log=log)
