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
    """Mean next-token cross-entropy over the labelled positions of the whole batch; 0 (not NaN) when none is
    labelled (e.g. a WHP batch whose generic labels all equal the originals)."""
    targets = labels[:, 1:].flatten()
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, ignore_index=IGNORE, reduction="sum")
    return total / (targets != IGNORE).sum().clamp(min=1)


def log_one_minus_p(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[batch, seq-1] exact log(1 - p(label)) at every position (0 where unlabelled): the log-sum-exp of the other
    logits minus the log-sum-exp of all of them, in float32. No clamp: 1 - p is never rounded to zero, so the
    gradient stays alive however close p is to 1 (a clamp at 1 - 1e-6 zeroes it above that)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != IGNORE
    everything = torch.logsumexp(logits, dim=-1)
    own = F.one_hot(targets.clamp(min=0), logits.shape[-1]).bool()
    others = torch.logsumexp(logits.masked_fill(own, float("-inf")), dim=-1)
    return torch.where(valid, others - everything, torch.zeros_like(everything))


def away_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_logp: float = -5.0) -> torch.Tensor:
    """-log(1 - p(label)) summed over labelled positions where log p >= ignore_logp, divided by the number of ALL
    labelled positions; lowering it lowers p. Tokens already below the floor add nothing (they are unlikely enough
    and their gradient is only noise) but still count in the denominator, as in the official LAT code and HarmBench:
    dividing by the kept tokens only would weigh a completion's few still-likely tokens (often the ones it shares
    with the desired completion) as heavily as a whole completion."""
    token_logp, valid = label_logprobs(logits, labels)
    keep = valid & (token_logp >= ignore_logp)
    if not keep.any():
        return logits.sum() * 0.0  # zero that keeps the graph, so backward still runs
    return -(log_one_minus_p(logits, labels) * keep).sum() / valid.sum()
