"""Attention blocks of the BEVFormer encoder (Li et al., ECCV 2022, arXiv:2203.17270; v2: Yang
et al., CVPR 2023, arXiv:2211.10439). All deformable sampling goes through ``ops.ms_deform_attn``.

- :class:`BEVSelfAttention` -- BEVFormer's temporal self-attention (official
  ``modules/temporal_self_attention.py``). The value is the pair ``[prev_bev, current]``; offsets
  and weights are predicted from ``cat(value_0, query + pos)`` for each copy and the two results
  are averaged. With no previous BEV (BEVFormer v2) the pair is ``[query, query]``: deformable
  self-attention on the current BEV. The previous BEV, when given, must already be aligned to the
  current grid (see ``temporal.align_prev_bev``), so both copies share one reference grid.
- :class:`MSDeformableAttention3D` -- deformable attention from BEV pillars into one camera's
  multi-level features; each query has D reference points (its z-anchors projected into the
  image) and ``num_points / D`` sampling points around each (official
  ``modules/spatial_cross_attention.py``).
- :class:`SpatialCrossAttention` -- runs :class:`MSDeformableAttention3D` per camera on the BEV
  queries that camera sees, averages over the cameras that see each query, projects, adds the
  residual. The visibility masks are per sample, so any batch size is exact.

Legend: B batch, N cameras, Q BEV queries (H*W), D z-anchors per pillar, S flattened image
tokens over all levels, L levels, P points, h heads, C channels, M = B*N, K queries gathered per
camera.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import ops

__all__ = ["BEVSelfAttention", "MSDeformableAttention3D", "SpatialCrossAttention"]


def _init_sampling_offsets(linear: nn.Linear, num_heads: int, num_slots: int, num_points: int):
    """Deformable-DETR init: zero weights; head k points along angle 2*pi*k/h, point p at p+1."""
    nn.init.zeros_(linear.weight)
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = grid / grid.abs().max(-1, keepdim=True)[0]
    grid = grid.view(num_heads, 1, 1, 2).repeat(1, num_slots, num_points, 1)
    grid = grid * torch.arange(1, num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
    with torch.no_grad():
        linear.bias.copy_(grid.flatten())


def _xavier(linear: nn.Linear) -> None:
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)


def _check_heads(embed_dims: int, num_heads: int) -> None:
    if embed_dims % num_heads != 0:
        raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")


class BEVSelfAttention(nn.Module):
    """Temporal / deformable self-attention on the BEV (one level: the BEV grid itself)."""

    num_bev_queue = 2

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 1,
        num_points: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _check_heads(embed_dims, num_heads)
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        nq = self.num_bev_queue
        num_samples = nq * num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dims * nq, num_samples * 2)
        self.attention_weights = nn.Linear(embed_dims * nq, num_samples)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        _init_sampling_offsets(self.sampling_offsets, num_heads, num_levels * nq, num_points)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        _xavier(self.value_proj)
        _xavier(self.output_proj)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        ref_2d: Tensor,
        spatial_shapes: Tensor,
        value_pair: Tensor | None = None,
    ) -> Tensor:
        """query, query_pos ``[B, Q, C]``; ref_2d ``[B, Q, 1, 2]`` (x, y in [0, 1]);
        spatial_shapes ``[[H, W]]``; value_pair ``[B, 2, Q, C]`` = (previous BEV aligned to this
        grid, initial BEV queries) for v1 temporal attention, None for ``(query, query)``
        -> ``[B, Q, C]``.
        """
        B, Q, C = query.shape
        nq, h, L, P = self.num_bev_queue, self.num_heads, self.num_levels, self.num_points
        identity = query
        if value_pair is None:
            value_pair = torch.stack([query, query], dim=1)
        first = value_pair[:, 0]
        # the value pair, per sample: [B, 2, Q, C] -> [B*2, Q, C]
        value = value_pair.reshape(B * nq, Q, C)
        query = torch.cat([first, query + query_pos], dim=-1)  # [B, Q, 2C]
        value = self.value_proj(value).view(B * nq, Q, h, C // h)

        # [B, Q, h, 2, L, P, 2] -> [B, 2, Q, h, L, P, 2] -> [B*2, Q, h, L, P, 2]
        offsets = self.sampling_offsets(query).view(B, Q, h, nq, L, P, 2)
        offsets = offsets.permute(0, 3, 1, 2, 4, 5, 6).reshape(B * nq, Q, h, L, P, 2)
        # softmax over the L*P points of each (head, copy): [B*2, Q, h, L, P]
        weights = self.attention_weights(query).view(B, Q, h, nq, L * P).softmax(-1)
        weights = weights.view(B, Q, h, nq, L, P).permute(0, 3, 1, 2, 4, 5)
        weights = weights.reshape(B * nq, Q, h, L, P)

        ref = ref_2d.repeat_interleave(nq, dim=0)  # [B*2, Q, L, 2]
        normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(query)
        locations = ref[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        level_start = spatial_shapes.new_zeros(1)
        out = ops.ms_deform_attn(value, spatial_shapes, level_start, locations, weights)
        out = out.view(B, nq, Q, C).mean(dim=1)  # average the two copies
        return self.dropout(self.output_proj(out)) + identity


class MSDeformableAttention3D(nn.Module):
    """Deformable attention of pillar queries into one camera's multi-level features."""

    def __init__(
        self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 8
    ) -> None:
        super().__init__()
        _check_heads(embed_dims, num_heads)
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        _init_sampling_offsets(self.sampling_offsets, num_heads, num_levels, num_points)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        _xavier(self.value_proj)

    def forward(
        self,
        query: Tensor,
        value: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """query ``[M, K, C]``; value ``[M, S, C]``; reference_points ``[M, K, D, 2]`` in [0, 1]
        -> ``[M, K, C]``. Point p of a head samples around z-anchor ``p % D``."""
        M, K, C = query.shape
        S = value.shape[1]
        h, L, P = self.num_heads, self.num_levels, self.num_points
        D = reference_points.shape[2]
        if P % D != 0:
            raise ValueError(f"num_points ({P}) must be a multiple of the z-anchors ({D})")
        if spatial_shapes.shape[0] != L:
            raise ValueError(
                f"attention has num_levels={L} but the features have {spatial_shapes.shape[0]} "
                "levels; set num_levels in the encoder config to the number of FPN levels used"
            )
        value = self.value_proj(value).view(M, S, h, C // h)
        offsets = self.sampling_offsets(query).view(M, K, h, L, P, 2)
        weights = self.attention_weights(query).view(M, K, h, L * P).softmax(-1)
        weights = weights.view(M, K, h, L, P)
        normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(query)
        offsets = offsets / normalizer[None, None, None, :, None, :]
        # points grouped as (P/D, D): [M, K, h, L, P/D, D, 2] + ref [M, K, 1, 1, 1, D, 2]
        offsets = offsets.view(M, K, h, L, P // D, D, 2)
        locations = reference_points[:, :, None, None, None, :, :] + offsets
        locations = locations.view(M, K, h, L, P, 2)
        return ops.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)


class SpatialCrossAttention(nn.Module):
    """BEV queries attend to the image features of the cameras they project into."""

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.deformable_attention = MSDeformableAttention3D(
            embed_dims, num_heads, num_levels, num_points
        )
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        _xavier(self.output_proj)

    def forward(
        self,
        query: Tensor,
        value: Tensor,
        reference_points_cam: Tensor,
        bev_mask: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """query ``[B, Q, C]``; value ``[B, N, S, C]``; reference_points_cam ``[B, N, Q, D, 2]``;
        bev_mask ``[B, N, Q, D]`` (bool) -> ``[B, Q, C]``.

        Per camera, the queries that any sample of the batch sees are gathered (K of them);
        each sample's result is then kept only where that sample itself sees the query.
        """
        B, Q, C = query.shape
        N, S = value.shape[1], value.shape[2]
        D = reference_points_cam.shape[3]
        seen = bev_mask.any(dim=-1)  # [B, N, Q]
        indexes = [seen[:, i].any(dim=0).nonzero().squeeze(-1) for i in range(N)]
        K = max(int(idx.numel()) for idx in indexes)
        slots = torch.zeros_like(query)
        if K > 0:
            queries = query.new_zeros(B, N, K, C)
            refs = reference_points_cam.new_zeros(B, N, K, D, 2)
            for i, idx in enumerate(indexes):
                queries[:, i, : idx.numel()] = query[:, idx]
                refs[:, i, : idx.numel()] = reference_points_cam[:, i, idx]
            out = self.deformable_attention(
                queries.view(B * N, K, C),
                value.reshape(B * N, S, C),
                refs.view(B * N, K, D, 2),
                spatial_shapes,
                level_start_index,
            ).view(B, N, K, C)
            for i, idx in enumerate(indexes):
                keep = seen[:, i, idx].unsqueeze(-1).to(out.dtype)  # [B, k, 1]
                slots = slots.index_add(1, idx, out[:, i, : idx.numel()] * keep)
        count = seen.sum(dim=1).clamp(min=1).to(query.dtype)  # [B, Q] cameras per query
        slots = slots / count[..., None]
        return self.dropout(self.output_proj(slots)) + query
