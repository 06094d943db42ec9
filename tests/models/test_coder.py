"""Tests of the box coder: regression codes and NMS-free decoding (bevformer/models/coder.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bevformer.models.coder import NMSFreeCoder, denormalize_bbox, normalize_bbox

# x, y, z (gravity centre), w, l, h, yaw, vx, vy
GT = torch.tensor(
    [
        [1.0, 2.0, 3.0, 2.0, 4.0, 1.5, math.pi / 6, 0.5, -0.5],
        [-30.5, 12.25, -1.0, 0.6, 0.8, 1.7, -2.9, 0.0, 0.0],
        [45.0, -50.0, 0.4, 2.9, 11.0, 3.5, 3.1, -8.0, 4.0],
        [0.0, 0.0, -4.0, 0.4, 0.4, 1.0, 0.0, 0.0, 0.0],
    ],
    dtype=torch.float64,
)


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    return torch.atan2(angle.sin(), angle.cos())


def test_normalize_by_hand():
    code = normalize_bbox(GT[:1])[0]
    c = math.cos(math.pi / 6)
    expected = [1.0, 2.0, math.log(2.0), math.log(4.0), 3.0, math.log(1.5), 0.5, c, 0.5, -0.5]
    assert code.tolist() == pytest.approx(expected, abs=1e-12)


def test_encode_decode_are_inverses():
    back = denormalize_bbox(normalize_bbox(GT))
    assert back.dtype == GT.dtype and back.shape == GT.shape
    torch.testing.assert_close(back, GT, atol=1e-5, rtol=0)
    # and the other way round, for codes with unit (sin, cos)
    codes = normalize_bbox(GT)
    torch.testing.assert_close(normalize_bbox(denormalize_bbox(codes)), codes, atol=1e-6, rtol=0)


def test_yaw_wraps_into_minus_pi_pi():
    boxes = GT.clone()
    boxes[:, 6] = torch.tensor([3.5, -4.0, 7.0, 2 * math.pi + 0.25], dtype=torch.float64)
    back = denormalize_bbox(normalize_bbox(boxes))
    expected = torch.tensor(
        [3.5 - 2 * math.pi, -4.0 + 2 * math.pi, 7.0 - 2 * math.pi, 0.25], dtype=torch.float64
    )
    torch.testing.assert_close(back[:, 6], expected, atol=1e-9, rtol=0)
    assert bool((back[:, 6] > -math.pi).all() and (back[:, 6] <= math.pi).all())
    # everything but the yaw comes back unchanged; the yaw is the same angle
    torch.testing.assert_close(back[:, :6], boxes[:, :6], atol=1e-9, rtol=0)
    torch.testing.assert_close(_wrap(back[:, 6] - boxes[:, 6]), torch.zeros(4).double())


def test_normalize_rejects_wrong_width():
    with pytest.raises(ValueError, match="box vectors"):
        normalize_bbox(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="codes"):
        denormalize_bbox(torch.zeros(3, 9))


def test_decode_topk_over_query_class_pairs():
    # 3 queries x 2 classes; the best pairs are (q2, c0) then (q0, c1)
    logits = torch.tensor([[-5.0, 3.0], [-6.0, -7.0], [4.0, -8.0]])
    codes = normalize_bbox(GT[:3].float())
    out = NMSFreeCoder(num_classes=2, max_num=2).decode_single(logits, codes)
    assert out["labels"].tolist() == [0, 1]
    torch.testing.assert_close(out["scores"], torch.tensor([4.0, 3.0]).sigmoid())
    torch.testing.assert_close(out["boxes"], GT[[2, 0]].float(), atol=1e-5, rtol=0)


def test_decode_filters_by_centre_range_and_score():
    logits = torch.tensor([[2.0], [1.0], [-1.0]])  # scores .881, .731, .269
    boxes = GT[:3].clone().float()
    boxes[1, 0] = 70.0  # outside post_center_range in x
    codes = normalize_bbox(boxes)
    coder = NMSFreeCoder(num_classes=1, max_num=10)
    assert coder.decode_single(logits, codes)["scores"].tolist() == pytest.approx(
        [torch.tensor(2.0).sigmoid().item(), torch.tensor(-1.0).sigmoid().item()]
    )
    coder = NMSFreeCoder(num_classes=1, max_num=10, score_threshold=0.5)
    assert len(coder.decode_single(logits, codes)["scores"]) == 1
    # no box above 0.95: the threshold is lowered (x0.9 steps) until the best box passes
    coder = NMSFreeCoder(num_classes=1, max_num=10, score_threshold=0.95)
    out = coder.decode_single(logits, codes)
    assert out["scores"].tolist() == pytest.approx([torch.tensor(2.0).sigmoid().item()])
