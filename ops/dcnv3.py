"""DCNv3 core (InternImage, Wang et al., CVPR 2023, arXiv:2211.05778) with a kernel.

``dcnv3_core`` keeps the signature and semantics of the official ``DCNv3Function`` /
``dcnv3_core_pytorch`` (InternImage ``classification/ops_dcnv3``); it runs the compiled
kernels of ``ops/csrc`` (the same bilinear-sampling core as multi-scale deformable attention,
one level, zero padding by bounds) when available and ``ops.reference.dcnv3_core_reference``
otherwise. Shapes (K = kernel_h * kernel_w, minus 1 with ``remove_center``)::

    input   [N, H_in, W_in, G*Cg]          NHWC
    offset  [N, H_out, W_out, G*K*2]       ((g*K) + p)*2 + {0: x, 1: y}
    mask    [N, H_out, W_out, G*K]         g*K + p, softmax-normalised over p by the caller
    -> out  [N, H_out, W_out, G*Cg]

Registered as ``bevformer_ops::dcnv3`` through ``torch.library`` with a fake implementation
and its backward, so ``torch.compile`` and ``torch.library.opcheck`` work.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ops.build import load_extension
from ops.checks import common_float_dtype, kernel_supports
from ops.reference import dcnv3_core_reference, dcnv3_output_size

__all__ = ["dcnv3_core"]


@torch.library.custom_op("bevformer_ops::dcnv3", mutates_args=())
def _dcnv3_op(
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
    remove_center: bool,
) -> Tensor:
    return load_extension().dcnv3_forward(
        input.contiguous(), offset.contiguous(), mask.contiguous(), kernel_h, kernel_w,
        stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
        offset_scale, remove_center,
    )  # fmt: skip


@_dcnv3_op.register_fake
def _(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
      dilation_w, group, group_channels, offset_scale, remove_center):  # fmt: skip
    N, H_out, W_out, _ = offset.shape
    return input.new_empty(N, H_out, W_out, group * group_channels)


@torch.library.custom_op("bevformer_ops::dcnv3_backward", mutates_args=())
def _dcnv3_backward_op(
    grad_output: Tensor,
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
    remove_center: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return load_extension().dcnv3_backward(
        input.contiguous(), offset.contiguous(), mask.contiguous(), kernel_h, kernel_w,
        stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
        offset_scale, remove_center, grad_output.contiguous(),
    )  # fmt: skip


@_dcnv3_backward_op.register_fake
def _(grad_output, input, offset, mask, *args):
    return torch.empty_like(input), torch.empty_like(offset), torch.empty_like(mask)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:3])
    ctx.params = inputs[3:]


def _backward(ctx, grad_output: Tensor):
    input, offset, mask = ctx.saved_tensors
    grads = _dcnv3_backward_op(grad_output, input, offset, mask, *ctx.params)
    return (*grads, *([None] * len(ctx.params)))


_dcnv3_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
              dilation_h, dilation_w, group, group_channels, remove_center):  # fmt: skip
    for name, t in (("input", input), ("offset", offset), ("mask", mask)):
        if not isinstance(t, Tensor):
            raise TypeError(f"dcnv3_core: {name} must be a torch.Tensor, got {type(t)}")
        if t.dim() != 4:
            raise ValueError(f"dcnv3_core: {name} must be 4-D (NHWC), got {tuple(t.shape)}")
        if t.device != input.device:
            raise ValueError(
                f"dcnv3_core: {name} is on {t.device} but input is on {input.device}; move all "
                "inputs to one device"
            )
    ints = dict(kernel_h=kernel_h, kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w,
                dilation_h=dilation_h, dilation_w=dilation_w, group=group,
                group_channels=group_channels)  # fmt: skip
    for name, v in ints.items():
        if int(v) != v or v < 1:
            raise ValueError(f"dcnv3_core: {name} must be a positive integer, got {v!r}")
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"dcnv3_core: padding must be >= 0, got pad_h={pad_h}, pad_w={pad_w}")
    if remove_center and (kernel_h % 2 == 0 or kernel_w % 2 == 0 or kernel_h != kernel_w):
        raise ValueError(
            "dcnv3_core: remove_center needs a square odd kernel, got "
            f"{kernel_h}x{kernel_w}; use remove_center=False"
        )
    N, H_in, W_in, channels = input.shape
    if channels != group * group_channels:
        hint = ""
        if input.shape[1] == group * group_channels:
            hint = " It looks like NCHW: DCNv3 takes NHWC, pass input.permute(0, 2, 3, 1)."
        raise ValueError(
            f"dcnv3_core: input must be NHWC [N, H, W, group*group_channels = "
            f"{group * group_channels}], got {tuple(input.shape)}.{hint}"
        )
    H_out = dcnv3_output_size(H_in, kernel_h, stride_h, pad_h, dilation_h)
    W_out = dcnv3_output_size(W_in, kernel_w, stride_w, pad_w, dilation_w)
    if H_out < 1 or W_out < 1:
        raise ValueError(
            f"dcnv3_core: input {H_in}x{W_in} is too small for kernel {kernel_h}x{kernel_w}, "
            f"dilation {dilation_h}x{dilation_w}, padding {pad_h}x{pad_w}"
        )
    K = kernel_h * kernel_w - int(bool(remove_center))
    expected = {"offset": (N, H_out, W_out, group * K * 2), "mask": (N, H_out, W_out, group * K)}
    for name, t in (("offset", offset), ("mask", mask)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"dcnv3_core: {name} must be [N, H_out, W_out, "
                f"{'group*K*2' if name == 'offset' else 'group*K'}] = {expected[name]} for input "
                f"{tuple(input.shape)} (K={K}, stride {stride_h}x{stride_w}), got "
                f"{tuple(t.shape)}"
            )


def dcnv3_core(
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
    """DCNv3 core -> [N, H_out, W_out, group*group_channels] (shapes in the module docstring).

    ``im2col_step`` is accepted for compatibility and ignored (any batch size works).
    Floating inputs of different dtypes are promoted to a common dtype (the result's dtype).
    """
    del im2col_step
    _validate(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
              dilation_h, dilation_w, group, group_channels, remove_center)  # fmt: skip
    dtype = common_float_dtype("dcnv3_core", input=input, offset=offset, mask=mask)
    input, offset, mask = (t.to(dtype) for t in (input, offset, mask))
    args = (int(kernel_h), int(kernel_w), int(stride_h), int(stride_w), int(pad_h), int(pad_w),
            int(dilation_h), int(dilation_w), int(group), int(group_channels),
            float(offset_scale))  # fmt: skip
    compute = kernel_supports(input)
    if compute is None:
        out = dcnv3_core_reference(input, offset, mask, *args, remove_center=bool(remove_center))
        return out.to(dtype)  # under autocast grid_sample may compute in another dtype
    out = _dcnv3_op(
        input.to(compute), offset.to(compute), mask.to(compute), *args, bool(remove_center)
    )
    return out.to(dtype)
