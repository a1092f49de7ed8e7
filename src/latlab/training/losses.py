"""Losses over next-token predictions that several trainers share (LAT, unlearning, DPO).

Shapes: logits [batch, seq, vocab], labels [batch, seq] with IGNORE on positions that carry no loss; position t's
logits predict the label at t+1.
"""

from __future__ import annotations

import torch

from latlab.training.examples import IGNORE


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[batch] sum of log p(label) over labelled positions."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    valid = targets != IGNORE
    token = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token * valid).sum(-1)


def labelled_counts(labels: torch.Tensor) -> torch.Tensor:
    """[batch] number of labelled (predicted) tokens per sequence, at least 1."""
    return (labels[:, 1:] != IGNORE).sum(-1).clamp(min=1)
