"""Building blocks shared by the BEV encoder and the decoder: the deformable-attention core and
the feed-forward network.

**Deformable attention** (Zhu et al., "Deformable DETR", ICLR 2021, arXiv:2010.04159, eq. 2-3;
mmcv ``MultiScaleDeformableAttention``): from each query, a linear layer predicts 2D offsets of
P points per (head, slot, level) and another their weights, normalised by a softmax over the
L*P points of each (head, slot); the values (projected) are sampled bilinearly at reference +
offset / (w_l, h_l) and summed with those weights (``ops.ms_deform_attn``). The three
deformable attentions of BEVFormer differ only in how they form reference points and values:

- BEV self-attention (``attention.BEVSelfAttention``): 2 slots (previous BEV, current), one
  level (the BEV), queries of width 2C;
- spatial cross-attention (``attention.MSDeformableAttention3D``): one slot, the image levels,
  reference points = the pillar's z-anchors projected into one camera;
- decoder cross-attention (``decoder.BEVCrossAttention``): one slot, one level (the BEV),
  reference = the query's (x, y).

Initialisation (Deformable DETR / official ``init_weights`` of those three modules): offset
weights zero and biases placing head k's points along the angle 2*pi*k/h at distances 1..P
cells (direction scaled so its largest component is 1), attention weights zero (uniform
softmax), value and output projections Xavier-uniform with zero bias.

Residual connections, dropout and normalisation are not in these blocks: the layers
(``encoder.BEVEncoderLayer``, ``decoder.DecoderLayer``) apply them where they can be read.

Legend: M batch (of the attention: samples, or samples x cameras), K queries, S value tokens
over all levels, h heads, T slots, L levels, P points, C channels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

import ops

__all__ = ["FFN", "DeformableAttention", "evaluating", "xavier_linear"]


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode and without gradients inside the block; its training flag is
    restored afterwards (the official ``obtain_history_bev`` pattern for past frames)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def xavier_linear(linear: nn.Linear) -> None:
    """Xavier-uniform weight, zero bias (mmcv ``xavier_init(m, distribution="uniform")``)."""
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)


class DeformableAttention(nn.Module):
    """Projections, official initialisation, offset normalisation and sampling of deformable
    attention (module docstring).

    Parameters (official names): ``sampling_offsets`` Linear(query_dims, h*T*L*P*2),
    ``attention_weights`` Linear(query_dims, h*T*L*P), ``value_proj`` Linear(C, C) and, with
    ``output_proj=True``, ``output_proj`` Linear(C, C). ``num_slots`` T > 1 predicts T sets of
    points per head (BEVFormer's temporal self-attention: one per BEV of the pair). Raises
    ``ValueError`` when ``embed_dims`` is not divisible by ``num_heads``.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        *,
        query_dims: int | None = None,
        num_slots: int = 1,
        output_proj: bool = True,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(
                f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})"
            )
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.num_levels, self.num_points, self.num_slots = num_levels, num_points, num_slots
        samples = num_heads * num_slots * num_levels * num_points
        query_dims = embed_dims if query_dims is None else query_dims
        self.sampling_offsets = nn.Linear(query_dims, samples * 2)
        self.attention_weights = nn.Linear(query_dims, samples)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims) if output_proj else None
        self.init_weights()

    def init_weights(self) -> None:
        """The official initialisation (module docstring)."""
        h, P = self.num_heads, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(h, dtype=torch.float32) * (2.0 * math.pi / h)
        direction = torch.stack([thetas.cos(), thetas.sin()], -1)
        direction = direction / direction.abs().max(-1, keepdim=True)[0]  # [h, 2]
        # bias layout [h, T*L, P, 2]: point p of every (slot, level) at p + 1 along the head's ray
        bias = direction.view(h, 1, 1, 2).repeat(1, self.num_slots * self.num_levels, P, 1)
        bias = bias * torch.arange(1, P + 1, dtype=torch.float32).view(1, 1, P, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        xavier_linear(self.value_proj)
        if self.output_proj is not None:
            xavier_linear(self.output_proj)

    def project_value(self, value: Tensor) -> Tensor:
        """``value [M, S, C]`` -> projected, split into heads ``[M, S, h, C/h]``."""
        M, S, C = value.shape
        return self.value_proj(value).view(M, S, self.num_heads, C // self.num_heads)

    def offsets_and_weights(self, query: Tensor, spatial_shapes: Tensor) -> tuple[Tensor, Tensor]:
        """``query [M, K, query_dims]`` -> offsets ``[M, K, h, T, L, P, 2]`` in units of each
        level's size (already divided by (w_l, h_l), so they add to references in [0, 1]) and
        weights ``[M, K, h, T, L, P]`` (softmax over the L*P points of each head and slot).

        ``spatial_shapes [L, 2]`` (h_l, w_l); raises ``ValueError`` when L differs from the
        module's ``num_levels``.
        """
        if spatial_shapes.shape[0] != self.num_levels:
            raise ValueError(
                f"attention has num_levels={self.num_levels} but the values have "
                f"{spatial_shapes.shape[0]} levels; set num_levels in the config to the number "
                "of feature levels used"
            )
        M, K = query.shape[:2]
        h, T, L, P = self.num_heads, self.num_slots, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(M, K, h, T, L, P, 2)
        # (w_l, h_l) per level: offsets are in cells of their level
        normaliser = spatial_shapes.flip(-1).to(offsets.dtype).view(1, 1, 1, 1, L, 1, 2)
        weights = self.attention_weights(query).view(M, K, h, T, L * P).softmax(-1)
        return offsets / normaliser, weights.view(M, K, h, T, L, P)

    @staticmethod
    def sample(
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        locations: Tensor,
        weights: Tensor,
    ) -> Tensor:
        """``ops.ms_deform_attn``: value ``[M, S, h, C/h]``, locations ``[M, K, h, L, P, 2]`` in
        [0, 1] (x, y), weights ``[M, K, h, L, P]`` -> ``[M, K, C]``."""
        return ops.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)


class FFN(nn.Sequential):
    """Feed-forward network ``Linear(C, F), ReLU, Dropout, Linear(F, C), Dropout`` without the
    residual (mmcv ``FFN`` with ``num_fcs=2``; indices 0 and 3 are the official
    ``ffns.0.layers.0.0`` and ``ffns.0.layers.1``). ``[..., C] -> [..., C]``."""

    def __init__(self, embed_dims: int, ffn_dims: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(embed_dims, ffn_dims),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dims, embed_dims),
            nn.Dropout(dropout),
        )
