"""The 9-number 3D box vector in the lidar frame, its conversions and BEV augmentation.

The vector, its size order and its yaw convention are defined in ``docs/CONVENTIONS.md``:
``[X, Y, Z, W, L, H, YAW, VX, VY]`` with the gravity centre, nuScenes ``wlh`` and the
mmdetection3d-0.17 ``LiDARInstance3DBoxes`` yaw that BEVFormer's heads and checkpoints use,
``YAW = -yaw_nus - pi/2`` (``yaw_nus``: counter-clockwise angle from lidar x to the box length).
The heading (length direction) of a box is therefore ``(-sin YAW, -cos YAW)`` in lidar x, y.

Conversions to and from nuScenes ``Box`` follow mmdetection3d 0.17: the info converter
(``tools/data_converter/nuscenes_converter.py``: ``-yaw - pi/2``, velocity rotated from global
into lidar) and ``output_to_nusc_box`` / ``lidar_nusc_box_to_global``
(``mmdet3d/datasets/nuscenes_dataset.py``).

The BEV augmentation of the ground truth (rotate / scale / flip) reproduces
``LiDARInstance3DBoxes.rotate/scale/flip`` of mmdetection3d 0.17 as BEVFormer v2's
``GlobalRotScaleTransImage`` applies them, and returns the 4x4 ``bda`` matrix applied to the
GT (``p_aug = bda @ p``).

Array functions accept numpy arrays or torch tensors ``[..., 9]`` (M boxes: ``[M, 9]``) and
return the input's type; inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:  # imported where used: the devkit pulls matplotlib and more on import
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

__all__ = [
    "X",
    "Y",
    "Z",
    "W",
    "L",
    "H",
    "YAW",
    "VX",
    "VY",
    "BOX_DIM",
    "CLASSES",
    "CORNER_SIGNS",
    "yaw_from_nus",
    "yaw_to_nus",
    "box_heading",
    "box_corners",
    "boxes_from_nusc",
    "boxes_to_nusc",
    "boxes_from_global",
    "boxes_to_global",
    "rotate_boxes",
    "scale_boxes",
    "flip_boxes",
    "bev_augment",
    "LidarBoxes",
]

X, Y, Z, W, L, H, YAW, VX, VY = range(9)
BOX_DIM = 9

# The nuScenes detection classes in the detection-challenge order; index = label.
CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _copy(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else np.array(x, copy=True)


def _xp(x: Array):
    """numpy or torch, whichever ``x`` belongs to (for sin/cos/stack)."""
    return torch if isinstance(x, torch.Tensor) else np


def _check_boxes(boxes: Array) -> None:
    if boxes.shape[-1] != BOX_DIM:
        raise ValueError(
            f"expected boxes [..., {BOX_DIM}] (x, y, z, w, l, h, yaw, vx, vy), got shape "
            f"{tuple(boxes.shape)}"
        )


def yaw_from_nus(yaw_nus):
    """Box-vector ``YAW`` from the counter-clockwise lidar-frame heading ``yaw_nus``."""
    return -yaw_nus - math.pi / 2


def yaw_to_nus(yaw):
    """Counter-clockwise lidar-frame heading ``yaw_nus`` from the box-vector ``YAW``."""
    return -yaw - math.pi / 2


def box_heading(boxes: Array) -> Array:
    """Unit vector of each box's length direction in lidar x, y: ``[..., 2]``."""
    _check_boxes(boxes)
    xp = _xp(boxes)
    yaw = boxes[..., YAW]
    return xp.stack([-xp.sin(yaw), -xp.cos(yaw)], -1)


# Corner signs in the box's own frame (x along the length, y along the width to the left,
# z up), in nuScenes ``Box.corners()`` order: corners 0-3 are the front face (+length),
# 4-7 the back face; 0, 1, 4, 5 are on the top. Multiply by (l/2, w/2, h/2).
CORNER_SIGNS = np.array(
    [
        [1, 1, 1],
        [1, -1, 1],
        [1, -1, -1],
        [1, 1, -1],
        [-1, 1, 1],
        [-1, -1, 1],
        [-1, -1, -1],
        [-1, 1, -1],
    ],
    dtype=np.float64,
)


