"""The BEV grid: cell centres, normalisation and token layout, with numbers checked by hand."""

from __future__ import annotations

import pytest
import torch

from bevformer.structures.grid import NUSCENES_PC_RANGE, BEVGrid

# 2 rows x 4 columns over x in [-4, 4], y in [-2, 2], z in [-1, 3]: 2 m x 2 m cells
SMALL = BEVGrid(2, 4, (-4.0, -2.0, -1.0, 4.0, 2.0, 3.0))


def test_sizes():
    assert SMALL.shape == (2, 4) and SMALL.num_cells == 8
    assert SMALL.size == (8.0, 4.0, 4.0) and SMALL.cell_size == (2.0, 2.0)
    assert BEVGrid().pc_range == NUSCENES_PC_RANGE and BEVGrid().shape == (200, 200)
    assert BEVGrid().cell_size == pytest.approx((0.512, 0.512))


def test_cell_centres_row_is_y_column_is_x():
    centres = SMALL.cell_centres(torch.float64)  # [H, W, 2]
    assert centres.shape == (2, 4, 2)
    assert centres[0, :, 0].tolist() == [-3.0, -1.0, 1.0, 3.0]  # columns walk along x
    assert centres[:, 0, 1].tolist() == [-1.0, 1.0]  # rows walk along y
    # token order is row-major: token 5 = row 1, column 1
    ref = SMALL.reference_points_2d(torch.float64)
    assert ref[5].tolist() == [0.375, 0.75]
    assert SMALL.denormalize(ref[5]).tolist() == [-1.0, 1.0]


def test_pillar_points_spread_over_the_height():
    points = SMALL.pillar_points(4, torch.float64)  # [D, Q, 3]
    assert points.shape == (4, 8, 3)
    # z range 4 m, 4 anchors: (0.5, 1.5, 2.5, 3.5) m above z_min = -1
    assert points[:, 0, 2].tolist() == pytest.approx([-0.5, 0.5, 1.5, 2.5])
    assert points[2, 6, :2].tolist() == [1.0, 1.0]  # token 6 = row 1, column 2
    # the official nuScenes anchors
    z = BEVGrid(1, 1).pillar_points(4, torch.float64)[:, 0, 2]
    assert z.tolist() == pytest.approx([-4.5, -2.1666667, 0.1666667, 2.5], abs=1e-6)
    with pytest.raises(ValueError, match="num_points_in_pillar"):
        SMALL.pillar_points(0)


def test_normalize_and_denormalize_are_inverse():
    pts = torch.tensor([[-4.0, -2.0, -1.0], [4.0, 2.0, 3.0], [1.0, 0.5, 0.0]], dtype=torch.float64)
    norm = SMALL.normalize(pts)
    assert norm.tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.625, 0.625, 0.25]]
    torch.testing.assert_close(SMALL.denormalize(norm), pts)
    assert SMALL.normalize(pts[:, :2]).tolist() == [r[:2] for r in norm.tolist()]
    with pytest.raises(ValueError, match="end in 2"):
        SMALL.normalize(torch.zeros(3, 4))


def test_tokens_and_map_round_trip():
    bev = torch.arange(2 * 8 * 3, dtype=torch.float32).view(2, 8, 3)  # [B, Q, C]
    bev_map = SMALL.tokens_to_map(bev)
    assert bev_map.shape == (2, 3, 2, 4)
    # token 5 (row 1, column 1) sits at [row 1, column 1] of the map
    assert bev_map[1, :, 1, 1].tolist() == bev[1, 5].tolist()
    assert torch.equal(SMALL.map_to_tokens(bev_map), bev)
    with pytest.raises(ValueError, match=r"\[B, 8, C\]"):
        SMALL.tokens_to_map(torch.zeros(1, 9, 3))
    with pytest.raises(ValueError, match="BEV map"):
        SMALL.map_to_tokens(torch.zeros(1, 3, 4, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bev_h=0), ">= 1"),
        (dict(bev_w=2.5), "integers"),
        (dict(pc_range=(0, 0, 0, 1, 1)), "6 numbers"),
        (dict(pc_range=(1, 0, 0, -1, 1, 1)), "minimum below"),
    ],
)
def test_bad_grids_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BEVGrid(**kwargs)


def test_grid_is_a_frozen_value():
    assert BEVGrid(50, 50) == BEVGrid(50, 50, list(NUSCENES_PC_RANGE))
    assert BEVGrid(50, 50) != BEVGrid(50, 40)
    with pytest.raises(AttributeError):
        SMALL.bev_h = 3  # type: ignore[misc]


def test_cell_tokens_by_hand():
    grid = BEVGrid(bev_h=4, bev_w=5, pc_range=(-10.0, -8.0, -5.0, 10.0, 8.0, 3.0))  # 4 m cells
    points = torch.tensor([[-9.9, -7.9], [9.9, 7.9], [1.0, -3.0], [30.0, 0.5], [-10.0, 8.0]])
    tokens, inside = grid.cell_tokens(points)
    # (row, col): (0, 0), (3, 4), (1, 2), clamped (2, 4), y at the upper edge -> row 3 (clamped)
    assert tokens.tolist() == [0, 19, 7, 14, 15]
    assert inside.tolist() == [True, True, True, False, False]
