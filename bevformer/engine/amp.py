"""Mixed-precision training on the CPU: bfloat16 autocast (``tools/train.py --amp``).

mmengine's ``AmpOptimWrapper`` (``torch.amp`` autocast + ``GradScaler``) refuses a machine
without an accelerator. On a CPU with bfloat16 instructions (AVX512-BF16 or AMX)
:class:`CPUBFloat16OptimWrapper` runs the forward pass and the losses under
``torch.autocast("cpu", dtype=torch.bfloat16)``, which computes convolutions, matrix products,
softmax and the norms in bfloat16. Kept in float32: the deformable-sampling kernels (``ops``
upcasts what its CPU kernels do not take), the geometry (camera projections, liftings, box
corners, BEV resampling: ``bevformer.models.precision.force_fp32``), the parameters, their
gradients and the AdamW state. bfloat16 has float32's exponent range, so no loss scaling is
needed. Validation and testing run in float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

__all__ = ["CPUBFloat16OptimWrapper", "cpu_bfloat16_autocast", "cpu_supports_bfloat16"]


def cpu_supports_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16, as PyTorch's
    ``torch.cpu.get_capabilities()`` reports them); without them oneDNN emulates bfloat16,
    slower than float32."""
    get = getattr(torch.cpu, "get_capabilities", None)
    capabilities = get() if get is not None else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def cpu_bfloat16_autocast() -> torch.autocast:
    """The autocast of ``--amp`` on a CPU (the wrapper's and ``tools/benchmark.py``'s)."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


@OPTIM_WRAPPERS.register_module()
class CPUBFloat16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``optim_context`` (the forward pass and the losses of
    ``train_step``) runs under CPU bfloat16 autocast; backward, gradient clipping and the
    optimizer step are those of ``OptimWrapper``, on float32 parameters and gradients."""

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model), cpu_bfloat16_autocast():
            yield
