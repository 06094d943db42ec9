"""Input checks and kernel/dtype selection shared by the operator wrappers."""

from __future__ import annotations

import torch
from torch import Tensor

from ops.build import load_extension

__all__ = ["common_float_dtype", "kernel_supports"]

# Dtypes the compiled kernels take per device type; other float dtypes are upcast to float32.
KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def common_float_dtype(op: str, **tensors: Tensor) -> torch.dtype:
    """The promoted floating dtype of ``tensors``; raises TypeError for non-float inputs."""
    dtype = None
    for name, t in tensors.items():
        if not t.dtype.is_floating_point:
            raise TypeError(
                f"{op}: {name} must be a floating-point tensor (float32/float64, or "
                f"float16/bfloat16 on CUDA), got {t.dtype}; convert it with .float()"
            )
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype


def kernel_supports(x: Tensor) -> torch.dtype | None:
    """Dtype the compiled kernel computes ``x``'s op in, or None to use the reference."""
    supported = KERNEL_DTYPES.get(x.device.type)
    if supported is None:
        return None
    ext = load_extension()
    if ext is None or (x.device.type == "cuda" and not ext.with_cuda):
        return None
    return x.dtype if x.dtype in supported else torch.float32
