"""The box vector: yaw convention, corners, nuScenes conversions and BEV augmentation."""

import math

import numpy as np
import pytest
import torch
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from bevformer.structures.boxes import (
    BOX_DIM,
    CLASSES,
    YAW,
    LidarBoxes,
    bev_augment,
    box_corners,
    box_heading,
    boxes_from_global,
    boxes_from_nusc,
    boxes_to_global,
    boxes_to_nusc,
    flip_boxes,
    rotate_boxes,
    scale_boxes,
    yaw_from_nus,
    yaw_to_nus,
)
from bevformer.structures.frames import transform_from

PI = math.pi


def _random_boxes(n=6, seed=0):
    rng = np.random.default_rng(seed)
    b = np.zeros((n, BOX_DIM))
    b[:, :3] = rng.uniform(-30, 30, (n, 3))
    b[:, 3:6] = rng.uniform(0.5, 5.0, (n, 3))
    b[:, 6] = rng.uniform(-PI, PI, n)
    b[:, 7:9] = rng.normal(0, 5, (n, 2))
    return b


def test_constants():
    assert BOX_DIM == 9 and YAW == 6
    assert len(CLASSES) == 10 and CLASSES[0] == "car" and CLASSES[-1] == "traffic_cone"


def test_yaw_convention():
    # nuScenes heading 0 (along lidar +x) is -pi/2 in the box vector
    assert yaw_from_nus(0.0) == pytest.approx(-PI / 2)
    assert yaw_to_nus(-PI / 2) == pytest.approx(0.0)
    assert yaw_from_nus(PI / 2) == pytest.approx(-PI)  # heading lidar +y (forward)
    yaws = np.array([[0, 0, 0, 1, 1, 1, -PI / 2, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0]])
    heading = box_heading(yaws)
    np.testing.assert_allclose(heading, [[1.0, 0.0], [0.0, -1.0]], atol=1e-12)


def test_corners_by_hand_and_against_devkit():
    # w=2, l=4, h=1 at (10, 0, 1), heading lidar +x
    box = np.array([[10.0, 0.0, 1.0, 2.0, 4.0, 1.0, -PI / 2, 0.0, 0.0]])
    c = box_corners(box)[0]
    np.testing.assert_allclose(c[0], [12.0, 1.0, 1.5], atol=1e-12)  # front-left-top
    np.testing.assert_allclose(c[2], [12.0, -1.0, 0.5], atol=1e-12)  # front-right-bottom
    np.testing.assert_allclose(c[6], [8.0, -1.0, 0.5], atol=1e-12)  # back-right-bottom
    boxes = _random_boxes()
    devkit = np.stack([b.corners().T for b in boxes_to_nusc(boxes)])
    np.testing.assert_allclose(box_corners(boxes), devkit, atol=1e-9)
    np.testing.assert_allclose(box_corners(torch.from_numpy(boxes)).numpy(), devkit, atol=1e-9)


def test_from_nusc_box():
    box = Box([1.0, 2.0, 3.0], [2.0, 4.0, 1.5], Quaternion(axis=[0, 0, 1], angle=0.3))
    vec = boxes_from_nusc([box], velocities=np.array([[0.5, -1.0]]))[0]
    np.testing.assert_allclose(vec, [1, 2, 3, 2, 4, 1.5, -0.3 - PI / 2, 0.5, -1.0], atol=1e-12)
    back = boxes_to_nusc(vec[None])[0]
    np.testing.assert_allclose(back.orientation.yaw_pitch_roll[0], 0.3, atol=1e-12)
    np.testing.assert_allclose(back.wlh, [2, 4, 1.5])


