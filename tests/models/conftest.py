"""Shared helpers for the model tests: the real nuScenes camera rig at a small image scale.

Shapes: N cameras (6), lidar2img [N, 4, 4] float64, images [N, C, H, W].
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bevformer.structures.frames import cam2lidar, lidar2img, transform_from

# the project copy of a real nuScenes calibration (the synthetic generator's rig)
RIG_PATH = (
    Path(__file__).resolve().parents[2] / "bevformer" / "data" / "synthetic" / "nuscenes_rig.json"
)

CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)


def load_rig() -> dict:
    return json.loads(RIG_PATH.read_text())


def yaw_pose(x: float, y: float, yaw_deg: float) -> np.ndarray:
    """ego2global of an ego at (x, y) heading ``yaw_deg`` counter-clockwise."""
    half = math.radians(yaw_deg) / 2
    return transform_from([math.cos(half), 0.0, 0.0, math.sin(half)], [x, y, 0.0])


class Rig:
    """The six nuScenes cameras scaled to ``scale`` x (1600 x 900)."""

    def __init__(self, scale: float) -> None:
        rig = load_rig()
        sensors = rig["sensors"]
        self.scale = scale
        width, height = rig["image_size_wh"]
        self.img_hw = (round(height * scale), round(width * scale))
        lid = sensors["LIDAR_TOP"]["sensor2ego"]
        self.lidar2ego = transform_from(lid["rotation_wxyz"], lid["translation"])
        self.K, self.cam2ego = [], []
        for name in CAMERAS:
            cam = sensors[name]
            K = np.asarray(cam["intrinsic"], dtype=np.float64).copy()
            K[:2] *= scale
            self.K.append(K)
            c2e = cam["sensor2ego"]
            self.cam2ego.append(transform_from(c2e["rotation_wxyz"], c2e["translation"]))
        self.K = np.stack(self.K)
        self.cam2ego = np.stack(self.cam2ego)

    def lidar2img(
        self, ego2global_cam: np.ndarray | None = None, ego2global_lidar: np.ndarray | None = None
    ) -> np.ndarray:
        """[N, 4, 4]: lidar points of the frame with pose ``ego2global_lidar`` -> pixels of the
        images taken at ``ego2global_cam`` (both identity by default)."""
        eye = np.eye(4)
        g_cam = eye if ego2global_cam is None else ego2global_cam
        g_lid = eye if ego2global_lidar is None else ego2global_lidar
        c2l = cam2lidar(self.cam2ego, g_cam[None], g_lid[None], self.lidar2ego[None])
        return lidar2img(self.K, c2l)


@pytest.fixture(scope="session")
def rig_small() -> Rig:
    return Rig(0.04)  # 64 x 36 images


@pytest.fixture(scope="session")
def make_rig():
    """``make_rig(scale) -> Rig``."""
    return Rig


@pytest.fixture(scope="session")
def pose():
    """``pose(x, y, yaw_deg) -> ego2global``."""
    return yaw_pose


@pytest.fixture(scope="session")
def rig_tenth() -> Rig:
    return Rig(0.1)  # 160 x 90 images
