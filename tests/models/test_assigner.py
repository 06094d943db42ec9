"""Tests of the Hungarian assigner and its costs (bevformer/models/assigner.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bevformer.models.assigner import (
    HungarianAssigner3D,
    focal_cost,
    hungarian_match,
    smooth_l1_cost,
)
from bevformer.models.coder import normalize_bbox


def test_hungarian_beats_greedy_on_hand_made_cost():
    # greedy per query: q0->g0 (1) + q1->g1 (10) = 11; optimum q0->g1 (2) + q1->g0 (1.5) = 3.5
    cost = torch.tensor([[1.0, 2.0], [1.5, 10.0]])
    rows, cols = hungarian_match(cost)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_hungarian_more_queries_than_gt():
    cost = torch.tensor([[5.0, 5.0], [1.0, 4.0], [2.0, 0.5], [0.2, 3.0]])
    rows, cols = hungarian_match(cost)
    # the 2 GT take q3 (0.2) and q2 (0.5): total 0.7
    assert rows.tolist() == [2, 3] and cols.tolist() == [1, 0]
    rows, cols = hungarian_match(torch.zeros(4, 0))
    assert rows.numel() == 0 and cols.numel() == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_cost_is_a_clear_error(bad):
    cost = torch.tensor([[1.0, 2.0], [bad, 3.0]])
    with pytest.raises(ValueError, match="non-finite cost .* query 1, GT 0"):
        hungarian_match(cost)


def _focal_by_hand(logit: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-12)
    neg = (1 - alpha) * p**gamma * -math.log(1 - p + 1e-12)
    return pos - neg


def test_focal_cost_by_hand_two_queries_two_gt():
    logits = torch.tensor([[0.0, 2.0, -1.0], [-3.0, 1.0, 0.5]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    cost = focal_cost(logits, labels)
    expected = [
        [_focal_by_hand(2.0), _focal_by_hand(0.0)],
        [_focal_by_hand(1.0), _focal_by_hand(-3.0)],
    ]
    assert cost.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]
    # p = 0.5: 0.25 * 0.25 * ln 2 - 0.75 * 0.25 * ln 2 = -0.125 ln 2
    assert cost[0, 1].item() == pytest.approx(-0.125 * math.log(2.0), abs=1e-12)


def test_smooth_l1_cost_by_hand():
    pred = torch.tensor([[0.0, 0.0]])
    target = torch.tensor([[0.5, 3.0]])
    # beta 1: 0.5 * 0.5^2 + (3 - 0.5) = 2.625; L1: 3.5
    assert smooth_l1_cost(pred, target, beta=1.0).item() == pytest.approx(2.625)
    assert smooth_l1_cost(pred, target, beta=0.0).item() == pytest.approx(3.5)


def test_assign_matches_nearest_boxes_and_weights_costs():
    gt = torch.tensor(
        [
            [10.0, 0.0, 0.0, 2.0, 4.0, 1.5, 0.0, 0.0, 0.0],
            [-10.0, 5.0, 0.0, 0.6, 0.8, 1.7, 1.0, 0.0, 0.0],
        ]
    )
    labels = torch.tensor([0, 8])
    codes = normalize_bbox(gt)
    pred = torch.stack([codes[1] + 0.05, torch.zeros(10), codes[0] - 0.1])  # q0~g1, q2~g0
    logits = torch.zeros(3, 10)
    assigner = HungarianAssigner3D()
    rows, cols = assigner.assign(pred, logits, gt, labels)
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 0]
    # the cost is 2.0 x focal + 0.75 x smooth-L1 over the first 8 code entries
    cost = assigner.cost(pred, logits, gt, labels)
    expected = 2.0 * _focal_by_hand(0.0) + 0.75 * 8 * 0.5 * 0.1**2
    assert cost[2, 0].item() == pytest.approx(expected, abs=1e-6)
    # no GT: nothing is matched
    rows, cols = assigner.assign(pred, logits, gt[:0], labels[:0])
    assert rows.numel() == 0 and cols.numel() == 0
