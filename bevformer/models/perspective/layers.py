"""Building blocks of the perspective head (DD3D's FCOS2D / FCOS3D layers) and layout helpers.

Official: BEVFormer ``projects/mmdet3d_plugin/dd3d/layers/normalization.py`` (``Scale``,
``Offset``, ``ModuleListDial``) and ``dd3d/modeling/{fcos2d.py, fcos3d.py}`` (towers and
predictor initialisation).

- :class:`Scale` / :class:`Offset`: one learnable scalar multiplied / added (a 0-d parameter;
  DD3D's have shape [1]).
- :class:`Tower`: ``num_convs`` x (conv3x3 without bias, BatchNorm of the level, ReLU).
- :func:`predictor`: the conv3x3 of an output branch (Kaiming-uniform weight, zero bias).
- :func:`flatten_levels` / :func:`pick_class`: per-level maps to per-location rows and the
  labelled class's slice of the class-specific channels (``c * K + k`` is component c of
  class k).

Shapes: BN images, C channels, K classes, L levels of size H_l x W_l, P = sum_l H_l*W_l
locations of one image (level-major).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bevformer.models.perspective.coder import BOX3D_CHANNELS

__all__ = ["OUTPUT_KEYS", "Offset", "Scale", "Tower", "flatten_levels", "pick_class", "predictor"]

# Per-level maps of ``PerspectiveHead.forward`` (besides ``locations``).
OUTPUT_KEYS = ("cls_logits", "box2d", "centerness", "attr_logits", "speed", *BOX3D_CHANNELS)


class Scale(nn.Module):
    """Multiply by one learnable scalar."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Offset(nn.Module):
    """Add one learnable scalar."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class Tower(nn.Module):
    """``num_convs`` x (conv3x3 without bias, BatchNorm, ReLU), convs shared by the levels and
    one BatchNorm per level (DD3D ``ModuleListDial``; here the level is passed explicitly)."""

    def __init__(self, channels: int, num_convs: int, num_levels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(num_convs)
        )
        self.norms = nn.ModuleList(
            nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_levels))
            for _ in range(num_convs)
        )
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, level: int) -> Tensor:
        for conv, norms in zip(self.convs, self.norms):
            x = F.relu(norms[level](conv(x)))
        return x


def predictor(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """Output conv3x3 (BN, in_channels, H, W) -> (BN, out_channels, H, W); Kaiming-uniform
    weight (``a=1``) and zero bias as DD3D's predictors."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """Per-level maps (BN, C, H_l, W_l) -> (BN, P, C), levels concatenated."""
    # (BN, C, H, W) -> (BN, H, W, C) -> (BN, H*W, C)
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


def pick_class(flat: Tensor, labels: Tensor, channels: int) -> Tensor:
    """Class-specific outputs (P, channels*K) -> the labelled class's (P, channels)."""
    # (P, channels*K) -> (P, channels, K); channel c*K + k is component c of class k
    per_class = flat.reshape(flat.shape[0], channels, flat.shape[1] // channels)  # P may be 0
    index = labels.view(-1, 1, 1).expand(-1, channels, 1)  # (P,) -> (P, channels, 1)
    return per_class.gather(2, index).squeeze(2)
