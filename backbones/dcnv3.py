"""DCNv3: the deformable convolution operator of InternImage.

Paper: W. Wang et al., "InternImage: Exploring Large-Scale Vision Foundation Models with
Deformable Convolutions", CVPR 2023 (arXiv:2211.05778). Module layout and parameter names follow
the official ``classification/ops_dcnv3/modules/dcnv3.py`` so that checkpoints load unchanged.

For an NHWC input x [B, H, W, C] with G groups of Cg = C / G channels and K = k*k kernel points
(K = k*k - 1 with ``remove_center``):

1. ``v = input_proj(x)``                                        [B, H, W, C]
2. ``q = GELU(LN(depthwise_conv(x)))``                          [B, H, W, C]
3. ``offset = offset(q)``                                       [B, H, W, G*K*2]
   ``mask = softmax over the K points of mask(q)``              [B, H, W, G*K]
4. ``y = dcnv3_core(v, offset, mask, ...)``                     [B, H, W, C]
5. optional centre feature scale: ``y = y * (1 - s) + v * s`` with
   ``s = sigmoid(q @ W_cfs^T + b_cfs)`` [B, H, W, G], repeated over the Cg channels of a group
6. ``output_proj(y)``

The core op is ``ops.dcnv3_core`` (compiled kernel when available) for ``core_op="DCNv3"`` and
the pure-PyTorch ``ops.dcnv3_core_reference`` for ``core_op="DCNv3_pytorch"`` (the official
config names). Both modules have identical parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ops

__all__ = ["DCNv3", "CORE_OPS", "build_act_layer", "build_norm_layer"]

# Official ``core_op`` names -> core function. Looked up at call time so that a kernel
# registered after import is used.
CORE_OPS = ("DCNv3", "DCNv3_pytorch")

# The CUDA launcher of the official module passes 256; it only chunks the batch.
_IM2COL_STEP = 256


class ToChannelsFirst(nn.Module):
    """[B, H, W, C] -> [B, C, H, W] (a module so that ``nn.Sequential`` indices match)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


