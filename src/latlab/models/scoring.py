"""How likely a model finds the labelled tokens of a batch, from its logits: log-probabilities summed per sequence
(completion scoring, DPO, NPO), the mean cross-entropy (pulling toward a completion) and the unlikelihood term
-log(1 - p) (pushing a completion away).

They sit in `models` because scoring (`latlab.models.generation`), the latent adversary (`latlab.attacks`) and the
trainers all take them. Shapes: logits [batch, seq, vocab], labels [batch, seq] with IGNORE where no loss is taken;
the logits at position t predict the label at t+1. Scores are computed in float32 whatever the model's dtype: in
bf16 the log-softmax loses the small probabilities these scores are about.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latlab.models.encoding import IGNORE


def label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label) [batch, seq-1], whether the position is labelled [batch, seq-1])."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    return logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1), targets != IGNORE


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[batch] sum of log p(label) over labelled positions."""
    token, valid = label_logprobs(logits, labels)
    return (token * valid).sum(-1)


def labelled_counts(labels: torch.Tensor) -> torch.Tensor:
    """[batch] number of labelled (predicted) tokens per sequence, at least 1 (a length to divide by)."""
    return (labels[:, 1:] != IGNORE).sum(-1).clamp(min=1)


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions of the whole batch."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def away_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_logp: float = -5.0) -> torch.Tensor:
    """Mean of -log(1 - p(label)) over labelled positions where log p >= ignore_logp; lowering it lowers p.
    Tokens already below the floor are left out: they are unlikely enough, and their gradient is only noise."""
    token_logp, valid = label_logprobs(logits, labels)
    keep = valid & (token_logp >= ignore_logp)
    if not keep.any():
        return logits.sum() * 0.0  # zero that keeps the graph, so backward still runs
    log_one_minus_p = torch.log1p(-token_logp.exp().clamp(max=1 - 1e-6))
    return -(log_one_minus_p * keep).sum() / keep.sum()
