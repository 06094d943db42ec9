"""3D box encoding/decoding of the perspective head (allocentric rotation, depth scaling)."""

import math

import pytest
import torch

from bevformer.models.perspective.coder import (
    allocentric_to_egocentric,
    attribute_ids,
    box3d_corners,
    canonical_box_sizes,
    decode_boxes3d,
    encode_boxes3d,
    matrix_to_quaternion,
    quaternion_to_matrix,
)

# CAM_FRONT intrinsics of the nuScenes rig (bevformer/data/synthetic/nuscenes_rig.json), 1600 x 900.
K = torch.tensor(
    [[1266.417203, 0.0, 816.26702], [0.0, 1266.417203, 491.507066], [0.0, 0.0, 1.0]],
    dtype=torch.float64,
)


def _random_quat(n, gen):
    q = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return q / q.norm(dim=1, keepdim=True)


def _same_rotation(q1, q2, atol):
    return torch.allclose((q1 * q2).sum(1).abs(), torch.ones(len(q1), dtype=q1.dtype), atol=atol)


def test_quaternion_matrix_round_trip():
    gen = torch.Generator().manual_seed(0)
    q = _random_quat(200, gen)
    back = matrix_to_quaternion(quaternion_to_matrix(q))
    assert _same_rotation(q, back, 1e-10)
    # 90 degrees about z: x -> y
    rz = quaternion_to_matrix(torch.tensor([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]]))
    assert torch.allclose(rz[0] @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)


def test_allocentric_equals_egocentric_on_the_optical_axis():
    gen = torch.Generator().manual_seed(1)
    q = _random_quat(5, gen)
    centre = K[:2, 2].expand(5, 2)  # principal point: the ray is the camera z axis
    ego = allocentric_to_egocentric(q, centre, torch.linalg.inv(K).expand(5, 3, 3))
    assert _same_rotation(q, ego, 1e-10)


def test_allocentric_identity_faces_along_the_ray():
    # identity allocentric rotation at pixel (cx + fx, cy): the ray is (1, 0, 1)/sqrt(2) and
    # the box's z axis turns onto it, its y axis stays the camera y axis.
    ctr = torch.tensor([[K[0, 2] + K[0, 0], K[1, 2]]], dtype=torch.float64)
    ego = allocentric_to_egocentric(
        torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), ctr, torch.linalg.inv(K)[None]
    )
    rot = quaternion_to_matrix(ego)[0]
    s = 1 / math.sqrt(2)
    assert torch.allclose(rot[:, 2], torch.tensor([s, 0, s], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(rot[:, 1], torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)


def test_depth_is_scaled_by_the_focal_length():
    # fx = fy = 1000: pixel size sqrt(2) / 1000, so raw 500 * sqrt(2) / 1000 * z decodes to z
    k = torch.tensor([[1000.0, 0, 400], [0, 1000.0, 300], [0, 0, 1]], dtype=torch.float64)
    inv_k = torch.linalg.inv(k)[None]
    loc = torch.tensor([[400.0, 300.0]], dtype=torch.float64)
    one = torch.ones(1, 3, dtype=torch.float64)
    raw = torch.tensor([500 * math.sqrt(2) / 1000 * 20.0], dtype=torch.float64)
    out = decode_boxes3d(
        torch.tensor([[1.0, 0, 0, 0]]).double(), 0 * loc, raw, 0 * one, loc, inv_k, one
    )
    assert out["depth"].item() == pytest.approx(20.0)
    assert out["center"][0].tolist() == pytest.approx([0.0, 0.0, 20.0])
    assert out["size"][0].tolist() == pytest.approx([1.0, 1.0, 1.0])  # tanh(0) + 1 = 1
    # clamped to [0.1, 80]
    far = decode_boxes3d(
        torch.tensor([[1.0, 0, 0, 0]]).double(), 0 * loc, raw * 10, 0 * one, loc, inv_k, one
    )
    assert far["depth"].item() == pytest.approx(80.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decode_inverts_encode_to_1e4(dtype):
    gen = torch.Generator().manual_seed(2)
    n = 64
    labels = torch.randint(0, 10, (n,), generator=gen)
    canon = canonical_box_sizes().to(dtype)[labels]
    size = canon * (0.3 + 1.4 * torch.rand(n, 3, generator=gen, dtype=dtype))
    depth = 1.0 + 70.0 * torch.rand(n, generator=gen, dtype=dtype)
    pix = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([1600.0, 900.0])
    k = K.to(dtype)
    inv_k = torch.linalg.inv(k).expand(n, 3, 3)
    center = torch.cat([pix, torch.ones(n, 1, dtype=dtype)], 1) @ inv_k[0].T
    center = center * depth[:, None]  # camera-frame centres, metres
    quat = _random_quat(n, gen).to(dtype)  # egocentric, full 3D rotations
    # the projected centre, as the dataset computes it: (K t)[:2] / t_z
    proj = center @ k.T
    center2d = proj[:, :2] / proj[:, 2:]
    # a feature location up to 1.5 strides of 128 px away
    locations = center2d + (torch.rand(n, 2, generator=gen, dtype=dtype) - 0.5) * 384

    raw = encode_boxes3d(quat, center2d, depth, size, locations, inv_k, canon)
    box = decode_boxes3d(
        raw["quat"] * 3.0, raw["proj_ctr"], raw["depth"], raw["size"], locations, inv_k, canon
    )
    assert torch.allclose(box["center"], center, atol=1e-4)
    assert torch.allclose(box["size"], size, atol=1e-4)
    assert torch.allclose(box["depth"], depth, atol=1e-4)
    assert _same_rotation(box["quat"], quat, 1e-8 if dtype == torch.float64 else 1e-5)
    corners_gt = box3d_corners(quat, center, size)
    assert torch.allclose(
        box3d_corners(box["quat"], box["center"], box["size"]), corners_gt, atol=1e-4
    )


def test_encode_rejects_sizes_beyond_twice_canonical():
    canon = torch.ones(1, 3)
    with pytest.raises(ValueError, match="twice the canonical"):
        encode_boxes3d(
            torch.tensor([[1.0, 0, 0, 0]]),
            torch.zeros(1, 2),
            torch.ones(1),
            torch.full((1, 3), 2.5),
            torch.zeros(1, 2),
            torch.eye(3)[None],
            canon,
        )


def test_corners_of_an_axis_aligned_box():
    # l = 4 along x, w = 2 along y, h = 1 along z, centred at (0, 0, 10)
    c = box3d_corners(
        torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[0.0, 0, 10]]), torch.tensor([[2.0, 4, 1]])
    )[0]
    assert c[0].tolist() == [2.0, 1.0, 10.5]
    assert c[6].tolist() == [-2.0, -1.0, 9.5]
    assert c.min(0).values.tolist() == [-2.0, -1.0, 9.5]


def test_canonical_sizes_follow_the_project_class_order():
    canon = canonical_box_sizes()
    assert canon.shape == (10, 3)
    assert canon[0].tolist() == pytest.approx([1.9751819, 4.641267, 1.74352])  # car
    assert canon[8].tolist() == pytest.approx([0.6667362, 0.7181772, 1.7616143])  # pedestrian


def test_attribute_ids():
    names = ["vehicle.parked", "", "pedestrian.sitting_lying_down", "cycle.with_rider"]
    assert attribute_ids(names).tolist() == [1, 3, 2, 0]