class ToChannelsLast(nn.Module):
    """[B, C, H, W] -> [B, H, W, C]."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


def build_norm_layer(
    dim: int,
    norm_layer: str,
    in_format: str = "channels_last",
    out_format: str = "channels_last",
    eps: float = 1e-6,
) -> nn.Sequential:
    """A norm wrapped in the permutes needed to go from ``in_format`` to ``out_format``.

    The permutes are modules inside an ``nn.Sequential``, so the norm's parameters sit at the
    same index as in the official checkpoints (e.g. ``[ToChannelsLast, LayerNorm]`` stores the
    weight under ``.1.weight``).
    """
    layers: list[nn.Module] = []
    if norm_layer == "BN":
        if in_format == "channels_last":
            layers.append(ToChannelsFirst())
        layers.append(nn.BatchNorm2d(dim))
        if out_format == "channels_last":
            layers.append(ToChannelsLast())
    elif norm_layer == "LN":
        if in_format == "channels_first":
            layers.append(ToChannelsLast())
        layers.append(nn.LayerNorm(dim, eps=eps))
        if out_format == "channels_first":
            layers.append(ToChannelsFirst())
    else:
        raise ValueError(f"norm_layer must be 'LN' or 'BN', got {norm_layer!r}.")
    return nn.Sequential(*layers)


def build_act_layer(act_layer: str) -> nn.Module:
    """'GELU' | 'ReLU' | 'SiLU' -> module (the official choices)."""
    if act_layer == "GELU":
        return nn.GELU()
    if act_layer == "ReLU":
        return nn.ReLU(inplace=True)
    if act_layer == "SiLU":
        return nn.SiLU(inplace=True)
    raise ValueError(f"act_layer must be 'GELU', 'ReLU' or 'SiLU', got {act_layer!r}.")


class DCNv3(nn.Module):
    """DCNv3 on NHWC features: [B, H, W, C] -> [B, H_out, W_out, C] (module docstring).

    ``core_op`` selects the sampling core: ``"DCNv3"`` (``ops.dcnv3_core``, compiled when
    available) or ``"DCNv3_pytorch"`` (``ops.dcnv3_core_reference``).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        act_layer: str = "GELU",
        norm_layer: str = "LN",
        center_feature_scale: bool = False,
        remove_center: bool = False,
        core_op: str = "DCNv3",
    ) -> None:
        super().__init__()
        if channels % group != 0:
            raise ValueError(
                f"channels must be divisible by group, got channels={channels}, group={group}; "
                "pick a group count that divides the channel width."
            )
        if core_op not in CORE_OPS:
            raise ValueError(f"core_op must be one of {CORE_OPS}, got {core_op!r}.")
        if remove_center and kernel_size % 2 == 0:
            raise ValueError(f"remove_center needs an odd kernel_size, got {kernel_size}.")
        if stride != 1 or 2 * pad != dilation * (kernel_size - 1):
            # offsets and mask are predicted per input pixel, so the core op must keep the size
            raise ValueError(
                "DCNv3 predicts offsets and mask at every input position, so its output must "
                "keep the input size: supported are stride=1 and pad=dilation*(kernel_size-1)/2 "
                f"(pad={dilation * (kernel_size - 1) / 2:g} here); got stride={stride}, "
                f"pad={pad}, dilation={dilation}, kernel_size={kernel_size}. Downsample with a "
                "strided convolution before the block, as InternImage does."
            )
        dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        self.core_op = core_op
        self.channels = channels
        self.kernel_size = kernel_size
        self.dw_kernel_size = dw_kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.group = group
        self.group_channels = channels // group
        self.offset_scale = offset_scale
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        num_points = kernel_size * kernel_size - self.remove_center

        self.dw_conv = nn.Sequential(
            nn.Conv2d(
                channels,
                channels,
                kernel_size=dw_kernel_size,
                stride=1,
                padding=(dw_kernel_size - 1) // 2,
                groups=channels,
            ),
            build_norm_layer(channels, norm_layer, "channels_first", "channels_last"),
            build_act_layer(act_layer),
        )
        self.offset = nn.Linear(channels, group * num_points * 2)
        self.mask = nn.Linear(channels, group * num_points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: zero offsets and mask logits (a regular grid with uniform weights)."""
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        nn.init.zeros_(self.mask.weight)
        nn.init.zeros_(self.mask.bias)
        nn.init.xavier_uniform_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, input: Tensor) -> Tensor:
        B, H, W, _ = input.shape
        x = self.input_proj(input)
        x_proj = x
        # Offsets and mask come from a depthwise-conv view of the input: [B, H, W, C].
        x1 = self.dw_conv(input.permute(0, 3, 1, 2))
        offset = self.offset(x1)
        # [B, H, W, G*K] -> [B, H, W, G, K] softmax over K -> [B, H, W, G*K]
        mask = self.mask(x1).reshape(B, H, W, self.group, -1)
        mask = F.softmax(mask, -1).reshape(B, H, W, -1).to(x.dtype)

        core = ops.dcnv3_core if self.core_op == "DCNv3" else ops.dcnv3_core_reference
        x = core(
            x,
            offset,
            mask,
            self.kernel_size,
            self.kernel_size,
            self.stride,
            self.stride,
            self.pad,
            self.pad,
            self.dilation,
            self.dilation,
            self.group,
            self.group_channels,
            self.offset_scale,
            _IM2COL_STEP,
            bool(self.remove_center),
        )
        if self.center_feature_scale:
            # [B, H, W, G] -> [B, H, W, G, Cg] -> [B, H, W, C]
            scale = F.linear(
                x1, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias
            ).sigmoid()
            scale = scale[..., None].expand(-1, -1, -1, -1, self.group_channels).flatten(-2)
            x = x * (1 - scale) + x_proj * scale
        return self.output_proj(x)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, group={self.group}, kernel_size={self.kernel_size}, "
            f"offset_scale={self.offset_scale}, core_op={self.core_op!r}"
        )
