"""Token scores (latlab.models.scoring) against hand computations: the away term is the exact -log(1 - p) averaged
over every labelled token as the official LAT code and HarmBench do (issue 20, item 3), and a batch with nothing
labelled scores 0, not NaN."""

import math

import pytest
import torch

from latlab.models.encoding import IGNORE
from latlab.models.scoring import away_loss, token_ce


def test_away_loss_is_exact_and_alive_near_certainty():
    # vocabulary of 100, the label at p = 1 - 1e-7: -log(1 - p) = 16.118; a clamp of p at 1 - 1e-6 gave 13.8 and a
    # zero gradient
    vocab, p = 100, 1 - 1e-7
    logits = torch.zeros(1, 2, vocab)
    logits[0, 0, 7] = math.log(p / (1 - p) * (vocab - 1))
    logits.requires_grad_()
    labels = torch.tensor([[IGNORE, 7]])
    loss = away_loss(logits, labels)
    assert loss.item() == pytest.approx(-math.log(1 - p), rel=1e-4)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.norm().item() > 0.9  # d/dlogits of log-sum-exp(others) - log-sum-exp(all): ~1.005 here


def test_away_loss_divides_by_every_labelled_token():
    # two labelled tokens: one at p = 0.5 (kept), one far below the floor (skipped): (log 2 + 0) / 2, not log 2 / 1
    logits = torch.zeros(1, 3, 4)
    logits[0, 0] = torch.tensor([0.0, math.log(3.0), 0.0, 0.0])  # p(token 1) = 3 / 6 = 0.5
    logits[0, 1, 2] = -30.0
    labels = torch.tensor([[IGNORE, 1, 2]])
    assert away_loss(logits, labels, -5.0).item() == pytest.approx(math.log(2) / 2, rel=1e-5)


def test_token_ce_of_a_batch_without_labels_is_zero_with_a_graph():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss = token_ce(logits, torch.full((2, 4), IGNORE))
    assert loss.item() == 0.0
    loss.backward()  # a trainer's backward still runs
    labels = torch.tensor([[IGNORE, 1, 2, IGNORE], [IGNORE, IGNORE, 3, IGNORE]])
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                 ignore_index=IGNORE)
    torch.testing.assert_close(token_ce(logits, labels), expected)
