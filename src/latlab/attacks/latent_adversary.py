"""The latent adversary: projected gradient descent on perturbations δ of the residual stream, against frozen
weights. It follows Sheshadri et al. 2024 ("Targeted latent adversarial training improves robustness to persistent
harmful behaviors in LLMs"); the untargeted objective is Casper et al. 2024's ("Defending against unforeseen failure
modes with latent adversarial training"), δ at the token embeddings is the embedding-space attack of Schwinn et al.
2024 ("Soft prompt threats").

One δ per hook point, [batch, width, d_model], is added on prompt positions (optionally completion positions too).
Gradients are taken with respect to δ alone (`torch.autograd.grad`), so the weights' .grad stay untouched. Two inner
loops (`PGDSettings.pgd`):
- "adam_per_token" (Sheshadri et al.'s official code): δ starts at zero, `steps` Adam steps of size `lr`, each
  followed by a projection of every token's vector onto the L2 ball of radius ε;
- "l2_sequence" (Casper et al.'s untargeted LAT): δ starts at a random point of the ball, `steps` steps of length
  exactly ε/steps along the normalised gradient, each followed by a projection onto ONE L2 ball of radius ε per
  example and hook point, the norm taken over the whole sequence's perturbation ([width, d_model]); `lr` is unused.
  The random start is a Gaussian direction over the perturbed positions scaled to a radius drawn uniformly in
  [0, ε] (the papers say "random initialisation" without a distribution; this is our choice), seeded per call.
Objectives over a ContrastBatch:
- targeted: toward the undesired completion (cross-entropy) + away from the desired one (-log(1 - p));
- untargeted: away from the desired completion only, by maximising its ordinary LM loss (cross-entropy).
The callers pass weights that sum to 1 (`latlab.training.lat.latent_adversary` normalises them, as the official code
does).

Both the evaluation-time latent and embedding attacks (`latlab.attacks.latent`) and the LAT trainers
(`latlab.training.lat`, unlearning and backdoor removal) run this one implementation.

Prefix caching (our addition; the official code recomputes everything): when the lowest attacked block is L, the
activations up to block L's output do not change during the inner loop, so they are computed once per batch and
the loop runs only the blocks above L (`run_upper_blocks`). Written by hand because no maintained library attacks
an arbitrary HF model's residual stream on the hook points latlab trains on.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from latlab.models.compute import Compute
from latlab.models.encoding import IGNORE, ContrastBatch
from latlab.models.hooks import add_to_residual, base_model, capture_residual, decoder_layers, hook_layer_index, \
    resid_name
from latlab.models.scoring import away_loss, token_ce

SIDES = ("undesired", "desired")


PGD_KINDS = ("adam_per_token", "l2_sequence")


@dataclass(frozen=True)
class PGDSettings:
    hook_points: tuple[str, ...]
    epsilon: float  # radius of the L2 ball: per token ("adam_per_token") or per sequence ("l2_sequence")
    steps: int
    lr: float  # Adam's step size on δ ("adam_per_token"; "l2_sequence" steps by epsilon / steps)
    toward: float = 1.0  # targeted: weight of the cross-entropy toward the undesired completion
    away: float = 0.0  # targeted: weight of -log(1-p) of the desired one; untargeted: weight of its CE, maximised
    targeted: bool = True
    away_ignore_logp: float = -5.0  # the away term skips tokens already less likely than this
    perturb_completion: bool = False  # δ on completion positions too (prompt positions only by default)
    prefix_cache: bool = False
    pgd: str = "adam_per_token"  # or "l2_sequence" (see the module docstring)

    def __post_init__(self):
        if self.pgd not in PGD_KINDS:
            raise ValueError(f"pgd {self.pgd!r}: one of {PGD_KINDS}")


def perturbation_mask(batch: dict[str, torch.Tensor], width: int, include_completion: bool) -> torch.Tensor:
    """[batch, width] float mask of the positions δ may touch: the prompt, i.e. the real tokens before the first
    labelled one (and optionally the completion too). Positions inside the completion whose label a trainer masked
    out (WHP trains only where its generic label differs) are completion positions all the same."""
    real = batch["attention_mask"].bool()
    if include_completion:
        positions = real
    else:
        labelled = batch["labels"] != IGNORE
        seq = labelled.shape[1]
        first = torch.where(labelled.any(1), labelled.float().argmax(1), torch.full_like(labelled[:, 0], seq,
                                                                                         dtype=torch.long))
        positions = real & (torch.arange(seq, device=real.device)[None] < first[:, None])
    mask = torch.zeros(positions.shape[0], width, device=positions.device)
    mask[:, : positions.shape[1]] = positions.float()
    return mask


def project_to_ball(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Scale each token vector [.., d_model] down to L2 norm <= epsilon."""
    norms = delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return delta * (epsilon / norms).clamp(max=1.0)


