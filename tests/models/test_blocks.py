"""The shared deformable-attention core and FFN: official initialisation, offset
normalisation, and the three attentions built on it."""

from __future__ import annotations

import pytest
import torch

from bevformer.models.attention import BEVSelfAttention, MSDeformableAttention3D
from bevformer.models.blocks import FFN, DeformableAttention
from bevformer.models.decoder import BEVCrossAttention


def test_initial_points_lie_on_one_ray_per_head():
    attn = DeformableAttention(8, num_heads=4, num_levels=2, num_points=3, num_slots=2)
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
    bias = attn.sampling_offsets.bias.view(4, 2, 2, 3, 2)  # [h, T, L, P, (x, y)]
    # head k along angle 2 pi k / 4 (largest component 1): +x, +y, -x, -y; point p at p + 1
    rays = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)]
    for k, (dx, dy) in enumerate(rays):
        for p in range(3):
            expected = torch.tensor([dx, dy]) * (p + 1)
            for t in range(2):
                for lvl in range(2):
                    torch.testing.assert_close(bias[k, t, lvl, p], expected, atol=1e-6, rtol=0)
    # the diagonal head of 8 heads: (cos 45, sin 45) scaled to (1, 1)
    diag = DeformableAttention(8, num_heads=8, num_levels=1, num_points=1).sampling_offsets.bias
    assert diag.view(8, 2)[1].tolist() == pytest.approx([1.0, 1.0])
    assert not attn.value_proj.bias.any()


def test_offsets_are_normalised_by_each_level_and_weights_softmaxed_per_slot():
    torch.manual_seed(0)
    attn = DeformableAttention(4, num_heads=1, num_levels=2, num_points=2, num_slots=2)
    torch.nn.init.normal_(attn.attention_weights.weight)
    shapes = torch.tensor([[4, 8], [2, 5]])  # (h, w) per level
    query = torch.randn(1, 3, 4)
    offsets, weights = attn.offsets_and_weights(query, shapes)
    assert offsets.shape == (1, 3, 1, 2, 2, 2, 2) and weights.shape == (1, 3, 1, 2, 2, 2)
    raw = attn.sampling_offsets(query).view(1, 3, 1, 2, 2, 2, 2)
    torch.testing.assert_close(offsets[..., 0, :, 0], raw[..., 0, :, 0] / 8)  # level 0: x / w
    torch.testing.assert_close(offsets[..., 1, :, 1], raw[..., 1, :, 1] / 2)  # level 1: y / h
    sums = weights.flatten(-2).sum(-1)  # per (head, slot) over L * P
    torch.testing.assert_close(sums, torch.ones_like(sums))
    with pytest.raises(ValueError, match="num_levels=2"):
        attn.offsets_and_weights(query, shapes[:1])


def test_the_three_attentions_share_the_core_and_add_no_residual():
    for module in (
        BEVSelfAttention(8, 2, 1, 2),
        MSDeformableAttention3D(8, 2, 2, 4),
        BEVCrossAttention(8, 2, 1, 2),
    ):
        assert isinstance(module, DeformableAttention)
    # zero value/output projections: the attention outputs zero, so nothing of the query
    # (no residual) comes back
    attn = BEVCrossAttention(4, 1, 1, 2)
    torch.nn.init.zeros_(attn.output_proj.weight)
    q = torch.randn(1, 3, 4)
    out = attn(
        q,
        torch.zeros_like(q),
        torch.randn(1, 6, 4),
        torch.rand(1, 3, 2),
        torch.tensor([[2, 3]]),
        torch.zeros(1, dtype=torch.long),
    )
    assert not out.any()


def test_ffn_has_the_official_layout_and_no_residual():
    ffn = FFN(4, 6, dropout=0.0)
    assert [type(m).__name__ for m in ffn] == ["Linear", "ReLU", "Dropout", "Linear", "Dropout"]
    assert ffn[0].weight.shape == (6, 4) and ffn[3].weight.shape == (4, 6)
    for lin in (ffn[0], ffn[3]):
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    assert not ffn(torch.randn(2, 4)).any()
