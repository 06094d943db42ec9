"""Temporal BEV fusion of BEVFormer v2 and the state of v1-style streaming inference.

BEVFormer v2 (Yang et al., CVPR 2023, arXiv:2211.10439, section 3.4): the BEVs of the past
frames are computed on the *current* frame's grid (the past cameras' ``lidar2img`` are
re-expressed in the current lidar frame by the dataset), so they are aligned without any
warping, then concatenated along channels and fused by :class:`ResNetFusion` (official
``ResNetFusion`` in BEVFormer ``modules/transformerV2.py``: 3 ResNet BasicBlocks, the first
mapping T*C to the inter channels with a conv3x3+BN shortcut when the width changes, then a
per-cell Linear(inter, C) + LayerNorm). A missing past frame takes the next-newer BEV,
detached (:func:`fill_missing_frames`, as ``PerceptionTransformerV2.forward``).

BEVFormer v1 (Li et al., ECCV 2022, section 3.4) instead keeps the previous frame's BEV and
attends to it with temporal self-attention; :func:`align_prev_bev` moves that BEV into the
current lidar frame using the two frames' poses (the official code uses the can-bus rotation
and a shift of the reference points; here the same rigid motion is applied in one resampling).
The state travels in a :class:`TemporalState` that the caller passes in and gets back (or,
in the exported ONNX model, as the tensors of a :class:`PreviousBEV`).

Legend: B batch, T frames, Q = H*W BEV cells, C channels.

    ResNetFusion:  T x [B, C, H, W] -> [B, Q, C_out]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bevformer.models.bda import resample_bev
from bevformer.registry import MODELS
from bevformer.structures.grid import BEVGrid

__all__ = [
    "BasicBlock",
    "PreviousBEV",
    "ResNetFusion",
    "TemporalState",
    "align_prev_bev",
    "fill_missing_frames",
]


def _norm(kind: str, channels: int) -> nn.Module:
    """``"BN"``: ``nn.BatchNorm2d``, which the training launcher converts to
    ``nn.SyncBatchNorm`` in multi-GPU runs (config ``sync_bn``, :mod:`bevformer.engine.sync_bn`;
    the configs use this). ``"SyncBN"`` builds ``nn.SyncBatchNorm`` directly (official
    ``norm_cfg=dict(type='SyncBN')``); on CPU the launcher turns it back into BatchNorm, since
    torch's SyncBatchNorm only trains on GPU tensors once a process group exists."""
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "SyncBN":
        return nn.SyncBatchNorm(channels)
    raise ValueError(f"norm must be 'BN' or 'SyncBN', got {kind!r}")


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut, ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str = "BN", downsample: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                _norm(norm, out_channels),
            )
            if downsample
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