def sequence_norms(delta: torch.Tensor) -> torch.Tensor:
    """[batch, 1, 1] L2 norm of each example's whole perturbation [width, d_model]."""
    return delta.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]


def project_to_sequence_ball(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Scale each example's whole perturbation [width, d_model] down to L2 norm <= epsilon (Casper et al.)."""
    return delta * (epsilon / sequence_norms(delta)).clamp(max=1.0)


def random_in_sequence_ball(mask: torch.Tensor, d_model: int, epsilon: float, seed: int | None) -> torch.Tensor:
    """[batch, width, d_model]: per example a Gaussian direction over the masked positions, scaled to a radius drawn
    uniformly in [0, epsilon]; drawn on the CPU from `seed` (the global generator when None), so a run is the same on
    every device."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    rows, width = mask.shape
    direction = torch.randn(rows, width, d_model, generator=generator) * mask.cpu()[..., None]
    radius = torch.rand(rows, 1, 1, generator=generator) * epsilon
    return (direction / sequence_norms(direction) * radius).to(mask.device)


@contextmanager
def _only_blocks_above(model, layer: int):
    """Temporarily make the decoder stack contain only blocks layer+1.. (for runs that start from a cached state)."""
    stack = base_model(model)
    full = stack.layers
    stack.layers = torch.nn.ModuleList(list(full)[layer + 1:])
    try:
        yield
    finally:
        stack.layers = full


def cache_block_output(model, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Residual stream after block `layer` ([batch, seq, d_model]), computed once without grad."""
    with torch.no_grad(), capture_residual(model, [resid_name(layer)]) as store:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return store[resid_name(layer)]


def run_upper_blocks(model, cached: torch.Tensor, batch: dict[str, torch.Tensor], layer: int,
                     delta_at_layer: torch.Tensor | None) -> torch.Tensor:
    """Logits from the cached output of block `layer` (+ its δ), running only the blocks above it.

    Works for decoder stacks that accept `inputs_embeds` and apply no embedding scale inside forward
    (Llama, Mistral, Qwen2, SmolLM); the equivalence test in tests/test_lat.py guards this.
    """
    # δ stays fp32 for Adam; a bf16 model's cached state would otherwise be promoted or refuse the add
    hidden = cached if delta_at_layer is None else cached + delta_at_layer.to(cached.dtype)
    with _only_blocks_above(model, layer):
        return model(inputs_embeds=hidden, attention_mask=batch["attention_mask"]).logits


class LatentAdversary:
    """Finds δ for a ContrastBatch against the frozen model, counting its work in `compute`."""

    def __init__(self, model, settings: PGDSettings, compute: Compute | None = None):
        self.model, self.settings = model, settings
        self.points = list(settings.hook_points)
        self.lowest = min(hook_layer_index(p) for p in self.points)
        self.d_model = model.get_input_embeddings().weight.shape[1]
        self.n_layers = len(decoder_layers(model))
        self.compute = compute if compute is not None else Compute()

    def _count(self, batch, fraction: float, backward: bool) -> None:
        # a pass over part of the blocks counts as that fraction of a full pass; the inner loop backpropagates
        # through every pass it makes
        tokens = float(batch["attention_mask"].sum()) * fraction
        self.compute.forward(tokens)
        if backward:
            self.compute.backward(tokens)

    def _logits(self, batch, deltas, mask, cached, backward: bool):
        if cached is not None:
            name = resid_name(self.lowest)
            upper = {n: d for n, d in deltas.items() if n != name}
            seq = batch["input_ids"].shape[1]
            with add_to_residual(self.model, upper, mask):
                logits = run_upper_blocks(self.model, cached, batch, self.lowest,
                                          deltas[name][:, :seq] * mask[:, :seq, None])
            self._count(batch, (self.n_layers - self.lowest - 1) / self.n_layers, backward)
            return logits
        with add_to_residual(self.model, deltas, mask):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        self._count(batch, 1.0, backward)
        return logits

    def loss(self, batch: ContrastBatch, deltas, masks, caches, backward: bool = True) -> torch.Tensor:
        """The adversary's objective under δ (lower is better for it); `backward`: whether its gradient will be
        taken (for the compute count)."""
        s = self.settings
        total = torch.zeros((), device=batch.undesired["input_ids"].device)
        if s.targeted:
            if s.toward:
                logits = self._logits(batch.undesired, deltas, masks["undesired"], caches.get("undesired"), backward)
                total = total + s.toward * token_ce(logits, batch.undesired["labels"])
            if s.away:
                logits = self._logits(batch.desired, deltas, masks["desired"], caches.get("desired"), backward)
                total = total + s.away * away_loss(logits, batch.desired["labels"], s.away_ignore_logp)
        else:
            logits = self._logits(batch.desired, deltas, masks["desired"], caches.get("desired"), backward)
            total = total - s.away * token_ce(logits, batch.desired["labels"])
        return total

    def _start(self, rows: int, width: int, masks: dict[str, torch.Tensor], seed: int | None,
               device) -> dict[str, torch.Tensor]:
        s = self.settings
        if s.pgd == "adam_per_token":
            return {p: torch.zeros(rows, width, self.d_model, device=device, requires_grad=True) for p in self.points}
        either = torch.maximum(masks["undesired"], masks["desired"])  # the positions some side perturbs
        return {p: random_in_sequence_ball(either, self.d_model, s.epsilon, None if seed is None else seed + i)
                .requires_grad_() for i, p in enumerate(self.points)}

    def attack(self, batch: ContrastBatch, final_loss: bool = False, seed: int | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float]]:
        """(δ per hook point, detached; the perturbation mask of each side; the objective before each step, and
        with `final_loss` also under the final δ). `seed`: the random start of "l2_sequence" (trainers pass one
        per step, so a resumed run draws the same starts)."""
        s = self.settings
        rows = batch.undesired["input_ids"].shape[0]
        device = batch.undesired["input_ids"].device
        masks = {side: perturbation_mask(getattr(batch, side), batch.width, s.perturb_completion) for side in SIDES}
        deltas = self._start(rows, batch.width, masks, seed, device)
        caches: dict[str, torch.Tensor] = {}
        if s.prefix_cache and self.lowest >= 0:
            for side in SIDES:
                caches[side] = cache_block_output(self.model, getattr(batch, side), self.lowest)
                self._count(getattr(batch, side), 1.0, backward=False)  # the caching pass runs the full model
        optimizer = torch.optim.Adam(list(deltas.values()), lr=s.lr) if s.pgd == "adam_per_token" else None
        losses = []
        for _ in range(s.steps):
            loss = self.loss(batch, deltas, masks, caches)
            grads = torch.autograd.grad(loss, list(deltas.values()))
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                for delta, grad in zip(deltas.values(), grads):
                    delta.grad = grad
                optimizer.step()
                with torch.no_grad():
                    for delta in deltas.values():
                        delta.copy_(project_to_ball(delta, s.epsilon))
            else:
                with torch.no_grad():  # descend the adversary's loss by exactly epsilon / steps, then project
                    for delta, grad in zip(deltas.values(), grads):
                        delta.sub_(grad / sequence_norms(grad) * (s.epsilon / s.steps))
                        delta.copy_(project_to_sequence_ball(delta, s.epsilon))
            losses.append(loss.detach())  # one host sync after the loop, not one per inner step (GPU)
        if final_loss:
            with torch.no_grad():
                losses.append(self.loss(batch, deltas, masks, caches, backward=False))
        return {p: d.detach() for p, d in deltas.items()}, masks, torch.stack(losses).tolist() if losses else []
