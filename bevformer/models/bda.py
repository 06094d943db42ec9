"""BEV-feature resampling for the BEV data augmentation (BDA) of BEVFormer v2.

The dataset rotates, scales and flips only the ground truth (official
``GlobalRotScaleTransImage(only_gt=True)``); the images and cameras are untouched. To keep the
features consistent with the augmented GT, the encoder output (and every history BEV) is
resampled so that the feature of a world point ``p`` moves to ``bda @ p``, as
``PerceptionTransformerBEVEncoder.forward`` in BEVFormer ``modules/transformerV2.py`` does
with ``grid_sample(bev, bda_inv[:2, :2] @ grid, align_corners=False)``.

``bda`` here is the matrix applied to the GT (``docs/CONVENTIONS.md``, batch key ``"bda"``),
so the output cell at lidar point ``q`` reads the input at ``inv(bda) @ q``. The grid is built
in metres from ``pc_range`` (BEV column = lidar x, row = lidar y; pixel centres), which equals
the official normalised-grid form for a square, centred range and stays right otherwise.

Shapes (B batch, C channels, H W BEV rows and columns)::

    bev  [B, C, H, W]     bda [B, 4, 4]     -> [B, C, H, W]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bev_grid_xy", "resample_bev"]


def bev_grid_xy(
    bev_h: int, bev_w: int, pc_range: Sequence[float], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Lidar (x, y) in metres of the BEV cell centres -> ``[H, W, 2]`` (row = y, column = x)."""
    x0, y0, _, x1, y1, _ = (float(v) for v in pc_range)
    xs = x0 + (torch.arange(bev_w, dtype=dtype, device=device) + 0.5) * (x1 - x0) / bev_w
    ys = y0 + (torch.arange(bev_h, dtype=dtype, device=device) + 0.5) * (y1 - y0) / bev_h
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def resample_bev(bev: Tensor, bda: Tensor, pc_range: Sequence[float]) -> Tensor:
    """Moves the feature at lidar point ``p`` to ``bda @ p`` (bilinear, zeros outside)."""
    B, _, H, W = bev.shape
    if bda.shape != (B, 4, 4):
        raise ValueError(f"bda must be [B, 4, 4] with B={B}, got {tuple(bda.shape)}")
    eye = torch.eye(4, dtype=bda.dtype, device=bda.device)
    if bool((bda == eye).all()):
        return bev
    x0, y0, _, x1, y1, _ = (float(v) for v in pc_range)
    target = bev_grid_xy(H, W, pc_range, bev.dtype, bev.device)  # [H, W, 2] metres
    lin = bda[:, :2, :2].to(bev.dtype)  # [B, 2, 2]
    shift = bda[:, :2, 3].to(bev.dtype)  # [B, 2]
    # source = inv(A) (target - t):  [B, H, W, 2]
    centred = target[None] - shift[:, None, None]
    source = torch.einsum("bij,bhwj->bhwi", torch.linalg.inv(lin), centred)
    lo = source.new_tensor([x0, y0])
    size = source.new_tensor([x1 - x0, y1 - y0])
    grid = (source - lo) / size * 2.0 - 1.0
    return F.grid_sample(bev, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
