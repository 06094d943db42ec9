"""GridMask image augmentation (Chen et al., "GridMask Data Augmentation", arXiv:2001.04086).

BEVFormer applies it to the current frame's camera images in training with
``GridMask(use_h=True, use_w=True, rotate=1, offset=False, ratio=0.5, mode=1, prob=0.7)``
(BEVFormer ``projects/mmdet3d_plugin/models/utils/grid_mask.py``): with probability ``prob``
one mask is drawn for the whole batch. Stripes of width ``l = round(d * ratio)`` repeat every
``d`` pixels (``d`` uniform in [2, h)) along both axes on a 1.5x oversized canvas; the centre
crop is taken, and with ``mode=1`` the mask is inverted, so the image is kept only on the
stripes. ``rotate=1`` means no rotation, which is the only setting implemented.

Shapes: input and output ``[M, C, H, W]`` (M images); the mask is ``[H, W]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GridMask"]


class GridMask(nn.Module):
    """Multiplies the images by a random grid mask in training (identity in eval)."""

    def __init__(
        self,
        use_h: bool = True,
        use_w: bool = True,
        ratio: float = 0.5,
        mode: int = 1,
        prob: float = 0.7,
    ) -> None:
        super().__init__()
        if mode not in (0, 1):
            raise ValueError(f"GridMask mode must be 0 or 1, got {mode}")
        self.use_h = use_h
        self.use_w = use_w
        self.ratio = ratio
        self.mode = mode
        self.prob = prob

    def make_mask(
        self, height: int, width: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draws one ``[height, width]`` mask of zeros and ones (float32, CPU)."""
        hh, ww = int(1.5 * height), int(1.5 * width)
        d = int(torch.randint(2, max(height, 3), (1,), generator=generator))
        stripe = min(max(int(d * self.ratio + 0.5), 1), d - 1)
        mask = torch.ones(hh, ww)
        st_h = int(torch.randint(d, (1,), generator=generator))
        st_w = int(torch.randint(d, (1,), generator=generator))
        if self.use_h:
            for i in range(hh // d):
                s = d * i + st_h
                mask[s : min(s + stripe, hh), :] = 0
        if self.use_w:
            for i in range(ww // d):
                s = d * i + st_w
                mask[:, s : min(s + stripe, ww)] = 0
        top, left = (hh - height) // 2, (ww - width) // 2
        mask = mask[top : top + height, left : left + width]
        return 1.0 - mask if self.mode == 1 else mask

    def forward(self, images: Tensor) -> Tensor:
        if not self.training or float(torch.rand(1)) > self.prob:
            return images
        mask = self.make_mask(images.shape[-2], images.shape[-1])
        return images * mask.to(device=images.device, dtype=images.dtype)
