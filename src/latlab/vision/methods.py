"""Group-robustness and domain-generalisation training methods as loss variants of one training loop.

ERM; GroupDRO (Sagawa et al. 2020, online exponentiated-gradient group weights); IRM (Arjovsky et al. 2019, IRMv1
gradient penalty with annealing); VREx (Krueger et al. 2021, variance of environment risks); CORAL (Sun & Saenko
2016, feature mean/covariance matching across environments); JTT (Liu et al. 2021, upsample the errors of a short ERM
run); Mixup (Zhang et al. 2018, inter-domain as DomainBed); DFR (Kirichenko et al. 2023, deep feature reweighting: the
ERM model's last layer refit on a group-balanced held-out set). Penalty forms and annealing follow DomainBed (Gulrajani
& Lopez-Paz 2021), which the Spawrious paper uses. Hand-written because DomainBed is not a maintained package and needs
torchvision; each method is a few lines over `(model, batch)`. DFR's logistic regression is scikit-learn's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import copy

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


def subset(data: ImageData, index: torch.Tensor) -> ImageData:
    return ImageData(data.x[index], data.y[index], data.env[index], data.group[index])


def holdout_split(data: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """(kept, held out): `round(fraction * n_g)` examples of every group g held out, at least one of any group with
    two or more (DomainBed holds out a share of every environment; stratifying by group keeps the rare groups, the
    ones a group-balanced refit or a worst-class rule needs, on both sides). Deterministic in `seed`."""
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for g in data.group.unique():
        idx = torch.nonzero(data.group == g).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        k = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[:k])
        kept.append(idx[k:])
    return subset(data, torch.cat(kept).sort().values), subset(data, torch.cat(held).sort().values)


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
    """Inter-domain Mixup as DomainBed's `Mixup` (Xu et al. 2020; Yan et al. 2020), the variant the Spawrious paper
    ran: environments in a random cycle, each one's examples mixed with the next one's (paired by position, truncated
    to the shorter), one lam ~ Beta(alpha, alpha) per pair, loss averaged over the pairs. With one environment it
    mixes the batch with itself (no mixing), as DomainBed's pairing does.

    Checked against DomainBed's `Mixup.update` / `random_pairs_of_minibatches` (issue 18; test
    `test_mixup_loss_is_domainbed_mixup`): same pairing, truncation, lam draw and reduction; alpha 0.2 is DomainBed's
    default. Its collapse on the CPU miniature (o2o_medium / m2m_medium / m2m_hard average accuracy about 0.46 / 0.36 /
    0.28 against ERM's 0.83 / 0.85 / 0.58) is the method on these images, not a departure: with lam fixed at 1 this
    loss trains exactly as ERM (0.87 vs 0.85 on o2o_medium), BatchNorm statistics recomputed on clean images change
    nothing (0.47 vs 0.42), one forward for all pairs instead of one per pair changes nothing (0.47), and hard labels
    (the larger-lam example's) on the same mixed inputs recover ERM's level on M2M (m2m_medium 0.85, m2m_hard 0.60)
    and most of it on o2o_medium (0.71). The soft targets are what fail; the likely reason (not isolated further) is
    that they reward reading lam off the image, which the large flat procedural backgrounds give almost linearly, so
    the model decides by background (counterfactual flip rate 0.57 vs ERM's 0.22; on m2m_medium every test error is
    a wrong background pair: 31% right pairs vs ERM's 86%). Smaller alpha (0.05, 0.1) does not
    rescue it on o2o_medium either (0.53-0.64 over seeds 0-1)."""
    masks = _per_env(batch)
    order = torch.randperm(len(masks)).tolist()
    beta = torch.distributions.Beta(hp.mixup_alpha, hp.mixup_alpha)
    total = 0.0
    for i, env in enumerate(order):
        a, b = masks[env], masks[order[(i + 1) % len(order)]]
        n = min(int(a.sum()), int(b.sum()))
        (xi, yi), (xj, yj) = (batch.x[a][:n], batch.y[a][:n]), (batch.x[b][:n], batch.y[b][:n])
        lam = float(beta.sample())
        logits = model(lam * xi + (1 - lam) * xj)
        total = total + lam * F.cross_entropy(logits, yi) + (1 - lam) * F.cross_entropy(logits, yj)
    return total / len(order)


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


Checkpoint = Callable[[int, nn.Module], None]  # (optimizer steps done, model in eval mode) -> None


def _fit(method: str, data: ImageData, cfg: SpawriousTrainConfig, hp: MethodHparams, steps: int,
         num_groups: int, weights: torch.Tensor | None = None, log: Callable | None = None,
         checkpoint: Checkpoint | None = None, checkpoint_every: int = 0) -> nn.Module:
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
        if checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint(step + 1, model.eval())
            model.train()
    model.eval()
    if checkpoint:
        checkpoint(steps, model)
    return model


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features [n, dim] (the input of `model.head`) of images [n, 3, H, W]."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.features(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def dfr_head(model: nn.Module, heldout: ImageData, hp: MethodHparams, seed: int) -> nn.Module:
    """A copy of `model` whose linear head is refit by deep feature reweighting (Kirichenko et al. 2023, DFR^Val_Tr):
    features standardised on the balanced set, L1 logistic regression (liblinear, C = `hp.dfr_c`) on a subsample with
    the same number of examples from every (breed, background) group, coefficients averaged over `hp.dfr_subsamples`
    subsamples. The official code averages 10, uses liblinear on binary tasks and tunes C on the other half of the
    validation set; here C is fixed and the four classes are fit one-vs-rest (liblinear's own multiclass scheme),
    whose per-class decision functions form the new head. The standardisation is folded into the head, so the result
    is an ordinary model. `heldout` needs every class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    feats, y, groups = features(model, heldout.x).numpy(), heldout.y.numpy(), heldout.group.numpy()
    missing = sorted(set(range(model.head.out_features)) - set(np.unique(y).tolist()))
    if missing:
        raise ValueError(f"DFR: the held-out refit set has no image of class(es) {missing}: raise "
                         "spawrious.train.holdout_fraction or spawrious.data.per_env_total")
    per_group = min(int((groups == g).sum()) for g in np.unique(groups))
    rng = np.random.default_rng(seed)
    coefs, intercepts = [], []
    for _ in range(hp.dfr_subsamples):
        idx = np.concatenate([rng.choice(np.flatnonzero(groups == g), per_group, replace=False)
                              for g in np.unique(groups)])
        mean, std = feats[idx].mean(0), feats[idx].std(0) + 1e-8
        clf = OneVsRestClassifier(LogisticRegression(C=hp.dfr_c, l1_ratio=1.0, solver="liblinear", random_state=0))
        clf.fit((feats[idx] - mean) / std, y[idx])
        weight = np.stack([est.coef_[0] for est in clf.estimators_]) / std  # [classes, dim]
        coefs.append(weight)
        intercepts.append(np.array([est.intercept_[0] for est in clf.estimators_]) - weight @ mean)
    refit = copy.deepcopy(model)
    with torch.no_grad():
        refit.head.weight.copy_(torch.as_tensor(np.mean(coefs, 0), dtype=refit.head.weight.dtype))
        refit.head.bias.copy_(torch.as_tensor(np.mean(intercepts, 0), dtype=refit.head.bias.dtype))
    return refit.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Class predictions [n] for images [n, 3, H, W]."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


METHODS = (*LOSSES, "jtt", "dfr")


def train_method(method: str, data: ImageData, cfg: SpawriousTrainConfig, hp: MethodHparams, num_groups: int,
                 log: Callable[[dict[str, float], int], None] | None = None, heldout: ImageData | None = None,
                 checkpoint: Checkpoint | None = None, checkpoint_every: int = 0) -> nn.Module:
    """Train one model with `method` for `cfg.steps` steps (JTT: plus its identification run; DFR: ERM, then the head
    refit on `heldout`, at every checkpoint too). `checkpoint(step, model)` is called every `checkpoint_every` steps
    and at the end, for model selection."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    if method == "dfr":
        if heldout is None:
            raise ValueError("method 'dfr' refits the last layer on a held-out set: pass heldout "
                             "(spawrious.train.holdout_fraction > 0)")
        refits: list[nn.Module] = []

        def refit(step: int, model: nn.Module) -> None:  # _fit calls it at the end too: the last refit is the result
            refits.append(dfr_head(model, heldout, hp, cfg.seed))
            if checkpoint:
                checkpoint(step, refits[-1])
        _fit("erm", data, cfg, hp, cfg.steps, num_groups, log=log, checkpoint=refit,
             checkpoint_every=checkpoint_every if checkpoint else 0)
        return refits[-1]
    if method == "jtt":
        identifier = _fit("erm", data, cfg, hp, hp.jtt_identification_steps, num_groups)
        errors = predict(identifier, data.x) != data.y
        weights = torch.where(errors, hp.jtt_upweight, 1.0)
        if log:
            log({"jtt_error_set_fraction": float(errors.float().mean())}, 0)
        return _fit("erm", data, cfg, hp, cfg.steps, num_groups, weights, log, checkpoint, checkpoint_every)
    return _fit(method, data, cfg, hp, cfg.steps, num_groups, log=log, checkpoint=checkpoint,
                checkpoint_every=checkpoint_every)
