"""Attention-pooling classification head of InternImage-H (the "CLIP projector").

Official: OpenGVLab/InternImage ``classification/models/intern_image.py`` (``CrossAttention``,
``AttentiveBlock``, ``AttentionPoolingBlock``). Used only by the H classification model, so
that its checkpoints and parameter count can be checked. Tokens [B, N, C] are pooled by one
query, the normalised token mean, with multi-head attention (q/k/v without bias weights but
with separate bias vectors) and projected to ``out_dim``: -> [B, out_dim].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.dcnv3 import build_norm_layer

__all__ = ["AttentionPoolingBlock", "CrossAttention"]


class CrossAttention(nn.Module):
    """Multi-head attention of one query token over N tokens (InternImage-H clip projector)."""

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, Nq, C = q.shape

        def heads(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
            # [B, N, C] -> [B, heads, N, C/heads]
            return F.linear(t, w, b).reshape(B, t.shape[1], self.num_heads, -1).transpose(1, 2)

        q = heads(q, self.q.weight, self.q_bias) * self.scale
        k = heads(k, self.k.weight, self.k_bias)
        v = heads(v, self.v.weight, self.v_bias)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, Nq, -1))


class AttentionPoolingBlock(nn.Module):
    """Pools [B, N, C] tokens to [B, out_dim] by attention from their mean (InternImage-H)."""

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.norm1_q = build_norm_layer(dim, "LN")
        self.norm1_k = build_norm_layer(dim, "LN")
        self.norm1_v = build_norm_layer(dim, "LN")
        self.cross_dcn = CrossAttention(dim, num_heads, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        q = self.norm1_q(x.mean(1, keepdim=True))
        return self.cross_dcn(q, self.norm1_k(x), self.norm1_v(x)).squeeze(1)
