"""The model's geometry is float32 under CPU bfloat16 autocast (``tools/train.py --amp``):
the encoder's reference points in the cameras, camera rays, allocentric/egocentric rotations,
box corners, the lifting of perspective detections to the lidar frame and the BEV resampling
give their float32 results, in float32.
Without ``force_fp32`` each of these is off by up to about a BEV cell (bfloat16 has 8 bits of
mantissa: 0.2-0.4 m at 50 m)."""

from __future__ import annotations

import math

import torch
from test_hybrid import GRID, cam2lidar, two_camera_detections

from bevformer.models.bda import resample_bev
from bevformer.models.encoder import project_reference_points
from bevformer.models.hybrid import lift_detections
from bevformer.models.perspective.coder import (
    allocentric_to_egocentric,
    box3d_corners,
    unproject,
)
from bevformer.models.precision import force_fp32
from bevformer.structures.grid import BEVGrid


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _same_in_float32(fn, *args) -> None:
    expected = fn(*args)
    with _autocast():
        got = fn(*args)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


def test_camera_rays_rotations_and_corners():
    g = torch.Generator().manual_seed(0)
    P = 64
    inv_k = torch.linalg.inv(torch.tensor([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0, 0, 1]]))
    inv_k = inv_k.expand(P, 3, 3).contiguous()
    pixels = torch.rand(P, 2, generator=g) * torch.tensor([1600.0, 900.0])
    quat = torch.nn.functional.normalize(torch.randn(P, 4, generator=g), dim=1)
    center = torch.randn(P, 3, generator=g) * 30.0 + torch.tensor([0.0, 0.0, 40.0])
    size = torch.rand(P, 3, generator=g) * 4 + 0.5
    _same_in_float32(unproject, pixels, inv_k)
    _same_in_float32(allocentric_to_egocentric, quat, pixels, inv_k)
    _same_in_float32(box3d_corners, quat, center, size)


def test_encoder_reference_points_in_the_cameras():
    g = torch.Generator().manual_seed(2)
    points = torch.rand(4, 50, 3, generator=g) * torch.tensor([100.0, 100.0, 8.0]) - 50.0
    lidar2img = torch.randn(2, 6, 4, 4, generator=g) * 100.0  # [B, N, 4, 4]
    lidar2img[..., 3, :] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    expected_uv, expected_mask = project_reference_points(points, lidar2img, (900, 1600))
    with _autocast():
        uv, mask = project_reference_points(points, lidar2img, (900, 1600))
    assert uv.dtype == torch.float32
    torch.testing.assert_close(uv, expected_uv, rtol=1e-6, atol=1e-6)
    assert torch.equal(mask, expected_mask)


def test_lifted_detections_and_their_references():
    bda = torch.eye(4)[None]
    bda[0, :2, :2] = torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    expected = lift_detections(two_camera_detections(), cam2lidar(), 3, GRID, bda=bda)
    with _autocast():
        got = lift_detections(two_camera_detections(), cam2lidar(), 3, GRID, bda=bda)
    for name in ("centers", "reference", "pixels"):
        e, a = getattr(expected, name), getattr(got, name)
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6, msg=name)


def test_bev_resampling():
    grid = BEVGrid(32, 32, (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0))
    bev = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    bda = torch.eye(4).repeat(2, 1, 1)
    bda[:, :2, :2] = torch.tensor([[0.98, -0.2], [0.2, 0.98]])
    bda[:, :2, 3] = torch.tensor([1.3, -0.7])
    _same_in_float32(resample_bev, bev, bda, grid)


def test_force_fp32_casts_low_precision_arguments_and_leaves_the_rest():
    @force_fp32
    def product(a: torch.Tensor, b: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        assert not torch.is_autocast_enabled("cpu")
        return (a @ b) * scale

    a, b = torch.randn(3, 3).bfloat16(), torch.randn(3, 3)
    with _autocast():
        out = product(a, b, scale=torch.tensor(2.0, dtype=torch.float16))
        assert torch.is_autocast_enabled("cpu")  # restored after the call
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (a.float() @ b) * 2.0)
    assert product(a.double(), b.double(), scale=torch.tensor(1.0)).dtype == torch.float64
