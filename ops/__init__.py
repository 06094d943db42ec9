"""Deformable sampling operators: multi-scale deformable attention and the DCNv3 core.

``ms_deform_attn`` and ``dcnv3_core`` run the compiled kernels when the extension is available
and fall back to the pure-PyTorch references (``*_reference``) otherwise; see ``ops/README.md``.
"""

from ops.reference import dcnv3_core_reference, ms_deform_attn_reference

__all__ = [
    "dcnv3_core",
    "dcnv3_core_reference",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention core -> [B, Q, H*C] (see ``ops.reference``)."""
    return ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


def dcnv3_core(
    input,
    offset,
    mask,
    kernel_h,
    kernel_w,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dilation_h,
    dilation_w,
    group,
    group_channels,
    offset_scale,
    im2col_step=64,
    remove_center=False,
):
    """DCNv3 core -> [N, H_out, W_out, G*Cg] (see ``ops.reference``)."""
    return dcnv3_core_reference(
        input,
        offset,
        mask,
        kernel_h,
        kernel_w,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dilation_h,
        dilation_w,
        group,
        group_channels,
        offset_scale,
        im2col_step,
        remove_center,
    )
