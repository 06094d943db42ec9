"""BEV-feature resampling for the BEV data augmentation (BDA) of BEVFormer v2.

The dataset rotates, scales and flips only the ground truth (official
``GlobalRotScaleTransImage(only_gt=True)``); the images and cameras are untouched. To keep the
features consistent with the augmented GT, the encoder output (and every history BEV) is
resampled so that the feature of a world point ``p`` moves to ``bda @ p``, as
``PerceptionTransformerBEVEncoder.forward`` in BEVFormer ``modules/transformerV2.py`` does
with ``grid_sample(bev, bda_inv[:2, :2] @ grid, align_corners=False)``.

``bda`` here is the matrix applied to the GT (``docs/CONVENTIONS.md``, batch key ``"bda"``),
so the output cell at lidar point ``q`` reads the input at ``inv(bda) @ q``. The sampling grid is
built in metres from the :class:`~bevformer.structures.grid.BEVGrid` (BEV column = lidar x, row =
lidar y; cell centres), which equals the official normalised-grid form for a square, centred
range and stays right otherwise.

Shapes (B batch, C channels, H W BEV rows and columns)::

    bev  [B, C, H, W]     bda [B, 4, 4]     -> [B, C, H, W]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bevformer.models.precision import force_fp32
from bevformer.structures.grid import BEVGrid

__all__ = ["resample_bev"]


@force_fp32
def resample_bev(bev: Tensor, bda: Tensor, grid: BEVGrid) -> Tensor:
    """Moves the feature at lidar point ``p`` to ``bda @ p`` (bilinear, zeros outside).

    ``bev [B, C, H, W]`` on ``grid``; ``bda [B, 4, 4]`` -> ``[B, C, H, W]``.
    """
    B = bev.shape[0]
    if tuple(bev.shape[-2:]) != grid.shape:
        raise ValueError(f"bev must be [B, C, {grid.bev_h}, {grid.bev_w}], got {tuple(bev.shape)}")
    if bda.shape != (B, 4, 4):
        raise ValueError(f"bda must be [B, 4, 4] with B={B}, got {tuple(bda.shape)}")
    exporting = torch.onnx.is_in_onnx_export()
    eye = torch.eye(4, dtype=bda.dtype, device=bda.device)
    # an exported graph resamples whatever the matrix is (the shortcut depends on the data)
    if not exporting and bool((bda == eye).all()):
        return bev
    target = grid.cell_centres(bev.dtype, bev.device)  # [H, W, 2] metres
    lin = bda[:, :2, :2].to(bev.dtype)  # [B, 2, 2]
    shift = bda[:, :2, 3].to(bev.dtype)  # [B, 2]
    # source = inv(A) (target - t):  [B, H, W, 2]; ONNX has no matrix inverse: the 2x2 formula
    inverse = _inverse_2x2(lin) if exporting else torch.linalg.inv(lin)
    centred = target[None] - shift[:, None, None]
    source = torch.einsum("bij,bhwj->bhwi", inverse, centred)
    # metres -> grid_sample's [-1, 1] (align_corners=False: -1 and 1 are the range's edges)
    where = grid.normalize(source) * 2.0 - 1.0
    return F.grid_sample(bev, where, mode="bilinear", padding_mode="zeros", align_corners=False)


def _inverse_2x2(m: Tensor) -> Tensor:
    """``inv(m)`` of ``m [B, 2, 2]`` by the adjugate over the determinant (standard operators
    only, for the ONNX export; ``torch.linalg.inv`` everywhere else)."""
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    adjugate = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return adjugate / (a * d - b * c)[:, None, None]
