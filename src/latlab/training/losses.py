"""Losses of the defender's step: supervised fine-tuning on completions, the retain term that keeps a model's other
behaviour while another loss changes it (LAT, unlearning, DPO, R2D2), and objectives more than one method builds on
(DPO's, activation matching), each a function of tensors so that it can be checked by hand. A method's own
objective stays beside its trainer (e.g. NPO in training/unlearning.py).

The token-level scores they are built from (cross-entropy, the away term, sequence log-probs) are in
`latlab.models.scoring`, one layer down, because the latent adversary and completion scoring take them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latlab.models.encoding import IGNORE, to_device
from latlab.models.scoring import token_ce


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the labelled (completion) tokens, through the HF model's own `labels` path."""
    return model(**to_device(batch, next(model.parameters()).device)).loss


def retain_loss(model, reference, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """`sft`: cross-entropy of the batch's completions; `kl`: KL(frozen reference || model) of the next-token
    distribution at the positions that predict a completion token (the official LAT code's KL retain term: completion
    positions only, so the system and prompt tokens, whose distributions nothing asks the model to keep, are left
    out), averaged over those positions. It keeps the whole distribution there rather than only the labelled token."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if kind == "sft":
        return token_ce(logits, batch["labels"])
    with torch.no_grad():
        ref_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[:, :-1] = batch["labels"][:, 1:] != IGNORE  # logits at t predict the label at t + 1
    return F.kl_div(torch.log_softmax(logits[mask].float(), -1), torch.log_softmax(ref_logits[mask].float(), -1),
                    log_target=True, reduction="batchmean")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, per-pair margin β[(πc - refc) - (πr - refr)]); inputs are [batch] sequence log-probs."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean(), margin


def masked_mse(acts: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over kept tokens (keep [batch, seq]) of the per-token mean squared error ([batch, seq, d] vs a
    broadcastable target)."""
    per_token = ((acts.float() - target.float()) ** 2).mean(-1)
    keep = keep.float()
    return (per_token * keep).sum() / keep.sum().clamp(min=1)
