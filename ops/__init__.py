"""Deformable sampling operators: multi-scale deformable attention and the DCNv3 core.

``ms_deform_attn`` and ``dcnv3_core`` run the compiled kernels of ``ops/csrc`` (built on first
use, see ``ops.build``) and fall back to the pure-PyTorch references ``*_reference`` (with one
warning) where the extension cannot be built, or inside ``reference_ops()`` (export to
standard ONNX operators). See ``ops/README.md``.
"""

from ops.checks import reference_ops
from ops.dcnv3 import dcnv3_core
from ops.ms_deform_attn import ms_deform_attn
from ops.reference import dcnv3_core_reference, ms_deform_attn_reference

__all__ = [
    "dcnv3_core",
    "dcnv3_core_reference",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "reference_ops",
]
