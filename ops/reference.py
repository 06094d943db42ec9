"""Pure-PyTorch references for the deformable sampling operators (no compiled code needed).

These are the oracles the compiled kernels are tested against, and the fallback used when the
extension cannot be built. Both are written with ``F.grid_sample`` (bilinear, zero padding,
``align_corners=False``), as in the official projects.

``ms_deform_attn_reference`` — the multi-scale deformable attention core of Deformable DETR
(Zhu et al., ICLR 2021, arXiv:2010.04159), with the argument shapes of mmcv's
``multi_scale_deformable_attn_pytorch``::

    value               [B, S, H, C]       S = sum over levels of h_l * w_l
    spatial_shapes      [L, 2] int64       (h_l, w_l) per level
    level_start_index   [L] int64          offset of each level inside S
    sampling_locations  [B, Q, H, L, P, 2] (x, y) in [0, 1]; pixel i has its centre at (i+0.5)/w
    attention_weights   [B, Q, H, L, P]
    -> output           [B, Q, H*C]

``dcnv3_core_reference`` — the core of DCNv3 (InternImage, Wang et al., CVPR 2023,
arXiv:2211.05778) with the official signature (InternImage
``classification/ops_dcnv3/functions/dcnv3_func.py``). Input is NHWC. For output pixel (h, w),
group g and kernel tap p = i * kernel_h + j (i over x, outer; j over y, inner), the sampling
point in input pixel coordinates is (``dcnv3_im2col_cuda.cuh``)::

    x = w * stride_w - pad_w + cx + (i * dilation_w - cx + offset[..., g, p, 0]) * offset_scale
    y = h * stride_h - pad_h + cy + (j * dilation_h - cy + offset[..., g, p, 1]) * offset_scale

with cx = dilation_w * (kernel_w - 1) // 2 (cy likewise), so ``offset_scale`` scales the regular
kernel grid as well as the learned offsets. The output is sum_p mask[g, p] * bilinear(x, y)
with zeros outside the input. Shapes::

    input   [N, H_in, W_in, G*Cg]
    offset  [N, H_out, W_out, G*K*2]   last dim ((g*K) + p)*2 + {0: x, 1: y}
    mask    [N, H_out, W_out, G*K]     last dim g*K + p (already softmax-normalised over p)
    -> out  [N, H_out, W_out, G*Cg]

K = kernel_h * kernel_w, minus one when ``remove_center`` drops the centre tap. Padding is
applied as pad_h rows top and bottom and pad_w columns left and right (the CUDA kernel's
semantics; the official PyTorch fallback swaps the two, which only matters when they differ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dcnv3_core_reference",
    "dcnv3_output_size",
    "dcnv3_sampling_locations",
    "ms_deform_attn_reference",
]


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention core (shapes in the module docstring) -> [B, Q, H*C]."""
    B, _, H, C = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    grids = 2.0 * sampling_locations - 1.0  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [B, h*w, H, C] -> [B, H, C, h*w] -> [B*H, C, h, w]
        v = value[:, starts[lvl] : starts[lvl] + h * w].permute(0, 2, 3, 1).reshape(B * H, C, h, w)
        # [B, Q, H, P, 2] -> [B, H, Q, P, 2] -> [B*H, Q, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * H, Q, P, 2)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [B*H, C, Q, P]
    # [B*H, C, Q, L, P] -> [B*H, C, Q, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    # [B, Q, H, L, P] -> [B, H, Q, L, P] -> [B*H, 1, Q, L*P]
    weights = attention_weights.transpose(1, 2).reshape(B * H, 1, Q, L * P)
    out = (stacked * weights).sum(-1)  # [B*H, C, Q]
    return out.view(B, H * C, Q).transpose(1, 2).contiguous()


def dcnv3_output_size(size_in: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Output length of one spatial dimension of DCNv3 (the usual convolution formula)."""
    return (size_in + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def dcnv3_sampling_locations(
    offset: Tensor,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    group: int,
    offset_scale: float,
    remove_center: bool = False,
) -> Tensor:
    """Sampling points of DCNv3 in input pixel coordinates (x, y): [N, H_out, W_out, G, K, 2]."""
    N, H_out, W_out, _ = offset.shape
    dev, dt = offset.device, offset.dtype
    cx = (dilation_w * (kernel_w - 1)) // 2
    cy = (dilation_h * (kernel_h - 1)) // 2
    # Regular kernel grid, tap p = i * kernel_h + j (i over x outer, j over y inner).
    ti = torch.arange(kernel_w, device=dev, dtype=dt) * dilation_w - cx
    tj = torch.arange(kernel_h, device=dev, dtype=dt) * dilation_h - cy
    gx, gy = torch.meshgrid(ti, tj, indexing="ij")  # [kernel_w, kernel_h]
    taps = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)  # [K_full, 2]
    if remove_center:
        centre = (kernel_w // 2) * kernel_h + kernel_h // 2
        keep = [p for p in range(kernel_h * kernel_w) if p != centre]
        taps = taps[keep]
    K = taps.shape[0]
    # Output pixel anchors (x, y) in input coordinates: [H_out, W_out, 2].
    ax = torch.arange(W_out, device=dev, dtype=dt) * stride_w - pad_w + cx
    ay = torch.arange(H_out, device=dev, dtype=dt) * stride_h - pad_h + cy
    anchor = torch.stack(torch.meshgrid(ax, ay, indexing="xy"), -1)
    off = offset.reshape(N, H_out, W_out, group, K, 2)
    return anchor[None, :, :, None, None, :] + (taps + off) * offset_scale


def dcnv3_core_reference(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    group: int,
    group_channels: int,
    offset_scale: float,
    im2col_step: int = 64,
    remove_center: bool = False,
) -> Tensor:
    """DCNv3 core (shapes in the module docstring) -> [N, H_out, W_out, G*Cg].

    ``im2col_step`` only chunks the batch in the CUDA kernel and has no effect here.
    """
    del im2col_step
    N, H_in, W_in, _ = input.shape
    _, H_out, W_out, _ = offset.shape
    G, Cg = group, group_channels
    loc = dcnv3_sampling_locations(
        offset,
        kernel_h,
        kernel_w,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dilation_h,
        dilation_w,
        group,
        offset_scale,
        remove_center,
    )  # [N, H_out, W_out, G, K, 2]
    K = loc.shape[-2]
    # Pixel coordinates -> grid_sample's [-1, 1] with align_corners=False.
    size = torch.tensor([W_in, H_in], device=loc.device, dtype=loc.dtype)
    grid = 2.0 * (loc + 0.5) / size - 1.0
    # [N, H_out, W_out, G, K, 2] -> [N, G, H_out*W_out, K, 2] -> [N*G, H_out*W_out, K, 2]
    grid = grid.reshape(N, H_out * W_out, G, K, 2).transpose(1, 2).reshape(N * G, -1, K, 2)
    # [N, H_in, W_in, G*Cg] -> [N, G*Cg, H_in, W_in] -> [N*G, Cg, H_in, W_in]
    x = input.permute(0, 3, 1, 2).reshape(N * G, Cg, H_in, W_in)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # mask [N, H_out, W_out, G*K] -> [N, G, H_out*W_out, K] -> [N*G, 1, H_out*W_out, K]
    m = mask.reshape(N, H_out * W_out, G, K).transpose(1, 2).reshape(N * G, 1, -1, K)
    out = (sampled * m).sum(-1)  # [N*G, Cg, H_out*W_out]
    return out.view(N, G * Cg, H_out, W_out).permute(0, 2, 3, 1).contiguous()