def test_to_global_by_hand():
    # lidar x right / y forward on an ego at the origin; ego turned 90 deg left at (100, 200, 0)
    lidar2ego = transform_from(Quaternion(axis=[0, 0, 1], angle=-PI / 2).elements, [0, 0, 0])
    ego2global = transform_from(Quaternion(axis=[0, 0, 1], angle=PI / 2).elements, [100, 200, 0])
    # 10 m ahead in lidar (+y), heading forward (yaw_nus = pi/2 -> YAW = -pi), moving 5 m/s
    vec = np.array([[0.0, 10.0, 0.0, 2.0, 4.0, 1.5, -PI, 0.0, 5.0]])
    (box,) = boxes_to_global(vec, lidar2ego, ego2global, labels=[0], scores=[0.5])
    # ego: (10, 0, 0) heading +x; global: turned 90 deg -> (100, 210, 0) heading +y
    np.testing.assert_allclose(box.center, [100.0, 210.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(box.orientation.yaw_pitch_roll[0], PI / 2, atol=1e-9)
    np.testing.assert_allclose(box.velocity, [0.0, 5.0, 0.0], atol=1e-9)
    assert box.label == 0 and box.score == 0.5
    np.testing.assert_allclose(boxes_from_global([box], lidar2ego, ego2global), vec, atol=1e-9)
    np.testing.assert_allclose(box.center, [100.0, 210.0, 0.0], atol=1e-9)  # input not moved


def test_global_round_trip_tilted_lidar():
    # a real (slightly tilted) LIDAR_TOP calibration and an arbitrary ego pose
    lidar2ego = transform_from(
        [0.70779552, -0.00649224, 0.01064621, -0.7063073], [0.943713, 0.0, 1.84023]
    )
    ego2global = transform_from(Quaternion(axis=[0, 0, 1], angle=2.5).elements, [411, 1181, 0.3])
    boxes = _random_boxes()
    back = boxes_from_global(boxes_to_global(boxes, lidar2ego, ego2global), lidar2ego, ego2global)
    np.testing.assert_allclose(back[:, :6], boxes[:, :6], atol=1e-9)
    np.testing.assert_allclose(back[:, 7:], boxes[:, 7:], atol=1e-9)
    dyaw = (back[:, YAW] - boxes[:, YAW] + PI) % (2 * PI) - PI
    np.testing.assert_allclose(dyaw, 0.0, atol=1e-9)


def test_rotate_as_mmdet3d_017():
    # LiDARInstance3DBoxes.rotate(+90 deg) moves (1, 0) to (0, -1) (clockwise) and adds 90 deg
    box = np.array([[1.0, 0.0, 0.5, 2.0, 4.0, 1.5, -PI / 2, 1.0, 0.0]])
    out = rotate_boxes(box, PI / 2)
    np.testing.assert_allclose(out[0], [0.0, -1.0, 0.5, 2.0, 4.0, 1.5, 0.0, 0.0, -1.0], atol=1e-12)
    # the heading turned clockwise with the position: +x -> -y
    np.testing.assert_allclose(box_heading(out)[0], [0.0, -1.0], atol=1e-12)
    assert box[0, 0] == 1.0  # input untouched


def test_scale_and_flip_as_mmdet3d_017():
    box = np.array([[1.0, 2.0, 0.5, 2.0, 4.0, 1.5, -PI / 4, 3.0, 4.0]])
    np.testing.assert_allclose(
        scale_boxes(box, 2.0)[0], [2.0, 4.0, 1.0, 4.0, 8.0, 3.0, -PI / 4, 6.0, 8.0]
    )
    h = flip_boxes(box, "horizontal")[0]  # flip y
    np.testing.assert_allclose(h, [1.0, -2.0, 0.5, 2.0, 4.0, 1.5, PI + PI / 4, 3.0, -4.0])
    v = flip_boxes(box, "vertical")[0]  # flip x
    np.testing.assert_allclose(v, [-1.0, 2.0, 0.5, 2.0, 4.0, 1.5, PI / 4, -3.0, 4.0])
    head = box_heading(box)[0]
    np.testing.assert_allclose(box_heading(h[None])[0], head * [1, -1], atol=1e-12)
    np.testing.assert_allclose(box_heading(v[None])[0], head * [-1, 1], atol=1e-12)
    with pytest.raises(ValueError, match="horizontal"):
        flip_boxes(box, "diagonal")


def test_bev_augment_by_hand():
    box = np.array([[1.0, 0.0, 0.5, 2.0, 4.0, 1.5, -PI / 2, 1.0, 0.0]])
    out, bda = bev_augment(box, PI / 2, 2.0, flip_x=False, flip_y=False)
    # counter-clockwise 90 deg then x2: (1, 0) -> (0, 2); heading +x -> +y (YAW -pi)
    np.testing.assert_allclose(out[0], [0.0, 2.0, 1.0, 4.0, 8.0, 3.0, -PI, 0.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(bda @ [1.0, 0.0, 0.5, 1.0], [0.0, 2.0, 1.0, 1.0], atol=1e-12)
    out, bda = bev_augment(box, 0.0, 1.0, flip_x=True, flip_y=False)
    np.testing.assert_allclose(out[0, :2], [-1.0, 0.0])
    np.testing.assert_allclose(bda, np.diag([-1.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("flip_x", [False, True])
@pytest.mark.parametrize("flip_y", [False, True])
def test_bev_augment_matches_its_matrix(flip_x, flip_y):
    boxes = _random_boxes()
    angle, scale = 0.37, 1.04
    out, bda = bev_augment(boxes, angle, scale, flip_x, flip_y)
    hom = np.concatenate([boxes[:, :3], np.ones((len(boxes), 1))], 1)
    np.testing.assert_allclose(out[:, :3], (hom @ bda.T)[:, :3], atol=1e-9)
    np.testing.assert_allclose(out[:, 7:], boxes[:, 7:] @ bda[:2, :2].T, atol=1e-9)
    np.testing.assert_allclose(out[:, 3:6], boxes[:, 3:6] * scale, atol=1e-12)
    expected_heading = box_heading(boxes) @ bda[:2, :2].T / scale
    np.testing.assert_allclose(box_heading(out), expected_heading, atol=1e-9)
    # the official bda_mat (GlobalRotScaleTransImage) is inv(flip @ scale @ rot)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    flip = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    official = np.linalg.inv(flip @ (scale * np.eye(3)) @ rot)
    np.testing.assert_allclose(np.linalg.inv(bda[:3, :3]), official, atol=1e-12)
    # torch gives the same, with a tensor bda
    out_t, bda_t = bev_augment(torch.from_numpy(boxes), angle, scale, flip_x, flip_y)
    np.testing.assert_allclose(out_t.numpy(), out, atol=1e-12)
    np.testing.assert_allclose(bda_t.numpy(), bda, atol=1e-12)


def test_lidar_boxes_container():
    t = torch.from_numpy(_random_boxes(3)).float()
    boxes = LidarBoxes(t, torch.tensor([0, 1, 9]))
    assert len(boxes) == 3 and boxes.corners().shape == (3, 8, 3)
    assert torch.equal(boxes.dims, t[:, 3:6]) and torch.equal(boxes.velocity, t[:, 7:9])
    with pytest.raises(ValueError, match="labels"):
        LidarBoxes(t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[M, 9\]"):
        LidarBoxes(t[:, :7], torch.tensor([0, 1, 2]))
