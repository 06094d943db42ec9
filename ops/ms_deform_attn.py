"""Multi-scale deformable attention core (Deformable DETR, arXiv:2010.04159) with a kernel.

``ms_deform_attn`` is a drop-in replacement for mmcv's ``multi_scale_deformable_attn_pytorch``
(and ``MultiScaleDeformableAttnFunction``): the same arguments, shapes and result, computed by
the compiled kernels of ``ops/csrc`` when they are available and by
``ops.reference.ms_deform_attn_reference`` otherwise. Shapes::

    value               [B, S, H, C]       S = sum_l h_l * w_l
    spatial_shapes      [L, 2] int64       (h_l, w_l)
    level_start_index   [L] int64
    sampling_locations  [B, Q, H, L, P, 2] (x, y) in [0, 1], pixel centres at (i + 0.5) / w
    attention_weights   [B, Q, H, L, P]
    -> output           [B, Q, H*C]

The op is registered as ``bevformer_ops::ms_deform_attn`` through ``torch.library`` (with a
fake implementation and its backward), so ``torch.compile`` and ``torch.library.opcheck`` work.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ops.build import load_extension
from ops.checks import common_float_dtype, kernel_supports
from ops.reference import ms_deform_attn_reference

__all__ = ["ms_deform_attn"]


@torch.library.custom_op("bevformer_ops::ms_deform_attn", mutates_args=())
def _msda_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    _check_levels(value, spatial_shapes, level_start_index)
    return load_extension().msda_forward(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )


@_msda_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    B, _, H, C = value.shape
    return value.new_empty(B, sampling_locations.shape[1], H * C)


@torch.library.custom_op("bevformer_ops::ms_deform_attn_backward", mutates_args=())
def _msda_backward_op(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    return load_extension().msda_backward(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
        grad_output.contiguous(),
    )


@_msda_backward_op.register_fake
def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return (
        torch.empty_like(value),
        torch.empty_like(sampling_locations),
        torch.empty_like(attention_weights),
    )


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output: Tensor):
    value, spatial_shapes, level_start_index, locations, weights = ctx.saved_tensors
    grad_value, grad_loc, grad_weights = _msda_backward_op(
        grad_output, value, spatial_shapes, level_start_index, locations, weights
    )
    return grad_value, None, None, grad_loc, grad_weights


_msda_op.register_autograd(_backward, setup_context=_setup_context)


def _check_levels(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor) -> None:
    """Data-dependent checks (run on real tensors only): the levels must tile ``value``."""
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    total = 0
    for lvl, (h, w) in enumerate(shapes):
        if h <= 0 or w <= 0:
            raise ValueError(f"ms_deform_attn: spatial_shapes[{lvl}] = {(h, w)}; expected > 0")
        if starts[lvl] != total:
            raise ValueError(
                f"ms_deform_attn: level_start_index[{lvl}] = {starts[lvl]}, expected {total} "
                "(the cumulative sum of h*w of the previous levels); rebuild it with "
                "torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))"
            )
        total += h * w
    if total != value.shape[1]:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes cover {total} positions (sum of h*w) but value has "
            f"{value.shape[1]} (value.shape[1]); pass the shapes of the flattened feature maps"
        )


def _validate(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    tensors = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(t)}")
    if value.dim() != 4:
        raise ValueError(
            f"ms_deform_attn: value must be [B, S, H, C], got shape {tuple(value.shape)}; "
            "split the channels into heads with value.view(B, S, H, C // H)"
        )
    B, _, H, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "ms_deform_attn: sampling_locations must be [B, Q, H, L, P, 2], got shape "
            f"{tuple(sampling_locations.shape)}"
        )
    _, Q, _, L, P, _ = sampling_locations.shape
    if sampling_locations.shape[0] != B or sampling_locations.shape[2] != H:
        raise ValueError(
            f"ms_deform_attn: sampling_locations {tuple(sampling_locations.shape)} does not match "
            f"value {tuple(value.shape)}: expected batch {B} and {H} heads"
        )
    if tuple(attention_weights.shape) != (B, Q, H, L, P):
        raise ValueError(
            f"ms_deform_attn: attention_weights must be [B, Q, H, L, P] = {(B, Q, H, L, P)}, got "
            f"{tuple(attention_weights.shape)}; reshape the softmax output to that layout"
        )
    if tuple(spatial_shapes.shape) != (L, 2):
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must be [L, 2] = {(L, 2)} (h, w per level), got "
            f"{tuple(spatial_shapes.shape)}"
        )
    if tuple(level_start_index.shape) != (L,):
        raise ValueError(
            f"ms_deform_attn: level_start_index must be [L] = {(L,)}, got "
            f"{tuple(level_start_index.shape)}"
        )
    for name in ("spatial_shapes", "level_start_index"):
        if tensors[name].dtype.is_floating_point or tensors[name].dtype.is_complex:
            raise TypeError(
                f"ms_deform_attn: {name} must be an integer tensor (int64), got "
                f"{tensors[name].dtype}"
            )
    for name in ("sampling_locations", "attention_weights"):
        if tensors[name].device != value.device:
            raise ValueError(
                f"ms_deform_attn: {name} is on {tensors[name].device} but value is on "
                f"{value.device}; move all inputs to one device"
            )


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention core -> [B, Q, H*C] (shapes in the module docstring).

    Floating inputs of different dtypes are promoted to a common dtype (the result has that
    dtype); integer index tensors are converted to int64 and moved to ``value``'s device.
    """
    _validate(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    dtype = common_float_dtype(
        "ms_deform_attn",
        value=value,
        sampling_locations=sampling_locations,
        attention_weights=attention_weights,
    )
    value, sampling_locations, attention_weights = (
        t.to(dtype) for t in (value, sampling_locations, attention_weights)
    )
    spatial_shapes = spatial_shapes.to(device=value.device, dtype=torch.int64)
    level_start_index = level_start_index.to(device=value.device, dtype=torch.int64)
    compute = kernel_supports(value)
    if compute is None:
        out = ms_deform_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        return out.to(dtype)  # under autocast grid_sample may compute in another dtype
    out = _msda_op(
        value.to(compute),
        spatial_shapes,
        level_start_index,
        sampling_locations.to(compute),
        attention_weights.to(compute),
    )
    return out.to(dtype)
