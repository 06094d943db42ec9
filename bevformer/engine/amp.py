"""Mixed-precision training on the CPU: bfloat16 autocast (``tools/train.py --amp``).

mmengine's ``AmpOptimWrapper`` (``torch.amp`` autocast + ``GradScaler``) refuses a machine
without an accelerator. On a CPU with bfloat16 instructions (AVX512-BF16 or AMX, oneDNN
reports them) :class:`CPUBFloat16OptimWrapper` runs the forward pass and the losses under
``torch.autocast("cpu", dtype=torch.bfloat16)``: convolutions and matrix products in
bfloat16, everything PyTorch's CPU autocast keeps in float32 in float32 (softmax, norms,
losses), and the deformable-sampling kernels in float32 (``ops`` upcasts what its CPU kernels
do not take). bfloat16 has float32's exponent range, so no loss scaling is needed; the
parameters, their gradients and the AdamW state stay float32. Validation and testing run in
float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

__all__ = ["CPUBFloat16OptimWrapper", "cpu_supports_bfloat16"]


def cpu_supports_bfloat16() -> bool:
    """Whether oneDNN finds bfloat16 instructions on this CPU (without them bfloat16
    convolutions are emulated and slower than float32)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


@OPTIM_WRAPPERS.register_module()
class CPUBFloat16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``optim_context`` (the forward pass and the losses of
    ``train_step``) runs under CPU bfloat16 autocast; backward, gradient clipping and the
    optimizer step are those of ``OptimWrapper``, on float32 parameters and gradients."""

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast("cpu", dtype=torch.bfloat16):
            yield
