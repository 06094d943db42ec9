"""FCOS target assignment of the perspective head (FCOS, Tian et al., ICCV 2019; DD3D).

Follows BEVFormer ``projects/mmdet3d_plugin/dd3d/modeling/prepare_targets.py`` and
``nuscenes_dd3d.py`` (``NuscenesDD3DTargetPreparer``):

- the location of feature cell (row, col) at stride s is ``(x, y) = (col * s, row * s)``
  (``dd3d/utils/tensor2d.py`` ``compute_features_locations`` with ``offset="none"``; the
  ``+ s // 2`` of FCOS is commented out there);
- centre sampling: a location is inside a box when it lies strictly inside both the box and
  the square of half-size ``radius * s`` around the box centre (``radius = 1.5``);
- level ranges: the largest of (l, t, r, b) must lie in the level's closed interval
  ``size_ranges[level]``;
- of several candidate boxes the one with the smallest 2D area wins.

Shapes: L levels, P locations of one image over all levels (level-major, row-major within a
level), M boxes of one image. Every target is returned per image so that predictions of B
images stack to (B, P, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "INF",
    "SIZE_RANGES",
    "assign_targets",
    "compute_locations",
    "has_usable_boxes",
    "targets_from_batch",
    "usable_boxes",
]

INF = 1e8

# Per-level (min, max) of max(l, t, r, b) in pixels, P3-P7 (bevformerv2 configs
# ``target_assign_cfg.sizes_of_interest``).
SIZE_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))


# dataset ``mono`` key (bevformer.data.dataset, one list of N per-camera values) -> head key
BATCH_KEYS = {
    "boxes2d": "boxes2d",
    "labels": "labels",
    "centers2d": "center2d",
    "depths": "depth",
    "sizes_wlh": "size_wlh",
    "rotations_cam": "rotation_cam",
    "attr_labels": "attributes",
    "speeds": "speeds",
}


def targets_from_batch(mono: Sequence[Mapping[str, Sequence]], intrinsics: Tensor) -> list[dict]:
    """The batch's ``mono`` (B dicts of key -> N per-camera arrays) and its current-frame
    ``intrinsics`` (B, N, 3, 3) -> the head's B*N per-image target dicts, camera-major within
    each sample (image b * N + n), as float32 / int64 tensors on the intrinsics' device."""
    if len(mono) != intrinsics.shape[0]:
        raise ValueError(
            f"expected one mono dict per sample ({intrinsics.shape[0]}), found {len(mono)}"
        )
    device = intrinsics.device
    out = []
    for b, sample in enumerate(mono):
        for n in range(intrinsics.shape[1]):
            tgt = {"intrinsics": intrinsics[b, n].float()}
            for src, dst in BATCH_KEYS.items():
                dtype = torch.long if dst in ("labels", "attributes") else torch.float32
                tgt[dst] = torch.as_tensor(sample[src][n]).to(device=device, dtype=dtype)
            tgt["boxes2d"] = tgt["boxes2d"].reshape(-1, 4)  # (0,) when empty -> (0, 4)
            out.append(tgt)
    return out


def usable_boxes(labels: Tensor, depth: Tensor, num_classes: int) -> Tensor:
    """Which of M boxes (M,) bool the head trains on: a label in ``[0, num_classes)`` (< 0 marks
    an ignored class) and the centre in front of the camera, ``depth > 0`` (``DD3DMapper``
    drops the others)."""
    return (labels >= 0) & (labels < num_classes) & (depth > 0)


def has_usable_boxes(targets: Sequence[Mapping[str, Tensor]], num_classes: int) -> Tensor:
    """Per image (len(targets),) bool: whether its target dict holds at least one usable box
    (:func:`usable_boxes`), i.e. whether the official detector would pass the image to DD3D
    (``mono_ann_idx`` of BEVFormer ``bevformerV2.py``)."""
    flags = [bool(usable_boxes(t["labels"], t["depth"], num_classes).any()) for t in targets]
    return torch.tensor(flags, dtype=torch.bool)


def compute_locations(
    height: int, width: int, stride: int, *, device: torch.device | None = None
) -> Tensor:
    """Pixel locations (H*W, 2) xy of the cells of one level, row-major: ``(col*s, row*s)``."""
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)  # (H*W, 2)


def assign_targets(
    locations: Sequence[Tensor],
    strides: Sequence[int],
    boxes2d: Tensor,
    *,
    radius: float = 1.5,
    size_ranges: Sequence[tuple[float, float]] = SIZE_RANGES,
) -> tuple[Tensor, Tensor]:
    """Assign each location of one image to at most one GT box.

    ``locations``: per level (H_l*W_l, 2); ``boxes2d``: (M, 4) x1 y1 x2 y2 pixels.
    Returns ``gt_index`` (P,) int64, the winning box or -1 for background, and ``ltrb`` (P, 4),
    the distances from each location to the sides of its box (zeros for background).
    """
    if len(locations) != len(strides) or len(strides) > len(size_ranges):
        raise ValueError(
            f"expected one stride and one size range per level, found {len(locations)} levels, "
            f"{len(strides)} strides and {len(size_ranges)} size ranges"
        )
    counts = [len(loc) for loc in locations]
    points = torch.cat(list(locations), dim=0)  # (P, 2)
    num_points = points.shape[0]
    if boxes2d.numel() == 0:
        return (
            torch.full((num_points,), -1, dtype=torch.long, device=points.device),
            points.new_zeros(num_points, 4),
        )
    boxes2d = boxes2d.to(points)
    # per-location stride and size range, (P,) and (P, 2)
    point_stride = torch.cat(
        [points.new_full((n,), float(s)) for n, s in zip(counts, strides)], dim=0
    )
    point_range = torch.cat(  # (2,) per level -> (H_l*W_l, 2) -> (P, 2)
        [points.new_tensor(size_ranges[lvl]).expand(n, 2) for lvl, n in enumerate(counts)], dim=0
    )

    xs, ys = points[:, 0:1], points[:, 1:2]  # (P, 1)
    x1, y1, x2, y2 = boxes2d.unbind(1)  # (M,) each
    # distances to the box sides, (P, M, 4)
    ltrb = torch.stack([xs - x1, ys - y1, x2 - xs, y2 - ys], dim=2)

    # centre sampling: the box clipped to a (2 * radius * s)-wide square around its centre
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2  # (M,)
    half = radius * point_stride[:, None]  # (P, 1)
    sx1 = torch.maximum(cx - half, x1)  # (P, M)
    sy1 = torch.maximum(cy - half, y1)
    sx2 = torch.minimum(cx + half, x2)
    sy2 = torch.minimum(cy + half, y2)
    inside = torch.stack([xs - sx1, ys - sy1, sx2 - xs, sy2 - ys], dim=2).min(dim=2).values > 0

    max_side = ltrb.max(dim=2).values  # (P, M)
    in_range = (max_side >= point_range[:, 0:1]) & (max_side <= point_range[:, 1:2])

    area = (x2 - x1) * (y2 - y1)  # (M,)
    cost = area[None].expand(num_points, -1).clone()  # (P, M)
    cost[~(inside & in_range)] = INF
    min_cost, gt_index = cost.min(dim=1)  # (P,)
    background = min_cost >= INF
    ltrb = ltrb[torch.arange(num_points, device=points.device), gt_index]  # (P, 4)
    gt_index = gt_index.masked_fill(background, -1)
    ltrb = ltrb.masked_fill(background[:, None], 0.0)
    return gt_index, ltrb
