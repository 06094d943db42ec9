"""Collate dataset items into the batch layout of ``docs/CONVENTIONS.md``.

Legend: B batch, T frames, N cameras, H W padded image size, M boxes::

    img          float32 (B, T, N, 3, H, W)   each item padded to the batch's H, W
    lidar2img    float32 (B, T, N, 4, 4)      intrinsics float32 (B, T, N, 3, 3)
    cam2lidar    float32 (B, T, N, 4, 4)      frame_valid bool (B, T)
    img_shape    (H, W)                       bda float32 (B, 4, 4)
    flip         bool (B,)                    image content mirrored (see below)
    gt_boxes     list of B float32 (M_b, 9)   gt_labels list of B int64 (M_b,)
    mono         list of B dicts              key -> list of N per-camera tensors
    meta         list of B SampleMeta

Items of different image sizes (random resize scales) are padded with zeros at the bottom and
right up to the largest size, rounded up to ``size_divisor``. A flipped item (``flip``; its
``lidar2img`` describes the unflipped image, official BEVFormer v2 semantics) is padded on the
left instead, so that mirroring the whole padded tensor back leaves the content at the top-left
where ``lidar2img`` expects it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["collate"]

_STACKED = ("lidar2img", "intrinsics", "cam2lidar", "frame_valid", "bda")
_LISTED = ("gt_boxes", "gt_labels", "mono", "meta")


def _pad(img: torch.Tensor, hw: tuple[int, int], flip: bool) -> torch.Tensor:
    """``(..., h, w)`` -> ``(..., H, W)``: rows at the bottom, columns right (left if flipped)."""
    extra_h = hw[0] - img.shape[-2]
    extra_w = hw[1] - img.shape[-1]
    if extra_h == 0 and extra_w == 0:
        return img
    left, right = (extra_w, 0) if flip else (0, extra_w)
    return F.pad(img, (left, right, 0, extra_h))


def collate(samples: Sequence[dict[str, Any]], size_divisor: int = 32) -> dict[str, Any]:
    """Stack ``NuScenesTemporalDataset`` items into one batch (B >= 1)."""
    if len(samples) == 0:
        raise ValueError("collate needs at least one sample, got an empty list")
    t_n = {tuple(s["img"].shape[:2]) for s in samples}
    if len(t_n) != 1:
        raise ValueError(
            f"all samples of a batch need the same (frames, cameras); got {sorted(t_n)}. "
            "Use one frames setting and one camera list for the dataset."
        )
    d = int(size_divisor)
    h = max(s["img"].shape[-2] for s in samples)
    w = max(s["img"].shape[-1] for s in samples)
    hw = (-(-h // d) * d, -(-w // d) * d)
    batch: dict[str, Any] = {
        "img": torch.stack([_pad(s["img"], hw, bool(s.get("flip", False))) for s in samples]),
        "img_shape": hw,
        "flip": torch.tensor([bool(s.get("flip", False)) for s in samples], dtype=torch.bool),
    }
    for key in _STACKED:
        batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    for key in _LISTED:
        batch[key] = [s[key] for s in samples]
    return batch
