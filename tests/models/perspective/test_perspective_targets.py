"""FCOS target assignment of the perspective head on a hand-made example.

Two levels (strides 8 and 16) of a 64 x 64 image: level 0 is 8 x 8 cells, level 1 is 4 x 4,
so location index = row * 8 + col on level 0 and 64 + row * 4 + col on level 1, at pixel
(col * s, row * s). Size ranges ((-1, 40), (40, 1e8)).

Box A = (10, 10, 30, 26), area 320, centre (20, 18):
  level 0 (radius 12): sample region [10, 30] x [10, 26] -> x, y in {16, 24}; largest side
  14 <= 40 -> cells (2,2) (2,3) (3,2) (3,3). Level 1: (16, 16) has largest side 14 < 40.
Box B = (4, 4, 60, 52), area 2688, centre (32, 28):
  level 0 (radius 12): region [20, 44] x [16, 40] -> x in {24, 32, 40}, y in {24, 32}; largest
  sides 36, 28, 36 <= 40 -> 6 cells, but (24, 24) also belongs to A, whose area is smaller.
  level 1 (radius 24): region [8, 56] x [4, 52] -> x, y in {16, 32, 48}; largest side >= 40
  everywhere but (32, 16) (36) and (32, 32) (28) -> 7 cells.
"""

import numpy as np
import torch

from bevformer.models.perspective.targets import (
    assign_targets,
    compute_locations,
    targets_from_batch,
)

STRIDES = (8, 16)
RANGES = ((-1.0, 40.0), (40.0, 1e8))
BOXES = torch.tensor([[10.0, 10.0, 30.0, 26.0], [4.0, 4.0, 60.0, 52.0]])


def _locations():
    return [compute_locations(64 // s, 64 // s, s) for s in STRIDES]


def test_locations_have_no_half_stride_offset():
    loc = compute_locations(2, 3, 16)
    expected = [[0, 0], [16, 0], [32, 0], [0, 16], [16, 16], [32, 16]]
    assert loc.tolist() == expected


def test_positive_locations_and_regression_targets():
    gt_index, ltrb = assign_targets(_locations(), STRIDES, BOXES, size_ranges=RANGES)
    assert gt_index.shape == (80,) and ltrb.shape == (80, 4)
    box_a = {18, 19, 26, 27}
    box_b = {28, 29, 35, 36, 37} | {64 + 5, 64 + 7, 64 + 9, 64 + 11, 64 + 13, 64 + 14, 64 + 15}
    assert set((gt_index == 0).nonzero().squeeze(1).tolist()) == box_a
    assert set((gt_index == 1).nonzero().squeeze(1).tolist()) == box_b
    assert (gt_index >= 0).sum() == 4 + 12
    # (24, 24): A (l 14, t 14, r 6, b 2), not B, as A is smaller
    assert ltrb[27].tolist() == [14.0, 14.0, 6.0, 2.0]
    # A at (16, 16): l 6, t 6, r 14, b 10
    assert ltrb[18].tolist() == [6.0, 6.0, 14.0, 10.0]
    # B at (32, 32) on level 0: l 28, t 28, r 28, b 20
    assert ltrb[36].tolist() == [28.0, 28.0, 28.0, 20.0]
    # B at (16, 16) on level 1: l 12, t 12, r 44, b 36
    assert ltrb[69].tolist() == [12.0, 12.0, 44.0, 36.0]
    # B at (48, 48) on level 1: l 44, t 44, r 12, b 4
    assert ltrb[79].tolist() == [44.0, 44.0, 12.0, 4.0]
    assert (ltrb[gt_index < 0] == 0).all()


def test_smaller_radius_shrinks_the_sample_region():
    # radius 0.5 on level 0: A's region is [16, 24] x [14, 22], strictly inside -> none of
    # x in {16, 24}; no A location remains.
    gt_index, _ = assign_targets(_locations(), STRIDES, BOXES[:1], radius=0.5, size_ranges=RANGES)
    assert (gt_index >= 0).sum() == 0


def test_no_boxes_gives_background_everywhere():
    gt_index, ltrb = assign_targets(_locations(), STRIDES, torch.zeros(0, 4), size_ranges=RANGES)
    assert (gt_index == -1).all() and (ltrb == 0).all()


def test_targets_from_batch_is_camera_major():
    def cam(m, label):
        return {
            "boxes2d": np.zeros((m, 4)),
            "labels": np.full(m, label, np.int64),
            "centers2d": np.zeros((m, 2)),
            "depths": np.ones(m),
            "sizes_wlh": np.ones((m, 3)),
            "rotations_cam": np.tile([1.0, 0, 0, 0], (m, 1)),
            "attr_labels": np.full(m, 3, np.int64),
            "speeds": np.full(m, np.nan),
        }

    # B = 2 samples, N = 3 cameras; camera n of sample b has b + n boxes of label 10 b + n
    mono = []
    for b in range(2):
        cams = [cam(b + n, 10 * b + n) for n in range(3)]
        mono.append({k: [c[k] for c in cams] for k in cams[0]})
    intrinsics = torch.arange(2 * 3, dtype=torch.float32).view(2, 3, 1, 1) * torch.eye(3)
    out = targets_from_batch(mono, intrinsics)
    assert len(out) == 6
    for i, tgt in enumerate(out):
        b, n = divmod(i, 3)
        assert tgt["labels"].tolist() == [10 * b + n] * (b + n)
        assert tgt["intrinsics"][0, 0].item() == i
        assert tgt["boxes2d"].shape == (b + n, 4) and tgt["labels"].dtype == torch.long
        assert tgt["speeds"].dtype == torch.float32 and tgt["attributes"].dtype == torch.long
