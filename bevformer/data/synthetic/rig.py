"""The sensor rig of the synthetic dataset: a real nuScenes calibration (six cameras and
LIDAR_TOP, ``nuscenes_rig.json`` beside this file) and small pose helpers.

Frames follow ``docs/CONVENTIONS.md``: ``sensor2ego`` maps sensor points to the ego frame
(x forward, y left, z up); cameras are x right, y down, z forward. Quaternions are ``wxyz``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalog import CAMERA_NAMES, LIDAR_NAME

__all__ = [
    "RIG_PATH",
    "Rig",
    "SensorCalib",
    "load_rig",
    "pose_matrix",
    "quat_to_matrix",
    "yaw_to_quat",
]

RIG_PATH = Path(__file__).with_name("nuscenes_rig.json")
REFERENCE_SIZE = (1600, 900)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a unit quaternion ``wxyz``."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw_to_quat(yaw: float) -> list[float]:
    """Quaternion ``wxyz`` of a rotation by ``yaw`` radians about +z."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def pose_matrix(rotation_wxyz: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from a quaternion and a translation."""
    mat = np.eye(4)
    mat[:3, :3] = quat_to_matrix(rotation_wxyz)
    mat[:3, 3] = translation
    return mat


@dataclass(frozen=True)
class SensorCalib:
    """One sensor: its channel, its ``sensor2ego`` pose and (cameras) the 3x3 intrinsics."""

    channel: str
    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    intrinsic: np.ndarray | None  # (3, 3) or None for the lidar

    @property
    def sensor2ego(self) -> np.ndarray:
        return pose_matrix(np.array(self.rotation), np.array(self.translation))


@dataclass(frozen=True)
class Rig:
    """The six cameras (in ``CAMERA_NAMES`` order), the lidar, and the image size."""

    cameras: tuple[SensorCalib, ...]
    lidar: SensorCalib
    width: int
    height: int


def load_rig(image_size: tuple[int, int] = REFERENCE_SIZE, path: Path = RIG_PATH) -> Rig:
    """Reads the rig and scales the intrinsics to ``image_size`` = (W, H).

    fx and cx scale by W/1600, fy and cy by H/900 (the rig was calibrated at 1600x900).
    """
    width, height = int(image_size[0]), int(image_size[1])
    if width < 16 or height < 16:
        raise ValueError(f"image size must be at least 16x16 pixels, got {width}x{height}.")
    data = json.loads(Path(path).read_text())
    ref_w, ref_h = data.get("image_size_wh", REFERENCE_SIZE)
    sensors = data["sensors"]
    missing = [n for n in (*CAMERA_NAMES, LIDAR_NAME) if n not in sensors]
    if missing:
        raise KeyError(
            f"{path}: sensors {missing} are missing; expected all of {[*CAMERA_NAMES, LIDAR_NAME]}."
        )
    scale = np.diag([width / ref_w, height / ref_h, 1.0])

    def calib(name: str) -> SensorCalib:
        rec = sensors[name]
        pose = rec["sensor2ego"]
        intrinsic = None
        if "intrinsic" in rec:
            intrinsic = scale @ np.array(rec["intrinsic"], dtype=np.float64)
        return SensorCalib(
            channel=name,
            translation=tuple(float(v) for v in pose["translation"]),
            rotation=tuple(float(v) for v in pose["rotation_wxyz"]),
            intrinsic=intrinsic,
        )

    return Rig(
        cameras=tuple(calib(n) for n in CAMERA_NAMES),
        lidar=calib(LIDAR_NAME),
        width=width,
        height=height,
    )
