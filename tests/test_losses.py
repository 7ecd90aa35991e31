import math

import pytest
import torch

from mvot.losses import token_discrepancy_loss, token_discrepancy_loss_reference

# vocabulary of 5 ids: 0, 1 text; 2, 3, 4 the image codes 0, 1, 2 (image_offset = 2)
# codebook in 1-D: e0 = 0, e1 = 1, e2 = 3  ->  Euclidean distances:
D = torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, 2.0], [3.0, 2.0, 0.0]])


def test_three_codes_by_hand():
    # one sequence, two positions; position 0 predicts code 0 (id 2), position 1 text (id 1)
    logits = torch.tensor([[[9.0, 9.0, 0.0, math.log(2.0), math.log(1.0)], [0.0, 0.0, 0.0, 0.0, 0.0]]])
    targets = torch.tensor([[2, 1]])
    mask = torch.tensor([[True, False]])
    # softmax over the image codes only (text logits of 9 ignored): P = [1, 2, 1] / 4
    # expected distance from code 0: (0 * 1 + 1 * 2 + 3 * 1) / 4 = 1.25
    assert token_discrepancy_loss(logits, targets, mask, D, 2).item() == pytest.approx(1.25)
    # true code 2 at the same distribution: (3 * 1 + 2 * 2 + 0 * 1) / 4 = 1.75; mean and sum of both
    logits2 = torch.cat([logits[:, :1], logits[:, :1]], dim=1)
    targets2 = torch.tensor([[2, 4]])
    mask2 = torch.tensor([[True, True]])
    assert token_discrepancy_loss(logits2, targets2, mask2, D, 2, "mean").item() == pytest.approx(1.5)
    assert token_discrepancy_loss(logits2, targets2, mask2, D, 2, "sum").item() == pytest.approx(3.0)


def test_zero_when_all_mass_on_true_code():
    logits = torch.full((1, 3, 5), -1e4)
    targets = torch.tensor([[2, 3, 4]])
    for t, code_id in enumerate(targets[0].tolist()):
        logits[0, t, code_id] = 1e4
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert token_discrepancy_loss(logits, targets, mask, D, 2).item() == 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_slow_reference(reduction):
    g = torch.Generator().manual_seed(0)
    n, off, v = 7, 5, 12
    emb = torch.randn(n, 3, generator=g)
    dist = torch.cdist(emb, emb)
    logits = torch.randn(3, 9, v, generator=g)
    targets = torch.randint(0, v, (3, 9), generator=g)
    mask = (targets >= off) & (targets < off + n)
    assert mask.sum() > 3
    fast = token_discrepancy_loss(logits, targets, mask, dist, off, reduction)
    slow = token_discrepancy_loss_reference(logits, targets, mask, dist, off, reduction)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)


def test_gradients_reach_only_image_positions_and_codes():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    targets = torch.tensor([[2, 0, 4, 1], [3, 3, 1, 0]])
    mask = targets >= 2
    token_discrepancy_loss(logits, targets, mask, D, 2).backward()
    grad = logits.grad
    assert grad[~mask].abs().sum() == 0  # text positions untouched
    assert grad[mask][:, :2].abs().sum() == 0  # text columns at image positions untouched
    assert grad[mask][:, 2:].abs().sum() > 0


def test_no_image_position_is_zero_and_bad_reduction():
    logits = torch.randn(1, 2, 5, requires_grad=True)
    out = token_discrepancy_loss(logits, torch.tensor([[0, 1]]), torch.zeros(1, 2, dtype=torch.bool), D, 2)
    assert out.item() == 0.0
    out.backward()
    with pytest.raises(ValueError, match="reduction must be"):
        token_discrepancy_loss(logits, torch.tensor([[2, 1]]), torch.ones(1, 2, dtype=torch.bool), D, 2, "max")
