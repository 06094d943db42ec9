"""4x4 homogeneous transforms between the nuScenes frames (global, ego, lidar, camera).

Frames and the ``a2b`` naming are defined once in ``docs/CONVENTIONS.md``: ``a2b`` maps points
in frame ``a`` to frame ``b`` with column vectors, ``p_b = a2b @ p_a``. Every function here
accepts numpy arrays or torch tensors (the result has the input's type) and broadcasts over
leading dimensions:

    transform [..., 4, 4]    points [..., P, 3]    intrinsics [..., 3, 3]

``cam2lidar`` follows mmdetection3d's ``obtain_sensor2top``
(``tools/data_converter/nuscenes_converter.py``): a camera has its own timestamp and ego pose,
so the chain goes camera -> ego(t_cam) -> global -> ego(t_lidar) -> lidar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from pyquaternion import Quaternion

__all__ = [
    "transform_from",
    "pose_matrix",
    "invert",
    "apply",
    "cam2lidar",
    "lidar2img",
    "project_points",
]

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def transform_from(rotation_wxyz: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """Rigid 4x4 (float64) from a unit quaternion ``(w, x, y, z)`` and a translation in metres."""
    if len(rotation_wxyz) != 4 or len(translation) != 3:
        raise ValueError(
            "expected a quaternion (w, x, y, z) and a translation (x, y, z), got "
            f"{len(rotation_wxyz)} and {len(translation)} numbers"
        )
    out = np.eye(4)
    out[:3, :3] = Quaternion(np.asarray(rotation_wxyz, dtype=np.float64)).rotation_matrix
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def pose_matrix(record: dict) -> np.ndarray:
    """4x4 of a nuScenes ``ego_pose`` or ``calibrated_sensor`` record (its ``rotation`` and
    ``translation``): ``ego2global`` for a pose, ``sensor2ego`` for a calibration."""
    return transform_from(record["rotation"], record["translation"])


def invert(transform: Array) -> Array:
    """Inverse of rigid transforms ``[..., 4, 4]`` (rotation + translation), in closed form:
    ``[R t; 0 1]^-1 = [R^T -R^T t; 0 1]``."""
    rot_t = transform[..., :3, :3].swapaxes(-1, -2)
    trans = transform[..., :3, 3:]
    out = transform * 0
    out[..., :3, :3] = rot_t
    out[..., :3, 3:] = -(rot_t @ trans)
    out[..., 3, 3] = 1
    return out


def apply(transform: Array, points: Array) -> Array:
    """Apply ``transform [..., 4, 4]`` to points ``[..., P, 3]`` -> ``[..., P, 3]``.

    The last row of ``transform`` is ignored (affine use); for a projection use
    :func:`project_points`.
    """
    rot = transform[..., :3, :3]
    trans = transform[..., None, :3, 3]
    return points @ rot.swapaxes(-1, -2) + trans


def cam2lidar(
    cam2ego: Array, ego2global_cam: Array, ego2global_lidar: Array, lidar2ego: Array
) -> Array:
    """Camera -> lidar frame of the sample: ``inv(lidar2ego) @ inv(ego2global_lidar) @
    ego2global_cam @ cam2ego``, each ego pose taken at its sensor's timestamp."""
    return invert(lidar2ego) @ invert(ego2global_lidar) @ ego2global_cam @ cam2ego


def lidar2img(intrinsics: Array, cam2lidar_: Array) -> Array:
    """Lidar points -> pixels: ``[K 0; 0 1] @ inv(cam2lidar)`` ``[..., 4, 4]``.

    A lidar point ``(x, y, z, 1)`` maps to ``(u*d, v*d, d, 1)``, ``d`` the camera depth.
    """
    viewpad = cam2lidar_ * 0
    viewpad[..., :3, :3] = intrinsics
    viewpad[..., 3, 3] = 1
    return viewpad @ invert(cam2lidar_)


def project_points(lidar2img_: Array, points: Array, eps: float = 1e-5) -> tuple[Array, Array]:
    """Project points ``[..., P, 3]`` with ``lidar2img [..., 4, 4]``.

    Returns ``(uv [..., P, 2], depth [..., P])``: pixel coordinates as the intrinsics define
    them (u right, v down) and the depth along the camera z axis. Points with
    ``depth <= eps`` are behind the camera; their ``uv`` is computed with the depth clamped
    to ``eps`` and must be masked by the caller.
    """
    cam = apply(lidar2img_, points)  # [..., P, 3] = (u*d, v*d, d)
    depth = cam[..., 2]
    if isinstance(depth, torch.Tensor):
        denom = depth.clamp(min=eps)
    else:
        denom = np.maximum(depth, eps)
    return cam[..., :2] / denom[..., None], depth
