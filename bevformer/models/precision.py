"""Geometry in float32 under mixed precision (the official code's mmcv ``force_fp32``).

Autocast runs every matrix product in the lower precision, float32 inputs included: in
bfloat16 (8 bits of mantissa) a 50 m camera ray or a lidar-frame centre is off by about 0.4 m,
a BEV cell. :func:`force_fp32` runs a function outside autocast with its float16 / bfloat16
tensor arguments cast to float32 (float64 stays float64); the model's camera projections
(the encoder's reference points included), liftings, box corners and BEV resampling go
through it, so ``--amp`` changes the features' precision, never the geometry's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["force_fp32"]

F = TypeVar("F", bound=Callable[..., Any])
_LOW = (torch.float16, torch.bfloat16)


def _float32(x: Any) -> Any:
    return x.float() if isinstance(x, Tensor) and x.dtype in _LOW else x


def force_fp32(fn: F) -> F:
    """``fn`` outside autocast (on the device of its first tensor argument), with its float16 /
    bfloat16 tensor arguments cast to float32; without autocast and in float32 a no-op."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            return fn(*map(_float32, args), **{k: _float32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