def box_corners(boxes: Array) -> Array:
    """The 8 corners ``[..., 8, 3]`` of each box in lidar coordinates.

    Order as nuScenes ``Box.corners()``: 0-3 on the front face (the end the heading points
    to), 4-7 on the back face, "left" meaning the box's own left (+width side):
    0 front-left-top, 1 front-right-top, 2 front-right-bottom, 3 front-left-bottom,
    4 back-left-top, 5 back-right-top, 6 back-right-bottom, 7 back-left-bottom.
    """
    _check_boxes(boxes)
    xp = _xp(boxes)
    signs = boxes.new_tensor(CORNER_SIGNS) if xp is torch else CORNER_SIGNS.astype(boxes.dtype)
    # half extents along (length, width, height): [..., 1, 3]
    half = xp.stack([boxes[..., L], boxes[..., W], boxes[..., H]], -1)[..., None, :] / 2
    local = signs * half  # [..., 8, 3]
    yaw_nus = yaw_to_nus(boxes[..., YAW])[..., None]  # [..., 1]
    cos, sin = xp.cos(yaw_nus), xp.sin(yaw_nus)
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    rotated = xp.stack([x, y, local[..., 2]], -1)
    return rotated + boxes[..., None, :3]


# ----------------------------------------------------------------------------------------
# nuScenes Box <-> box vector
# ----------------------------------------------------------------------------------------


def boxes_from_nusc(boxes: Sequence[Box], velocities: np.ndarray | None = None) -> np.ndarray:
    """nuScenes ``Box`` es already in the lidar frame -> ``[M, 9]`` float64.

    ``velocities [M, 2 or 3]`` (lidar frame, m/s) override ``Box.velocity``; NaN stays NaN.
    The heading is ``orientation.yaw_pitch_roll[0]`` as mmdetection3d's converter takes it.
    """
    out = np.zeros((len(boxes), BOX_DIM), dtype=np.float64)
    for i, box in enumerate(boxes):
        out[i, X : Z + 1] = box.center
        out[i, W : H + 1] = box.wlh
        out[i, YAW] = yaw_from_nus(box.orientation.yaw_pitch_roll[0])
        velo = box.velocity if velocities is None else velocities[i]
        out[i, VX : VY + 1] = np.asarray(velo, dtype=np.float64)[:2]
    return out


