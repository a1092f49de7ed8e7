"""Losses of the defender's step that several trainers share: supervised fine-tuning on completions and the retain
term that keeps a model's other behaviour while another loss changes it (LAT, unlearning, DPO, R2D2).

The token-level scores they are built from (cross-entropy, the away term, sequence log-probs) are in
`latlab.models.scoring`, one layer down, because the latent adversary and completion scoring take them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latlab.models.encoding import to_device
from latlab.models.scoring import token_ce


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the labelled (completion) tokens, through the HF model's own `labels` path."""
    return model(**to_device(batch, next(model.parameters()).device)).loss


def retain_loss(model, reference, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """`sft`: cross-entropy of the batch's completions; `kl`: KL(frozen reference || model) over every real token,
    which keeps the whole output distribution rather than only the labelled answers."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if kind == "sft":
        return token_ce(logits, batch["labels"])
    with torch.no_grad():
        ref_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    return F.kl_div(torch.log_softmax(logits[mask].float(), -1), torch.log_softmax(ref_logits[mask].float(), -1),
                    log_target=True, reduction="batchmean")
