"""The pure-PyTorch references against a direct loop over the published formulas."""

from __future__ import annotations

import math

import pytest
import torch

from ops.reference import dcnv3_core_reference, dcnv3_output_size, ms_deform_attn_reference


def bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img [h, w, C] sampled at pixel coordinates (y, x), zeros outside."""
    h, w, C = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(C, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[yy, xx]
    return out


def dcnv3_loop(inp, off, mask, kh, kw, sh, sw, ph, pw, dh, dw, G, Cg, scale, remove_center):
    """DCNv3 exactly as InternImage's dcnv3_im2col_cuda.cuh loops over it."""
    N, _, _, _ = inp.shape
    _, Ho, Wo, _ = off.shape
    K = kh * kw - int(remove_center)
    out = torch.zeros(N, Ho, Wo, G * Cg, dtype=inp.dtype)
    cx, cy = dw * (kw - 1) // 2, dh * (kh - 1) // 2
    for n in range(N):
        for ho in range(Ho):
            for wo in range(Wo):
                for g in range(G):
                    p = 0
                    for i in range(kw):
                        for j in range(kh):
                            if remove_center and i == kw // 2 and j == kh // 2:
                                continue
                            ox = off[n, ho, wo, (g * K + p) * 2].item()
                            oy = off[n, ho, wo, (g * K + p) * 2 + 1].item()
                            x = wo * sw - pw + cx + (i * dw - cx + ox) * scale
                            y = ho * sh - ph + cy + (j * dh - cy + oy) * scale
                            img = inp[n, :, :, g * Cg : (g + 1) * Cg]
                            out[n, ho, wo, g * Cg : (g + 1) * Cg] += mask[
                                n, ho, wo, g * K + p
                            ] * bilinear(img, y, x)
                            p += 1
    return out


@pytest.mark.parametrize(
    "kh,kw,sh,sw,ph,pw,dh,dw,G,Cg,scale,rc",
    [
        (3, 3, 1, 1, 1, 1, 1, 1, 2, 3, 1.0, False),
        (3, 3, 2, 2, 1, 2, 2, 1, 3, 1, 2.0, False),
        (3, 3, 1, 1, 1, 1, 1, 1, 1, 2, 1.0, True),
        (3, 1, 1, 2, 0, 1, 1, 1, 2, 2, 0.5, False),
    ],
)
def test_dcnv3_reference_matches_loop(kh, kw, sh, sw, ph, pw, dh, dw, G, Cg, scale, rc):
    N, H, W = 2, 5, 6
    Ho, Wo = dcnv3_output_size(H, kh, sh, ph, dh), dcnv3_output_size(W, kw, sw, pw, dw)
    K = kh * kw - int(rc)
    inp = torch.randn(N, H, W, G * Cg, dtype=torch.float64)
    off = torch.randn(N, Ho, Wo, G * K * 2, dtype=torch.float64) * 2
    mask = torch.rand(N, Ho, Wo, G * K, dtype=torch.float64)
    args = (kh, kw, sh, sw, ph, pw, dh, dw, G, Cg, scale)
    ref = dcnv3_core_reference(inp, off, mask, *args, remove_center=rc)
    loop = dcnv3_loop(inp, off, mask, *args, rc)
    torch.testing.assert_close(ref, loop, rtol=0, atol=1e-12)


def test_dcnv3_reference_zero_offset_is_a_convolution_tap_sum():
    # Zero offsets, offset_scale 1, mask one-hot on the centre tap: the output is the input.
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    off = torch.zeros(1, 4, 5, 2 * 9 * 2, dtype=torch.float64)
    mask = torch.zeros(1, 4, 5, 2 * 9, dtype=torch.float64)
    mask[..., 4] = 1.0  # group 0, centre tap p = 1*3 + 1
    mask[..., 9 + 4] = 1.0  # group 1
    out = dcnv3_core_reference(x, off, mask, 3, 3, 1, 1, 1, 1, 1, 1, 2, 3, 1.0)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    # Tap p = 0 is (i=0, j=0): one pixel left and one up, so out[h, w] = x[h-1, w-1].
    mask.zero_()
    mask[..., 0] = 1.0
    out = dcnv3_core_reference(x, off, mask, 3, 3, 1, 1, 1, 1, 1, 1, 2, 3, 1.0)
    torch.testing.assert_close(out[0, 1:, 1:, :3], x[0, :-1, :-1, :3], rtol=0, atol=1e-12)
    assert out[0, 0, :, :3].abs().max() == 0  # zero padding above the image


def test_ms_deform_attn_reference_matches_loop():
    B, H, C, L, P, Q = 2, 2, 3, 2, 2, 4
    shapes = torch.tensor([[3, 4], [2, 3]])
    starts = torch.tensor([0, 12])
    v = torch.randn(B, 18, H, C, dtype=torch.float64)
    loc = torch.rand(B, Q, H, L, P, 2, dtype=torch.float64) * 1.4 - 0.2
    aw = torch.rand(B, Q, H, L, P, dtype=torch.float64)
    out = ms_deform_attn_reference(v, shapes, starts, loc, aw)
    expected = torch.zeros(B, Q, H * C, dtype=torch.float64)
    for b in range(B):
        for q in range(Q):
            for m in range(H):
                for lvl in range(L):
                    h, w = shapes[lvl].tolist()
                    img = v[b, starts[lvl] : starts[lvl] + h * w, m].reshape(h, w, C)
                    for p in range(P):
                        x = loc[b, q, m, lvl, p, 0].item() * w - 0.5
                        y = loc[b, q, m, lvl, p, 1].item() * h - 0.5
                        expected[b, q, m * C : (m + 1) * C] += aw[b, q, m, lvl, p] * bilinear(
                            img, y, x
                        )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_ms_deform_attn_reference_pixel_centre():
    # A location at the centre of pixel (row 1, col 2) of a 3x4 map returns that pixel.
    v = torch.arange(12.0, dtype=torch.float64).view(1, 12, 1, 1)
    loc = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    aw = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn_reference(v, torch.tensor([[3, 4]]), torch.tensor([0]), loc, aw)
    assert out.item() == pytest.approx(1 * 4 + 2)
