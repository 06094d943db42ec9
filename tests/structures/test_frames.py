"""Frame changes and projections with numbers checkable by hand (docs/CONVENTIONS.md)."""

import math

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from bevformer.structures.frames import (
    apply,
    cam2lidar,
    invert,
    lidar2img,
    pose_matrix,
    project_points,
    transform_from,
)

# A real nuScenes calibration (v1.0-trainval log n015-2018-08-02-17-16-37+0800).
REAL_CAM_FRONT_K = np.array(
    [[1266.417203, 0.0, 816.26702], [0.0, 1266.417203, 491.507066], [0.0, 0.0, 1.0]]
)
REAL_CAM_FRONT2EGO = (
    [0.49980156, -0.50303162, 0.4997798, -0.49737083],
    [1.700791, 0.015946, 1.510958],
)
REAL_LIDAR2EGO = ([0.70779552, -0.00649224, 0.01064621, -0.7063073], [0.943713, 0.0, 1.84023])

# Ideal rig: camera at ego (1.5, 0, 1.5) looking forward; its axes (x right, y down, z forward)
# are ego (-y, -z, +x). Lidar at ego (1, 0, 2) with x right, y forward: ego (-y, +x, z).
CAM_R = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
LIDAR_R = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
K = np.array([[1000.0, 0.0, 800.0], [0.0, 1000.0, 450.0], [0.0, 0.0, 1.0]])


def _rigid(rot, trans):
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = trans
    return out


CAM2EGO = _rigid(CAM_R, [1.5, 0.0, 1.5])
LIDAR2EGO = _rigid(LIDAR_R, [1.0, 0.0, 2.0])


def test_transform_from_rotation_and_translation():
    quarter_turn = Quaternion(axis=[0, 0, 1], angle=math.pi / 2).elements  # wxyz
    t = transform_from(quarter_turn, [1.0, 2.0, 3.0])
    # (1, 0, 0) turns to (0, 1, 0), then moves by (1, 2, 3)
    np.testing.assert_allclose(apply(t, np.array([[1.0, 0.0, 0.0]])), [[1.0, 3.0, 3.0]], atol=1e-12)
    assert pose_matrix({"rotation": quarter_turn, "translation": [1, 2, 3]}).tolist() == t.tolist()
    with pytest.raises(ValueError, match="quaternion"):
        transform_from([1.0, 0.0, 0.0], [0.0, 0.0, 0.0])


def test_invert_numpy_and_torch():
    t = transform_from(Quaternion(axis=[1, 2, 3], angle=0.7).elements, [4.0, -5.0, 6.0])
    np.testing.assert_allclose(invert(t) @ t, np.eye(4), atol=1e-12)
    tt = torch.from_numpy(np.stack([t, np.eye(4)]))
    np.testing.assert_allclose((invert(tt) @ tt).numpy(), np.stack([np.eye(4)] * 2), atol=1e-12)


def test_cam2lidar_same_ego_pose():
    c2l = cam2lidar(CAM2EGO, np.eye(4), np.eye(4), LIDAR2EGO)
    # camera origin: ego (1.5, 0, 1.5) -> relative to the lidar (0.5, 0, -0.5) -> lidar x = -ego y,
    # lidar y = ego x: (0, 0.5, -0.5); the optical axis (camera z) is lidar +y.
    np.testing.assert_allclose(c2l[:3, 3], [0.0, 0.5, -0.5], atol=1e-12)
    np.testing.assert_allclose(c2l[:3, 2], [0.0, 1.0, 0.0], atol=1e-12)


def test_point_in_front_of_camera_lands_on_principal_point():
    c2l = cam2lidar(CAM2EGO, np.eye(4), np.eye(4), LIDAR2EGO)
    l2i = lidar2img(K, c2l)
    # 10 m in front of the camera: lidar (0, 10.5, -0.5); 1 m to its right: lidar x + 1.
    pts = np.array([[0.0, 10.5, -0.5], [1.0, 10.5, -0.5], [0.0, 10.5, -1.5], [0.0, -5.0, 0.0]])
    uv, depth = project_points(l2i, pts)
    np.testing.assert_allclose(uv[0], [800.0, 450.0], atol=1e-9)
    np.testing.assert_allclose(uv[1], [900.0, 450.0], atol=1e-9)  # u + f * 1 m / 10 m
    np.testing.assert_allclose(uv[2], [800.0, 550.0], atol=1e-9)  # 1 m lower: v + 100
    np.testing.assert_allclose(depth[:3], [10.0, 10.0, 10.0], atol=1e-9)
    assert depth[3] < 0  # behind the camera
    # (u*d, v*d, d, 1) as CONVENTIONS says
    hom = l2i @ np.array([1.0, 10.5, -0.5, 1.0])
    np.testing.assert_allclose(hom, [9000.0, 4500.0, 10.0, 1.0], atol=1e-9)


def test_cam2lidar_uses_each_sensors_ego_pose():
    # The ego drove 1 m forward between the lidar and the camera timestamps.
    ego2global_cam = _rigid(np.eye(3), [1.0, 0.0, 0.0])
    c2l = cam2lidar(CAM2EGO, ego2global_cam, np.eye(4), LIDAR2EGO)
    np.testing.assert_allclose(c2l[:3, 3], [0.0, 1.5, -0.5], atol=1e-12)
    uv, depth = project_points(lidar2img(K, c2l), np.array([[0.0, 11.5, -0.5]]))
    np.testing.assert_allclose(uv, [[800.0, 450.0]], atol=1e-9)
    np.testing.assert_allclose(depth, [10.0], atol=1e-9)


def test_real_rig_cam_front_optical_axis():
    c2e = transform_from(*REAL_CAM_FRONT2EGO)
    l2e = transform_from(*REAL_LIDAR2EGO)
    intr = REAL_CAM_FRONT_K
    c2l = cam2lidar(c2e, np.eye(4), np.eye(4), l2e)
    point_lidar = apply(c2l, np.array([[0.0, 0.0, 10.0]]))  # 10 m along the optical axis
    # CAM_FRONT looks along ego +x, which is lidar +y (x right, y forward)
    assert point_lidar[0, 1] > 9.0 and abs(point_lidar[0, 0]) < 0.5
    uv, depth = project_points(lidar2img(intr, c2l), point_lidar)
    np.testing.assert_allclose(uv[0], intr[:2, 2], atol=1e-6)
    np.testing.assert_allclose(depth, [10.0], atol=1e-9)


def test_torch_matches_numpy_batched():
    c2l = np.stack(
        [
            cam2lidar(CAM2EGO, np.eye(4), np.eye(4), LIDAR2EGO),
            cam2lidar(CAM2EGO, _rigid(np.eye(3), [1.0, 0, 0]), np.eye(4), LIDAR2EGO),
        ]
    )
    l2i_np = lidar2img(np.stack([K, K]), c2l)
    l2i_t = lidar2img(torch.from_numpy(np.stack([K, K])), torch.from_numpy(c2l))
    np.testing.assert_allclose(l2i_t.numpy(), l2i_np, atol=1e-9)
    pts = np.random.default_rng(0).normal(size=(2, 5, 3)) * 5 + [0, 20, 0]
    uv_np, d_np = project_points(l2i_np, pts)
    uv_t, d_t = project_points(l2i_t, torch.from_numpy(pts))
    np.testing.assert_allclose(uv_t.numpy(), uv_np, atol=1e-9)
    np.testing.assert_allclose(d_t.numpy(), d_np, atol=1e-9)
