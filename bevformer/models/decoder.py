"""Detection-transformer decoder of BEVFormer: object queries attending to the BEV.

BEVFormer (Li et al., ECCV 2022, arXiv:2203.17270) decodes boxes with the deformable-DETR
decoder (Zhu et al., ICLR 2021, arXiv:2010.04159) over the BEV feature map (official
``bevformer/modules/decoder.py``: ``DetectionTransformerDecoder``,
``CustomMSDeformableAttention``; ``modules/group_attention.py``: ``GroupMultiheadAttention``).
Each layer is

    q = LN(q + SelfAttn(q + pos, q + pos, q))                 (8 heads, dropout 0.1)
    q = LN(q + DeformAttn(q + pos, BEV, ref[..., :2]))        (1 level, 8 heads, 4 points)
    q = LN(q + FFN(q))                                        (C -> 512 -> C, ReLU, dropout 0.1)

**Group-DETR** (Chen et al., ICCV 2023, arXiv:2207.13085): in training the head passes
G groups of queries and the self-attention runs within each group only (queries of different
groups never see each other); at test a single group.

**Iterative box refinement**: with ``reg_branches`` the reference point of every query is
updated after each layer from the layer's regression output, in inverse-sigmoid space:
``ref_xy <- sigmoid(reg[0:2] + logit(ref_xy))``, ``ref_z <- sigmoid(reg[4:5] + logit(ref_z))``,
detached (no gradient flows through the references of later layers).

Legend: B batch, Q queries (all groups), G groups, S BEV cells (bev_h * bev_w), L levels,
P points, h heads, C channels, D code entries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bevformer.models.blocks import FFN, DeformableAttention
from bevformer.models.coder import refine_reference

__all__ = [
    "BEVCrossAttention",
    "DecoderLayer",
    "DetectionTransformerDecoder",
    "GroupSelfAttention",
]


class GroupSelfAttention(nn.Module):
    """Multi-head self-attention of the queries, optionally within G independent groups.

    Queries and keys carry the positional embedding, values do not (mmcv transformer layer).
    Dropout ``dropout`` on the attention weights, as the official
    ``GroupMultiheadAttention(dropout=0.1)``; the output dropout and the residual are the
    layer's.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)

    def forward(self, query: Tensor, query_pos: Tensor, num_groups: int = 1) -> Tensor:
        """``query``, ``query_pos`` [B, Q, C] -> [B, Q, C] (no residual)."""
        B, Q, C = query.shape
        if Q % num_groups != 0:
            raise ValueError(
                f"{Q} queries cannot be split into {num_groups} equal groups; the head must pass "
                "num_query * group_detr queries in training"
            )
        # [B, G*Qg, C] -> [B*G, Qg, C]: groups are contiguous blocks of queries
        qk = (query + query_pos).reshape(B * num_groups, Q // num_groups, C)
        v = query.reshape(B * num_groups, Q // num_groups, C)
        return self.attn(qk, qk, v, need_weights=False)[0].reshape(B, Q, C)


class BEVCrossAttention(DeformableAttention):
    """Deformable attention from each query to the BEV around its reference point.

    Official ``CustomMSDeformableAttention`` (one BEV level) on the shared
    :class:`~bevformer.models.blocks.DeformableAttention` core: offsets and softmax weights of
    h heads x L levels x P points are predicted from ``query + pos``; sampling locations are
    ``ref + offset / (w_l, h_l)`` in [0, 1] BEV coordinates (x along the columns = lidar x,
    y along the rows = lidar y).
    """

    def __init__(
        self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 1, num_points: int = 4
    ) -> None:
        super().__init__(embed_dims, num_heads, num_levels, num_points)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        value: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """``query``, ``query_pos`` [B, Q, C]; ``value`` [B, S, C]; ``reference_points``
        [B, Q, 2] (x, y in [0, 1]); ``spatial_shapes`` [L, 2] (h, w) -> [B, Q, C] (no
        residual)."""
        offsets, weights = self.offsets_and_weights(query + query_pos, spatial_shapes)
        # one slot: [B, Q, h, 1, L, P, .] -> [B, Q, h, L, P, .]
        locations = reference_points[:, :, None, None, None, :] + offsets[:, :, :, 0]
        out = self.sample(
            self.project_value(value),
            spatial_shapes,
            level_start_index,
            locations,
            weights[:, :, :, 0],
        )
        return self.output_proj(out)


class DecoderLayer(nn.Module):
    """One decoder layer (module docstring)::

    q = LN(q + Dropout(SelfAttn(q + pos, q + pos, q)))
    q = LN(q + Dropout(DeformAttn(q + pos, BEV, ref)))
    q = LN(q + FFN(q))
    """

    def __init__(
        self, embed_dims: int, num_heads: int, num_points: int, ffn_dims: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = GroupSelfAttention(embed_dims, num_heads, dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.cross_attn = BEVCrossAttention(embed_dims, num_heads, 1, num_points)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, ffn_dims, dropout)
        self.norm3 = nn.LayerNorm(embed_dims)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        bev: Tensor,
        reference_xy: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        num_groups: int = 1,
    ) -> Tensor:
        """[B, Q, C] queries -> [B, Q, C]."""
        query = self.norm1(query + self.dropout(self.self_attn(query, query_pos, num_groups)))
        attn = self.cross_attn(
            query, query_pos, bev, reference_xy, spatial_shapes, level_start_index
        )
        query = self.norm2(query + self.dropout(attn))
        return self.norm3(query + self.ffn(query))


class DetectionTransformerDecoder(nn.Module):
    """A stack of :class:`DecoderLayer` returning every layer's output (module docstring)."""

    def __init__(
        self,
        num_layers: int = 6,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dims: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(embed_dims, num_heads, num_points, ffn_dims, dropout)
            for _ in range(num_layers)
        )
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform matrices, then the deformable-attention init (official transformer)."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for layer in self.layers:
            layer.cross_attn.init_weights()

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        bev: Tensor,
        reference_points: Tensor,
        bev_shape: tuple[int, int],
        reg_branches: nn.ModuleList | None = None,
        num_groups: int = 1,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Runs all layers.

        ``query``, ``query_pos`` [B, Q, C]; ``bev`` [B, S, C] row-major over ``bev_shape``
        (h, w); ``reference_points`` [B, Q, 3] in [0, 1] (x, y, z of ``pc_range``).
        Returns ``states`` [Ldec, B, Q, C], ``references`` [Ldec, B, Q, 3] (the reference each
        layer used; layer 0 gets ``reference_points`` itself, with its gradient) and, with
        ``reg_branches``, their outputs ``deltas`` [Ldec, B, Q, D] (else None).
        """
        spatial_shapes = torch.tensor([bev_shape], dtype=torch.long, device=bev.device)
        level_start_index = torch.zeros(1, dtype=torch.long, device=bev.device)
        states, references, deltas = [], [], []
        reference = reference_points
        for lid, layer in enumerate(self.layers):
            query = layer(
                query,
                query_pos,
                bev,
                reference[..., :2],
                spatial_shapes,
                level_start_index,
                num_groups,
            )
            states.append(query)
            references.append(reference)
            if reg_branches is not None:
                delta = reg_branches[lid](query)  # [B, Q, D]
                deltas.append(delta)
                reference = refine_reference(delta, reference).detach()
        return (
            torch.stack(states),
            torch.stack(references),
            torch.stack(deltas) if deltas else None,
        )
