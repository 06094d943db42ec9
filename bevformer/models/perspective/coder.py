"""3D box encoding and decoding of the perspective head (DD3D, Park et al., ICCV 2021).

A 3D box in the camera frame is described DD3D-style by five parts, each predicted by its own
FCOS3D branch at a feature location ``(u0, v0)`` of the image:

- ``quat``: the box orientation as an *allocentric* unit quaternion (w, x, y, z), i.e. relative
  to the viewing ray through the projected centre; decoding turns it egocentric (camera frame).
- ``proj_ctr``: offset in pixels from the location to the projected 3D centre.
- ``depth``: camera z of the centre, predicted at a canonical focal length: the network output
  is divided by ``factor * ||(1/fx, 1/fy)||`` (``factor = 500``) and clamped to the depth range.
- ``size``: ``(tanh(raw) + 1) * canonical_wlh[class]`` (at most twice the canonical size).

The official code (BEVFormer ``projects/mmdet3d_plugin/dd3d/modeling/fcos3d.py``
``predictions_to_boxes3d``, ``dd3d/utils/geometry.py``, ``dd3d/structures/boxes3d.py``) only
decodes; :func:`encode_boxes3d` is its exact inverse, used to check the decoding.

Corners follow DD3D ``Boxes3D.corners``: object frame x along the length, y along the width,
z along the height (nuScenes ``Box``), sign pattern :data:`CORNER_SIGNS`.

Shapes: P boxes (positive locations), K classes; quaternions (P, 4) wxyz, pixels (P, 2),
intrinsics (P, 3, 3), corners (P, 8, 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bevformer.models.precision import force_fp32
from bevformer.structures.boxes import CLASSES

__all__ = [
    "BOX3D_CHANNELS",
    "CANONICAL_BOX_SIZES",
    "CORNER_SIGNS",
    "DD3D_ATTRIBUTE_IDS",
    "NO_ATTRIBUTE",
    "NUM_ATTRIBUTES",
    "allocentric_to_egocentric",
    "attribute_ids",
    "box3d_corners",
    "canonical_box_sizes",
    "decode_boxes3d",
    "egocentric_to_allocentric",
    "encode_boxes3d",
    "matrix_to_quaternion",
    "quaternion_to_matrix",
    "unproject",
]

EPS = 1e-7

# Raw FCOS3D outputs, class-specific: name -> channels per class (``conf3d`` is the logit of
# the 3D confidence, not part of the box).
BOX3D_CHANNELS = {"quat": 4, "proj_ctr": 2, "depth": 1, "size": 3, "conf3d": 1}

# Mean nuScenes box size (w, l, h) in metres per class: the bevformerv2 configs'
# ``fcos3d_loss_cfg.canon_box_sizes`` (given there in DD3D's alphabetical class order),
# keyed by name so that they follow this project's label order.
CANONICAL_BOX_SIZES = {
    "barrier": (2.3524184, 0.5062202, 1.0413622),
    "bicycle": (0.61416006, 1.7016163, 1.3054738),
    "bus": (2.9139307, 10.725025, 3.2832346),
    "car": (1.9751819, 4.641267, 1.74352),
    "construction_vehicle": (2.772134, 6.565072, 3.2474296),
    "motorcycle": (0.7800532, 2.138673, 1.4437162),
    "pedestrian": (0.6667362, 0.7181772, 1.7616143),
    "traffic_cone": (0.40246472, 0.4027083, 1.0084083),
    "trailer": (3.0059454, 12.8197, 4.1213827),
    "truck": (2.4986045, 6.9310856, 2.8382742),
}

# DD3D attribute ids (BEVFormer ``dd3d/datasets/nuscenes.py`` ``ATTRIBUTE_IDS``): the three
# states of each attribute family share the ids 0-2; 3 means "no attribute" and is ignored
# by the attribute loss.
DD3D_ATTRIBUTE_IDS = {
    "vehicle.moving": 0,
    "vehicle.parked": 1,
    "vehicle.stopped": 2,
    "pedestrian.moving": 0,
    "pedestrian.standing": 1,
    "pedestrian.sitting_lying_down": 2,
    "cycle.with_rider": 0,
    "cycle.without_rider": 1,
}
NUM_ATTRIBUTES = 3
NO_ATTRIBUTE = NUM_ATTRIBUTES

# Corner c of a box sits at 0.5 * (l * sx, w * sy, h * sz) in the object frame (DD3D order).
CORNER_SIGNS = (
    (1, 1, 1, 1, -1, -1, -1, -1),
    (1, -1, -1, 1, 1, -1, -1, 1),
    (1, 1, -1, -1, 1, 1, -1, -1),
)


def attribute_ids(names: list[str] | tuple[str, ...]) -> Tensor:
    """nuScenes attribute names (``""`` for none) -> DD3D ids (M,) int64, 3 where none."""
    return torch.tensor([DD3D_ATTRIBUTE_IDS.get(n, NO_ATTRIBUTE) for n in names], dtype=torch.long)


def canonical_box_sizes(classes: tuple[str, ...] = CLASSES) -> Tensor:
    """Canonical (w, l, h) per label, (K, 3) float32, in the order of ``classes``."""
    missing = [c for c in classes if c not in CANONICAL_BOX_SIZES]
    if missing:
        raise KeyError(
            f"no canonical box size for classes {missing}; known: {sorted(CANONICAL_BOX_SIZES)}. "
            "Pass canonical_box_sizes explicitly for other classes."
        )
    return torch.tensor([CANONICAL_BOX_SIZES[c] for c in classes], dtype=torch.float32)


def quaternion_to_matrix(quat: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) of quaternions (..., 4) wxyz (normalised on the way)."""
    w, x, y, z = quat.unbind(-1)
    s = 2.0 / (quat * quat).sum(-1)
    rows = (
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    )  # fmt: skip
    # (..., 9) -> (..., 3, 3), row-major
    return torch.stack(rows, dim=-1).reshape(*quat.shape[:-1], 3, 3)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Unit quaternions (..., 4) wxyz of rotation matrices (..., 3, 3).

    Of the four algebraically equal solutions, each row uses the one with the largest
    denominator (4|w|, 4|x|, 4|y| or 4|z|), which is well conditioned for every rotation.
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2)
    sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
    r = sq.clamp(min=0).sqrt()  # 2|w|, 2|x|, 2|y|, 2|z|
    d21 = m[..., 2, 1] - m[..., 1, 2]  # 4 w x
    d02 = m[..., 0, 2] - m[..., 2, 0]  # 4 w y
    d10 = m[..., 1, 0] - m[..., 0, 1]  # 4 w z
    s10 = m[..., 1, 0] + m[..., 0, 1]  # 4 x y
    s02 = m[..., 0, 2] + m[..., 2, 0]  # 4 x z
    s21 = m[..., 2, 1] + m[..., 1, 2]  # 4 y z
    # candidate k is 4 * q_k * q, divided by 2 * r_k = 4 |q_k| below
    cands = torch.stack(
        [
            torch.stack([sq[..., 0], d21, d02, d10], -1),
            torch.stack([d21, sq[..., 1], s10, s02], -1),
            torch.stack([d02, s10, sq[..., 2], s21], -1),
            torch.stack([d10, s02, s21, sq[..., 3]], -1),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4)
    cands = cands / (2.0 * r.clamp(min=0.1)).unsqueeze(-1)
    best = r.argmax(-1)  # (...,)
    index = best[..., None, None].expand(*best.shape, 1, 4)  # (...,) -> (..., 1, 4)
    quat = cands.gather(-2, index).squeeze(-2)
    return quat / quat.norm(dim=-1, keepdim=True).clamp(min=EPS)


@force_fp32
def unproject(points2d: Tensor, inv_intrinsics: Tensor) -> Tensor:
    """Rays ``K^-1 (u, v, 1)`` (P, 3) of pixels (P, 2) with inverse intrinsics (P, 3, 3)."""
    homog = torch.cat([points2d, torch.ones_like(points2d[:, :1])], dim=1)
    return (inv_intrinsics @ homog.unsqueeze(-1)).squeeze(-1)


def _ray_frame(proj_ctr: Tensor, inv_intrinsics: Tensor) -> Tensor:
    """Rotation (P, 3, 3) whose z column is the viewing ray through ``proj_ctr`` and whose y
    column is the camera y axis made orthogonal to it (DD3D ``allocentric_to_egocentric``)."""
    ray = unproject(proj_ctr, inv_intrinsics)
    z = ray / ray.norm(dim=1, keepdim=True)
    y = z.new_tensor([0.0, 1.0, 0.0]).expand_as(z) - z[:, 1:2] * z
    y = y / y.norm(dim=1, keepdim=True)
    x = torch.cross(y, z, dim=1)
    return torch.stack([x, y, z], dim=-1)


@force_fp32
def allocentric_to_egocentric(quat: Tensor, proj_ctr: Tensor, inv_intrinsics: Tensor) -> Tensor:
    """Allocentric quaternions (P, 4) at projected centres (P, 2) -> camera-frame ones (P, 4)."""
    rot = _ray_frame(proj_ctr, inv_intrinsics) @ quaternion_to_matrix(quat)
    return matrix_to_quaternion(rot)


@force_fp32
def egocentric_to_allocentric(quat: Tensor, proj_ctr: Tensor, inv_intrinsics: Tensor) -> Tensor:
    """Camera-frame quaternions (P, 4) -> allocentric ones (P, 4); inverse of the above."""
    rot = _ray_frame(proj_ctr, inv_intrinsics).transpose(1, 2) @ quaternion_to_matrix(quat)
    return matrix_to_quaternion(rot)


def _pixel_size(inv_intrinsics: Tensor) -> Tensor:
    """``||(1/fx, 1/fy)||`` (P,), the depth scale of DD3D's focal-length normalisation."""
    return torch.stack([inv_intrinsics[:, 0, 0], inv_intrinsics[:, 1, 1]], dim=-1).norm(dim=-1)


def decode_boxes3d(
    quat: Tensor,
    proj_ctr: Tensor,
    depth: Tensor,
    size: Tensor,
    locations: Tensor,
    inv_intrinsics: Tensor,
    canon_sizes: Tensor,
    *,
    min_depth: float = 0.1,
    max_depth: float = 80.0,
    depth_factor: float = 500.0,
) -> dict[str, Tensor]:
    """Raw FCOS3D outputs of P locations -> boxes in the camera frame.

    ``quat`` (P, 4) allocentric (unnormalised), ``proj_ctr`` (P, 2) pixel offsets from
    ``locations`` (P, 2), ``depth`` (P,), ``size`` (P, 3) raw, ``canon_sizes`` (P, 3) wlh of each
    box's class. Returns ``quat`` (P, 4) egocentric unit wxyz, ``proj_ctr`` (P, 2) pixels,
    ``depth`` (P,) metres, ``size`` (P, 3) wlh metres, ``center`` (P, 3) camera xyz metres.
    """
    quat = quat / quat.norm(dim=1, keepdim=True).clamp(min=EPS)
    depth = depth / (_pixel_size(inv_intrinsics) * depth_factor)
    depth = depth.clamp(min_depth, max_depth)
    proj_ctr = locations + proj_ctr
    quat = allocentric_to_egocentric(quat, proj_ctr, inv_intrinsics)
    size = (size.tanh() + 1.0) * canon_sizes
    center = unproject(proj_ctr, inv_intrinsics) * depth.unsqueeze(1)
    return {"quat": quat, "proj_ctr": proj_ctr, "depth": depth, "size": size, "center": center}


def encode_boxes3d(
    quat: Tensor,
    center2d: Tensor,
    depth: Tensor,
    size: Tensor,
    locations: Tensor,
    inv_intrinsics: Tensor,
    canon_sizes: Tensor,
    *,
    depth_factor: float = 500.0,
) -> dict[str, Tensor]:
    """Camera-frame boxes -> the raw outputs that :func:`decode_boxes3d` maps back onto them.

    ``quat`` (P, 4) egocentric wxyz, ``center2d`` (P, 2) projected centre pixels, ``depth``
    (P,) metres (inside the depth range), ``size`` (P, 3) wlh, strictly between 0 and twice
    ``canon_sizes`` (P, 3). Returns ``quat`` (P, 4), ``proj_ctr`` (P, 2), ``depth`` (P,),
    ``size`` (P, 3).
    """
    ratio = size / canon_sizes - 1.0
    if bool(((ratio <= -1) | (ratio >= 1)).any()):
        raise ValueError(
            "expected sizes strictly between 0 and twice the canonical size, found ratios "
            f"size/canonical in [{(ratio + 1).min():.3f}, {(ratio + 1).max():.3f}]; such boxes "
            "cannot be represented by the tanh size encoding"
        )
    return {
        "quat": egocentric_to_allocentric(quat, center2d, inv_intrinsics),
        "proj_ctr": center2d - locations,
        "depth": depth * _pixel_size(inv_intrinsics) * depth_factor,
        "size": torch.atanh(ratio),
    }


@force_fp32
def box3d_corners(quat: Tensor, center: Tensor, size: Tensor) -> Tensor:
    """The 8 corners (P, 8, 3) of boxes with quaternion (P, 4) wxyz, centre (P, 3), wlh (P, 3)."""
    signs = quat.new_tensor(CORNER_SIGNS).T  # (8, 3)
    lwh = size[:, [1, 0, 2]]
    local = 0.5 * lwh.unsqueeze(1) * signs.unsqueeze(0)  # (P, 8, 3)
    rot = quaternion_to_matrix(quat)  # (P, 3, 3)
    return local @ rot.transpose(1, 2) + center.unsqueeze(1)