@MODELS.register_module()
class ResNetFusion(nn.Module):
    """Fuses T aligned BEVs: concat -> BasicBlocks -> Linear + LayerNorm per cell."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        inter_channels: int | None = None,
        num_layers: int = 3,
        norm: str = "BN",
    ) -> None:
        super().__init__()
        inter = in_channels if inter_channels is None else inter_channels
        blocks = [BasicBlock(in_channels, inter, norm, downsample=inter != in_channels)]
        blocks += [BasicBlock(inter, inter, norm) for _ in range(num_layers - 1)]
        self.in_channels = in_channels
        self.layers = nn.Sequential(*blocks)
        self.proj = nn.Linear(inter, out_channels)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, bevs: Sequence[Tensor]) -> Tensor:
        """``T x [B, C, H, W]`` (oldest first) -> ``[B, H*W, C_out]``."""
        x = torch.cat(list(bevs), dim=1)  # [B, T*C, H, W]
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNetFusion expects {self.in_channels} input channels (frames x embed_dims), "
                f"got {x.shape[1]}; set in_channels to len(frames) * embed_dims"
            )
        x = self.layers(x)
        x = x.flatten(2).transpose(1, 2)  # [B, C', H, W] -> [B, H*W, C']
        return self.norm(self.proj(x))


def fill_missing_frames(
    bevs: Sequence[Tensor | None], frame_valid: Tensor, current: int
) -> list[Tensor]:
    """Replaces each sample's missing slots by the next-newer BEV, detached.

    ``bevs``: T x ``[B, ...]`` in slot order, ``None`` for a slot that no sample of the batch
    has (it was not encoded); ``frame_valid``: ``[B, T]`` bool; ``current``: the current
    frame's slot. Slots before ``current`` take their right neighbour's BEV, slots after it
    their left neighbour's (the official ``PerceptionTransformerV2`` order).
    """
    out = list(bevs)
    if out[current] is None:
        raise ValueError("the current frame's BEV is missing; only past/future slots may be None")
    valid = frame_valid.to(torch.bool)

    def pick(t: int, src: int) -> Tensor:
        if out[t] is None:
            return out[src].detach()
        keep = valid[:, t].view(-1, *([1] * (out[t].dim() - 1)))
        return torch.where(keep, out[t], out[src].detach())

    for t in range(current - 1, -1, -1):
        out[t] = pick(t, t + 1)
    for t in range(current + 1, len(out)):
        out[t] = pick(t, t - 1)
    return out


def align_prev_bev(prev_bev: Tensor, prev2cur: Tensor, grid: BEVGrid) -> Tensor:
    """Re-grids ``prev_bev [B, Q, C]`` (previous lidar frame) onto the current lidar frame.

    ``prev2cur [B, 4, 4]`` maps previous-lidar points to current-lidar points; the feature of a
    static point lands in the cell that contains the point now. Cells that were outside the
    previous grid read zeros.
    """
    moved = resample_bev(grid.tokens_to_map(prev_bev, "prev_bev"), prev2cur, grid)
    return grid.map_to_tokens(moved)


@dataclass(frozen=True)
class PreviousBEV:
    """The previous BEV with the ego motion to the current frame, as tensors: what the exported
    ONNX model takes instead of a :class:`TemporalState` (``bevformer.deploy.onnx_export``).

    ``bev [B, Q, C]`` the previous frame's encoder output (its lidar frame); ``prev2cur [B, 4,
    4]`` previous-lidar -> current-lidar points (``inv(lidar2global_cur) @
    lidar2global_prev``; identity where there is no previous frame); ``valid [B]`` bool, which
    samples have a previous frame of their scene.
    """

    bev: Tensor
    prev2cur: Tensor
    valid: Tensor

    def aligned_to(
        self, lidar2global: Tensor | None, scene_tokens: Sequence[str], grid: BEVGrid
    ) -> tuple[Tensor, Tensor]:
        """Previous BEV on the current ``grid`` ``[B, Q, C]`` and ``valid [B]``, as
        :meth:`TemporalState.aligned_to` (whose pose and scene arguments are not needed: the
        motion and the validity are given)."""
        return align_prev_bev(self.bev, self.prev2cur.to(self.bev), grid), self.valid.bool()


@dataclass(frozen=True)
class TemporalState:
    """What streaming inference carries from one frame to the next (one entry per sample).

    ``bev``: ``[B, Q, C]`` encoder output in that frame's lidar frame (before BEV
    augmentation); ``lidar2global``: ``[B, 4, 4]`` float64 pose of that lidar frame;
    ``scene_tokens``: scene of each sample (a new scene starts without history).
    """

    bev: Tensor
    lidar2global: Tensor
    scene_tokens: tuple[str, ...]

    def aligned_to(
        self,
        lidar2global: Tensor,
        scene_tokens: Sequence[str],
        grid: BEVGrid,
    ) -> tuple[Tensor, Tensor]:
        """Previous BEV on the current grid ``[B, Q, C]`` and which samples have one ``[B]``."""
        B = lidar2global.shape[0]
        valid = torch.tensor(
            [
                len(self.scene_tokens) == B and self.scene_tokens[b] == scene_tokens[b]
                for b in range(B)
            ],
            device=self.bev.device,
        )
        if len(self.scene_tokens) != B:
            return self.bev.new_zeros(B, *self.bev.shape[1:]), valid
        cur = lidar2global.to(torch.float64)
        prev2cur = torch.linalg.inv(cur) @ self.lidar2global.to(cur)
        prev2cur = torch.where(valid[:, None, None].to(cur.device), prev2cur, torch.eye(4).to(cur))
        aligned = align_prev_bev(self.bev, prev2cur.to(self.bev.device), grid)
        return aligned, valid


# ---------------------------------------------------------------- official BEVFormer v2 keys
# Where :class:`ResNetFusion`'s tensors sit in an official BEVFormer v2 checkpoint
# (``modules/transformerV2.py``: ``PerceptionTransformerV2.fusion``; its ``layers`` are mmdet
# ``BasicBlock``s named as here, ``layer_norm`` = Sequential(Linear, LayerNorm)). Rules are
# (regex matched at the start of the official key, replacement of the matched part).
_OFFICIAL_FUSION = r"^pts_bbox_head\.transformer\.fusion\."
OFFICIAL_BEVFORMERV2_KEYS = (
    (_OFFICIAL_FUSION + r"layers\.", "layers."),
    (_OFFICIAL_FUSION + r"layer_norm\.0\.", "proj."),
    (_OFFICIAL_FUSION + r"layer_norm\.1\.", "norm."),
)
