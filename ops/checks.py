"""Input checks and kernel/dtype selection shared by the operator wrappers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from ops.build import load_extension

__all__ = ["common_float_dtype", "kernel_supports", "reference_ops"]

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


_REFERENCE_ONLY = [0]  # depth of nested reference_ops() blocks


@contextmanager
def reference_ops() -> Iterator[None]:
    """Inside the block ``ms_deform_attn`` and ``dcnv3_core`` run their pure-PyTorch references
    (``F.grid_sample``): a model traced or exported there contains standard operators only
    (ONNX ``GridSample``, opset >= 16) instead of the compiled kernels' custom ops."""
    _REFERENCE_ONLY[0] += 1
    try:
        yield
    finally:
        _REFERENCE_ONLY[0] -= 1


def kernel_supports(x: Tensor) -> torch.dtype | None:
    """Dtype the compiled kernel computes ``x``'s op in, or None to use the reference (also
    inside :func:`reference_ops`)."""
    if _REFERENCE_ONLY[0]:
        return None
    supported = KERNEL_DTYPES.get(x.device.type)
    if supported is None:
        return None
    ext = load_extension()
    if ext is None or (x.device.type == "cuda" and not ext.with_cuda):
        return None
    return x.dtype if x.dtype in supported else torch.float32
