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
  queries that camera sees, averages over the cameras that see each query and projects. The
  visibility masks are per sample, so any batch size is exact.

The first two are :class:`~bevformer.models.blocks.DeformableAttention` (projections, official
initialisation, offset normalisation, sampling) with their own reference points and values.
None of them adds the residual or applies dropout: ``encoder.BEVEncoderLayer`` does.

Legend: B batch, N cameras, Q BEV queries (H*W), D z-anchors per pillar, S flattened image
tokens over all levels, L levels, P points, h heads, C channels, M = B*N, K queries gathered per
camera.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bevformer.models.blocks import DeformableAttention, xavier_linear

__all__ = ["BEVSelfAttention", "MSDeformableAttention3D", "SpatialCrossAttention"]


class BEVSelfAttention(DeformableAttention):
    """Temporal / deformable self-attention on the BEV (one level: the BEV grid itself)."""

    num_bev_queue = 2

    def __init__(
        self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 1, num_points: int = 4
    ) -> None:
        nq = self.num_bev_queue
        super().__init__(
            embed_dims, num_heads, num_levels, num_points, query_dims=embed_dims * nq, num_slots=nq
        )

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
        -> ``[B, Q, C]`` (no residual).
        """
        B, Q, C = query.shape
        nq = self.num_bev_queue
        if value_pair is None:
            value_pair = torch.stack([query, query], dim=1)
        # offsets and weights from (first copy of the pair, query + pos), for both copies
        offsets, weights = self.offsets_and_weights(
            torch.cat([value_pair[:, 0], query + query_pos], dim=-1), spatial_shapes
        )  # [B, Q, h, 2, L, P, 2], [B, Q, h, 2, L, P]
        # copies into the batch: [B, Q, h, 2, ...] -> [B, 2, Q, h, ...] -> [B*2, Q, h, ...]
        offsets = offsets.movedim(3, 1).flatten(0, 1)
        weights = weights.movedim(3, 1).flatten(0, 1)
        value = self.project_value(value_pair.reshape(B * nq, Q, C))  # [B*2, Q, h, C/h]
        ref = ref_2d.repeat_interleave(nq, dim=0)  # [B*2, Q, L, 2]
        locations = ref[:, :, None, :, None, :] + offsets  # [B*2, Q, h, L, P, 2]
        level_start = spatial_shapes.new_zeros(1)
        out = self.sample(value, spatial_shapes, level_start, locations, weights)
        out = out.view(B, nq, Q, C).mean(dim=1)  # average the two copies
        return self.output_proj(out)


class MSDeformableAttention3D(DeformableAttention):
    """Deformable attention of pillar queries into one camera's multi-level features."""

    def __init__(
        self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 8
    ) -> None:
        super().__init__(embed_dims, num_heads, num_levels, num_points, output_proj=False)

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
        M, K, _ = query.shape
        h, L, P = self.num_heads, self.num_levels, self.num_points
        D = reference_points.shape[2]
        if P % D != 0:
            raise ValueError(f"num_points ({P}) must be a multiple of the z-anchors ({D})")
        offsets, weights = self.offsets_and_weights(query, spatial_shapes)
        # one slot; points grouped as (P/D, D): [M, K, h, L, P/D, D, 2] + ref [M, K, 1, 1, 1, D, 2]
        offsets = offsets.view(M, K, h, L, P // D, D, 2)
        locations = reference_points[:, :, None, None, None, :, :] + offsets
        locations = locations.reshape(M, K, h, L, P, 2)
        value = self.project_value(value)
        return self.sample(value, spatial_shapes, level_start_index, locations, weights[:, :, :, 0])


class SpatialCrossAttention(nn.Module):
    """BEV queries attend to the image features of the cameras they project into."""

    def __init__(
        self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 8
    ) -> None:
        super().__init__()
        self.deformable_attention = MSDeformableAttention3D(
            embed_dims, num_heads, num_levels, num_points
        )
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        xavier_linear(self.output_proj)

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
        bev_mask ``[B, N, Q, D]`` (bool) -> ``[B, Q, C]`` (no residual).

        Per camera, the queries that any sample of the batch sees are gathered (K of them);
        each sample's result is then kept only where that sample itself sees the query. During
        ONNX export every query goes through every camera and the unseen are masked (static
        shapes, the same values).
        """
        B, Q, C = query.shape
        N, S = value.shape[1], value.shape[2]
        D = reference_points_cam.shape[3]
        seen = bev_mask.any(dim=-1)  # [B, N, Q]
        count = seen.sum(dim=1).clamp(min=1).to(query.dtype)  # [B, Q] cameras per query
        if torch.onnx.is_in_onnx_export():
            # static shapes for export: every query through every camera, the unseen masked
            # out (the same values as the gathered form below, N*Q instead of N*K queries)
            out = self.deformable_attention(
                query.unsqueeze(1).expand(B, N, Q, C).reshape(B * N, Q, C),  # every camera
                value.reshape(B * N, S, C),  # [B, N, S, C] -> [B*N, S, C]
                reference_points_cam.reshape(B * N, Q, D, 2),  # [B, N, Q, D, 2] -> [B*N, ...]
                spatial_shapes,
                level_start_index,
            ).view(B, N, Q, C)  # [B*N, Q, C] -> [B, N, Q, C]
            slots = (out * seen.unsqueeze(-1).to(out.dtype)).sum(dim=1)  # [B, Q, C]
            return self.output_proj(slots / count[..., None])
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
        slots = slots / count[..., None]
        return self.output_proj(slots)
