"""The re-weighted loss (Eqs. 5–6) against independently computed cross-entropies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raysem.semantics.loss import IGNORE_INDEX, check_gamma, loss_weights, per_example_loss, reweighted_loss


def _ce(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label], by hand."""
    return -(logits[label] - math.log(sum(math.exp(z) for z in logits)))


LOGITS = [
    [[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]],
    [[0.3, 0.2, 0.1], [1.0, -2.0, 3.0]],
]


def test_per_example_loss_is_the_mean_token_cross_entropy():
    logits = torch.tensor(LOGITS)
    labels = torch.tensor([[0, 1], [2, IGNORE_INDEX]])
    expected = [(_ce(LOGITS[0][0], 0) + _ce(LOGITS[0][1], 1)) / 2, _ce(LOGITS[1][0], 2)]
    assert per_example_loss(logits, labels).tolist() == pytest.approx(expected, rel=1e-6)


def test_gamma_zero_is_plain_mean_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 11)
    labels = torch.randint(0, 11, (3, 4))
    plain = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1))  # equal lengths: token mean = row mean
    assert reweighted_loss(logits, labels, [0.1, 0.5, 0.9], 0.0, reduction="mean").item() == pytest.approx(
        plain.item(), rel=1e-6
    )
    # Rows with different numbers of target tokens: mean over rows of each row's token mean.
    labels[0, 2:] = IGNORE_INDEX
    labels[2, 1:] = IGNORE_INDEX
    rows = [F.cross_entropy(logits[i], labels[i], ignore_index=IGNORE_INDEX) for i in range(3)]
    loss = reweighted_loss(logits, labels, [0.0, 0.3, 1.0], 0.0, reduction="mean")
    assert loss.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-6)
    assert reweighted_loss(logits, labels, [0.0, 0.3, 1.0], 0.0).item() == pytest.approx(
        torch.stack(rows).sum().item(), rel=1e-6
    )


def test_two_examples_by_hand():
    logits = torch.tensor(LOGITS)
    labels = torch.tensor([[0, 1], [2, 0]])
    l1 = (_ce(LOGITS[0][0], 0) + _ce(LOGITS[0][1], 1)) / 2
    l2 = (_ce(LOGITS[1][0], 2) + _ce(LOGITS[1][1], 0)) / 2
    gamma = 2.0
    # dist 0.25: λ = 1 - cos(-π/4) = 1 - 1/√2; dist 1.3 is clipped to 1: λ = 1.
    w1, w2 = 1 + gamma * (1 - 1 / math.sqrt(2)), 1 + gamma * 1.0
    total = reweighted_loss(logits, labels, [0.25, 1.3], gamma)
    assert total.item() == pytest.approx(w1 * l1 + w2 * l2, rel=1e-6)
    mean = reweighted_loss(logits, labels, torch.tensor([0.25, 1.3]), gamma, reduction="mean")
    assert mean.item() == pytest.approx((w1 * l1 + w2 * l2) / 2, rel=1e-6)
    # A fact at distance 0.5 gets no extra weight.
    assert loss_weights([0.5, 0.0], gamma).tolist() == pytest.approx([1.0, 3.0])


def test_weights_scale_the_gradients():
    logits = torch.tensor(LOGITS, requires_grad=True)
    labels = torch.tensor([[0, 1], [2, 0]])
    reweighted_loss(logits, labels, [0.5, 1.0], 3.0).backward()
    weighted = logits.grad.clone()
    logits.grad = None
    reweighted_loss(logits, labels, [0.5, 1.0], 0.0).backward()
    assert torch.allclose(weighted[0], logits.grad[0]) and torch.allclose(weighted[1], 4.0 * logits.grad[1])


@pytest.mark.parametrize("gamma", [-0.5, math.nan, math.inf, -math.inf, "1"])
def test_invalid_gamma_raises(gamma):
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        check_gamma(gamma)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        reweighted_loss(torch.tensor(LOGITS), torch.tensor([[0, 1], [2, 0]]), [0.1, 0.2], gamma)


def test_shape_errors():
    logits = torch.tensor(LOGITS)
    with pytest.raises(ValueError, match="2 examples but 3 distances"):
        reweighted_loss(logits, torch.tensor([[0, 1], [2, 0]]), [0.1, 0.2, 0.3], 1.0)
    with pytest.raises(ValueError, match="a row has no target tokens"):
        reweighted_loss(logits, torch.tensor([[0, 1], [IGNORE_INDEX, IGNORE_INDEX]]), [0.1, 0.2], 1.0)