def boxes_to_nusc(
    boxes: np.ndarray | torch.Tensor,
    labels: Sequence[int] | None = None,
    scores: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> list[Box]:
    """``[M, 9]`` -> nuScenes ``Box`` es in the lidar frame (velocity ``(vx, vy, 0)``)."""
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().double().numpy()
    boxes = np.asarray(boxes, dtype=np.float64)
    _check_boxes(boxes)
    out = []
    for i, b in enumerate(boxes.reshape(-1, BOX_DIM)):
        out.append(
            Box(
                center=b[X : Z + 1].tolist(),
                size=b[W : H + 1].tolist(),
                orientation=Quaternion(axis=[0.0, 0.0, 1.0], radians=float(yaw_to_nus(b[YAW]))),
                label=int(labels[i]) if labels is not None else np.nan,
                score=float(scores[i]) if scores is not None else np.nan,
                velocity=(float(b[VX]), float(b[VY]), 0.0),
                name=names[i] if names is not None else None,
            )
        )
    return out


def _rotation(transform: np.ndarray) -> Quaternion:
    from pyquaternion import Quaternion

    return Quaternion(matrix=np.asarray(transform, dtype=np.float64)[:3, :3], atol=1e-6)


def boxes_to_global(
    boxes: np.ndarray | torch.Tensor,
    lidar2ego: np.ndarray,
    ego2global: np.ndarray,
    labels: Sequence[int] | None = None,
    scores: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> list[Box]:
    """``[M, 9]`` lidar boxes -> nuScenes ``Box`` es in the global frame.

    Centre and orientation go through ``lidar2ego`` then ``ego2global``; the velocity
    ``(vx, vy, 0)`` is only rotated (mmdetection3d ``lidar_nusc_box_to_global``).
    """
    lidar2ego = np.asarray(lidar2ego, dtype=np.float64)
    ego2global = np.asarray(ego2global, dtype=np.float64)
    out = boxes_to_nusc(boxes, labels, scores, names)
    for box in out:
        box.rotate(_rotation(lidar2ego))
        box.translate(lidar2ego[:3, 3])
        box.rotate(_rotation(ego2global))
        box.translate(ego2global[:3, 3])
    return out


def boxes_from_global(
    boxes: Sequence[Box], lidar2ego: np.ndarray, ego2global: np.ndarray
) -> np.ndarray:
    """Global-frame nuScenes ``Box`` es (with global ``velocity``) -> ``[M, 9]`` lidar boxes.

    The inverse of :func:`boxes_to_global`; the inputs are copied, not moved.
    """
    lidar2ego = np.asarray(lidar2ego, dtype=np.float64)
    ego2global = np.asarray(ego2global, dtype=np.float64)
    local = []
    for box in boxes:
        b = box.copy()
        b.translate(-ego2global[:3, 3])
        b.rotate(_rotation(ego2global).inverse)
        b.translate(-lidar2ego[:3, 3])
        b.rotate(_rotation(lidar2ego).inverse)
        local.append(b)
    return boxes_from_nusc(local)


# ----------------------------------------------------------------------------------------
# BEV augmentation of the ground truth (mmdetection3d 0.17 LiDARInstance3DBoxes semantics)
# ----------------------------------------------------------------------------------------


def rotate_boxes(boxes: Array, angle: float) -> Array:
    """``LiDARInstance3DBoxes.rotate(angle)`` of mmdetection3d 0.17.

    Row vectors are multiplied by ``[[c, -s], [s, c]]``, i.e. positions and velocities turn
    **clockwise** by ``angle`` (``(1, 0)`` -> ``(cos a, -sin a)``), and ``YAW += angle``, which
    turns the heading clockwise too. BEVFormer v2 calls it with ``-angle``
    (``reverse_angle=True``), a counter-clockwise turn; see :func:`bev_augment`.
    """
    _check_boxes(boxes)
    c, s = math.cos(angle), math.sin(angle)
    out = _copy(boxes)
    x, y = boxes[..., X], boxes[..., Y]
    vx, vy = boxes[..., VX], boxes[..., VY]
    out[..., X] = x * c + y * s
    out[..., Y] = -x * s + y * c
    out[..., VX] = vx * c + vy * s
    out[..., VY] = -vx * s + vy * c
    out[..., YAW] = boxes[..., YAW] + angle
    return out


def scale_boxes(boxes: Array, factor: float) -> Array:
    """``LiDARInstance3DBoxes.scale(factor)``: centre, size and velocity times ``factor``."""
    _check_boxes(boxes)
    out = _copy(boxes)
    out[..., X : H + 1] = boxes[..., X : H + 1] * factor
    out[..., VX : VY + 1] = boxes[..., VX : VY + 1] * factor
    return out


def flip_boxes(boxes: Array, bev_direction: str) -> Array:
    """``LiDARInstance3DBoxes.flip(bev_direction)`` of mmdetection3d 0.17.

    ``"horizontal"`` negates y and vy and sets ``YAW = pi - YAW``; ``"vertical"`` negates x and
    vx and sets ``YAW = -YAW``. Either way the heading is mirrored with the positions.
    """
    _check_boxes(boxes)
    out = _copy(boxes)
    if bev_direction == "horizontal":
        out[..., Y] = -boxes[..., Y]
        out[..., VY] = -boxes[..., VY]
        out[..., YAW] = math.pi - boxes[..., YAW]
    elif bev_direction == "vertical":
        out[..., X] = -boxes[..., X]
        out[..., VX] = -boxes[..., VX]
        out[..., YAW] = -boxes[..., YAW]
    else:
        raise ValueError(
            f"bev_direction must be 'horizontal' (flip y) or 'vertical' (flip x), "
            f"got {bev_direction!r}"
        )
    return out


def bev_augment(
    boxes: Array, angle: float, scale: float, flip_x: bool, flip_y: bool
) -> tuple[Array, Array]:
    """BEV data augmentation of the GT as BEVFormer v2's ``GlobalRotScaleTransImage``
    (``reverse_angle=True, only_gt=True``): rotate, then scale, then flip x, then flip y.

    ``angle`` (radians) turns the scene **counter-clockwise** seen from above (the official
    code samples ``rot_angle`` and calls ``rotate(-rot_angle)``). Returns the augmented boxes
    and ``bda [4, 4]`` with ``p_aug = bda @ p`` for centres (velocities: ``bda[:2, :2]``),
    ``bda = F @ S @ R`` (the official ``bda_mat`` is its inverse, used to resample the BEV).
    The matrix has the boxes' type, dtype and device.
    """
    out = rotate_boxes(boxes, -angle)
    out = scale_boxes(out, scale)
    if flip_x:
        out = flip_boxes(out, "vertical")
    if flip_y:
        out = flip_boxes(out, "horizontal")
    c, s = math.cos(angle), math.sin(angle)
    fx = -1.0 if flip_x else 1.0
    fy = -1.0 if flip_y else 1.0
    bda = [
        [fx * scale * c, -fx * scale * s, 0.0, 0.0],
        [fy * scale * s, fy * scale * c, 0.0, 0.0],
        [0.0, 0.0, scale, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
    if isinstance(boxes, torch.Tensor):
        return out, boxes.new_tensor(bda)
    return out, np.asarray(bda, dtype=boxes.dtype if boxes.dtype.kind == "f" else np.float64)


# ----------------------------------------------------------------------------------------
# Typed container
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LidarBoxes:
    """Boxes of one sample in the lidar frame: ``tensor [M, 9]``, ``labels [M]`` (int64,
    index into :data:`CLASSES`), ``scores [M]`` (None for ground truth)."""

    tensor: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tensor.dim() != 2 or self.tensor.shape[1] != BOX_DIM:
            raise ValueError(f"tensor must be [M, {BOX_DIM}], got {tuple(self.tensor.shape)}")
        m = self.tensor.shape[0]
        if tuple(self.labels.shape) != (m,):
            raise ValueError(f"labels must be [{m}], got {tuple(self.labels.shape)}")
        if self.scores is not None and tuple(self.scores.shape) != (m,):
            raise ValueError(f"scores must be [{m}], got {tuple(self.scores.shape)}")

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @property
    def centers(self) -> torch.Tensor:
        """Gravity centres ``[M, 3]``."""
        return self.tensor[:, X : Z + 1]

    @property
    def dims(self) -> torch.Tensor:
        """Sizes ``(w, l, h)`` ``[M, 3]``."""
        return self.tensor[:, W : H + 1]

    @property
    def yaw(self) -> torch.Tensor:
        return self.tensor[:, YAW]

    @property
    def velocity(self) -> torch.Tensor:
        return self.tensor[:, VX : VY + 1]

    def corners(self) -> torch.Tensor:
        """``[M, 8, 3]``, order of :func:`box_corners`."""
        return box_corners(self.tensor)

    def to(self, device: torch.device | str) -> LidarBoxes:
        scores = None if self.scores is None else self.scores.to(device)
        return LidarBoxes(self.tensor.to(device), self.labels.to(device), scores)
