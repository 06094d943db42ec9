"""Loss functions of the perspective head on hand-computed values."""

import math

import pytest
import torch

from bevformer.models.perspective.losses import (
    centerness_targets,
    disentangled_corner_loss,
    ltrb_giou_loss,
    smooth_l1,
)


def test_centerness_targets():
    ctr = centerness_targets(torch.tensor([[6.0, 6.0, 14.0, 10.0], [5.0, 5.0, 5.0, 5.0]]))
    assert ctr.tolist() == pytest.approx([math.sqrt(6 / 14 * 6 / 10), 1.0])


def test_giou_loss_with_plus_one_smoothing():
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0]])  # 4 x 4 box around the location
    assert ltrb_giou_loss(target, target).item() == pytest.approx(0.0)
    # prediction 2 x 4 (l 0, r 2): intersection 8, union 16, enclosing 16
    pred = torch.tensor([[0.0, 2.0, 2.0, 2.0]])
    assert ltrb_giou_loss(pred, target).item() == pytest.approx(1 - 9 / 17)


def test_smooth_l1():
    x = smooth_l1(torch.tensor([0.01, 0.1, -1.0]), torch.zeros(3), beta=0.05)
    assert x.tolist() == pytest.approx([0.5 * 0.01**2 / 0.05, 0.1 - 0.025, 1.0 - 0.025])


def test_disentangled_loss_of_a_depth_error():
    # box on the optical axis at z = 10; predicted depth 10.1 moves every corner by 0.1 in z:
    # smooth-L1 (beta 0.05) 0.075 on 8 of 24 coordinates -> 0.025; the other parts are exact
    inv_k = torch.eye(3)[None]
    target = {
        "quat": torch.tensor([[1.0, 0, 0, 0]]),
        "proj_ctr": torch.zeros(1, 2),
        "depth": torch.tensor([10.0]),
        "size": torch.tensor([[2.0, 4.0, 1.5]]),
    }
    pred = dict(target, depth=torch.tensor([10.1]))
    losses, l1 = disentangled_corner_loss(pred, target, inv_k, beta=0.05)
    assert losses["depth"].item() == pytest.approx(0.025, rel=1e-4)
    assert all(losses[k].item() == 0.0 for k in ("quat", "proj_ctr", "size"))
    assert l1.item() == pytest.approx(0.1 / 3, rel=1e-4)
    # a size error only shows in the size part: l 4 -> 4.2 moves x of every corner by 0.1
    pred = dict(target, size=torch.tensor([[2.0, 4.2, 1.5]]))
    losses, _ = disentangled_corner_loss(pred, target, inv_k, beta=0.05)
    assert losses["size"].item() == pytest.approx(0.025, rel=1e-4)
    assert losses["depth"].item() == 0.0
