"""The ``custom`` operator form of the ONNX export: one node per deformable operator.

In this form each call of the compiled operators (``bevformer_ops::dcnv3``,
``bevformer_ops::ms_deform_attn``, ``ops/``) becomes one node of the ONNX domain
:data:`DOMAIN` (version :data:`DOMAIN_VERSION`), for runtimes with plugins (the TensorRT plugins
of ``ops/tensorrt`` implement both with the kernels of ``ops/csrc``):

``bevformer::DCNv3`` (InternImage ``ops_dcnv3``, semantics of :func:`ops.dcnv3_core`)::

    input   float [N, H_in, W_in, G*Cg]       NHWC
    offset  float [N, H_out, W_out, G*K*2]    ((g*K) + p)*2 + {0: x, 1: y}
    mask    float [N, H_out, W_out, G*K]      softmax-normalised over the K points
    -> output float [N, H_out, W_out, G*Cg]
    attributes: kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    group, group_channels, remove_center (ints), offset_scale (float);
    K = kernel_h * kernel_w (- 1 with remove_center)

``bevformer::MultiScaleDeformableAttention`` (Deformable DETR, semantics of
:func:`ops.ms_deform_attn`)::

    value               float [B, S, M, C]     S = sum of h_l * w_l
    spatial_shapes      int64 [L, 2]           (h_l, w_l)
    level_start_index   int64 [L]
    sampling_locations  float [B, Q, M, L, P, 2]   (x, y) in [0, 1]
    attention_weights   float [B, Q, M, L, P]
    -> output float [B, Q, M*C]

:func:`register_schemas` makes both known to ``onnx`` (checker and shape inference: the output
shapes above); :data:`REFERENCE_OPS` runs them in ``onnx.reference.ReferenceEvaluator`` with
this project's kernels (a plugin stand-in for checking a file without TensorRT), ONNX
``GridSample`` with PyTorch's and ``GatherElements`` with ``np.take_along_axis`` (the
reference implementations of those two accept only the opset-20 mode names, and at most 32
entries along the gathered axis with numpy 1.x).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
import torch
from onnx import defs, helper
from onnx.reference.op_run import OpRun
from torch.onnx.symbolic_helper import parse_args

import ops

__all__ = [
    "DCNV3_ATTRIBUTES",
    "DOMAIN",
    "DOMAIN_VERSION",
    "REFERENCE_OPS",
    "custom_symbolics",
    "register_schemas",
]

DOMAIN = "bevformer"
DOMAIN_VERSION = 1
DCNV3 = "DCNv3"
MSDA = "MultiScaleDeformableAttention"
# the integer attributes of DCNv3 in the order of the operator's arguments, then offset_scale
# and remove_center (ops.dcnv3_core)
DCNV3_ATTRIBUTES = (
    "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h",
    "dilation_w", "group", "group_channels",
)  # fmt: skip

# ------------------------------------------------------------------ PyTorch -> ONNX nodes


@parse_args("v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "i", "i", "f", "b")
def _dcnv3_symbolic(
    g, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
    dilation_w, group, group_channels, offset_scale, remove_center,
):  # fmt: skip
    """``bevformer_ops::dcnv3`` -> one ``bevformer::DCNv3`` node (the operator's integer
    arguments become the attributes :data:`DCNV3_ATTRIBUTES`, then offset_scale and
    remove_center)."""
    ints = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            group, group_channels)  # fmt: skip
    attributes = {f"{n}_i": int(v) for n, v in zip(DCNV3_ATTRIBUTES, ints, strict=True)}
    out = g.op(
        f"{DOMAIN}::{DCNV3}",
        input,
        offset,
        mask,
        offset_scale_f=float(offset_scale),
        remove_center_i=int(bool(remove_center)),
        **attributes,
    )
    sizes = offset.type().varyingSizes()  # [N, H_out, W_out, G*K*2]
    if sizes is not None and len(sizes) == 4:
        width = attributes["group_i"] * attributes["group_channels_i"]
        out.setType(input.type().with_sizes([*sizes[:3], width]))
    return out


def _msda_symbolic(g, value, spatial_shapes, level_start_index, locations, weights):
    """``bevformer_ops::ms_deform_attn`` -> one ``bevformer::MultiScaleDeformableAttention``
    node (no attributes: the level layout is in its inputs)."""
    out = g.op(f"{DOMAIN}::{MSDA}", value, spatial_shapes, level_start_index, locations, weights)
    v, loc = value.type().varyingSizes(), locations.type().varyingSizes()
    if v is not None and loc is not None and None not in (v[2], v[3]):
        out.setType(value.type().with_sizes([v[0], loc[1], v[2] * v[3]]))
    return out


_SYMBOLICS = (
    ("bevformer_ops::dcnv3", _dcnv3_symbolic),
    ("bevformer_ops::ms_deform_attn", _msda_symbolic),
)


@contextmanager
def custom_symbolics(opset: int) -> Iterator[None]:
    """Inside the block ``torch.onnx.export`` (TorchScript exporter) writes the compiled
    operators as :data:`DOMAIN` nodes (module docstring) instead of failing on them."""
    for name, fn in _SYMBOLICS:
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name, _ in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


# ------------------------------------------------------------------ ONNX schemas


def _dims(ctx, index: int) -> list | None:
    """The dims of input ``index``, None when its rank is not known."""
    tensor = ctx.get_input_type(index).tensor_type
    return list(tensor.shape.dim) if tensor.HasField("shape") else None


def _set_output(ctx, elem_type: int, dims: list | None) -> None:
    if dims is None:  # rank unknown: the element type only
        ctx.set_output_type(0, helper.make_tensor_type_proto(elem_type, None))
        return
    shape = []
    for d in dims:
        if d is None or isinstance(d, int):
            shape.append(d)
        elif d.HasField("dim_value"):
            shape.append(d.dim_value)
        else:
            shape.append(d.dim_param or None)
    ctx.set_output_type(0, helper.make_tensor_type_proto(elem_type, shape))


def _attribute(ctx, name: str) -> int:
    attr = ctx.get_attribute(name)
    if attr is None:
        raise onnx.shape_inference.InferenceError(f"{DOMAIN}::{DCNV3} needs attribute {name}")
    return int(attr.i)


def _dcnv3_shape(ctx) -> None:
    offset = _dims(ctx, 1)
    elem = ctx.get_input_type(0).tensor_type.elem_type
    if offset is None:
        return _set_output(ctx, elem, None)
    if len(offset) != 4:
        raise onnx.shape_inference.InferenceError(
            f"{DOMAIN}::{DCNV3}: offset must be [N, H_out, W_out, G*K*2], got rank {len(offset)}"
        )
    width = _attribute(ctx, "group") * _attribute(ctx, "group_channels")
    _set_output(ctx, elem, [*offset[:3], width])


def _msda_shape(ctx) -> None:
    value, locations = _dims(ctx, 0), _dims(ctx, 3)
    elem = ctx.get_input_type(0).tensor_type.elem_type
    if value is None or locations is None:
        return _set_output(ctx, elem, None)
    if len(value) != 4 or len(locations) != 6:
        raise onnx.shape_inference.InferenceError(
            f"{DOMAIN}::{MSDA}: value must be [B, S, M, C] and sampling_locations [B, Q, M, L, "
            f"P, 2], got ranks {len(value)} and {len(locations)}"
        )
    heads, channels = value[2], value[3]
    width = None  # M*C, unknown unless both are
    if heads.HasField("dim_value") and channels.HasField("dim_value"):
        width = heads.dim_value * channels.dim_value
    _set_output(ctx, elem, [value[0], locations[1], width])


def _float_params(*names: str) -> list:
    return [defs.OpSchema.FormalParameter(n, "T") for n in names]


def _schemas() -> list[defs.OpSchema]:
    floats = [("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float data")]
    ints = defs.OpSchema.AttrType.INT
    attributes = [defs.OpSchema.Attribute(name, ints, name) for name in DCNV3_ATTRIBUTES]
    attributes += [
        defs.OpSchema.Attribute("offset_scale", defs.OpSchema.AttrType.FLOAT, "offset scale"),
        defs.OpSchema.Attribute("remove_center", ints, "1: no centre sampling point"),
    ]
    dcnv3 = defs.OpSchema(
        DCNV3,
        DOMAIN,
        DOMAIN_VERSION,
        "DCNv3 core (InternImage ops_dcnv3); see bevformer/deploy/custom_ops.py",
        inputs=_float_params("input", "offset", "mask"),
        outputs=_float_params("output"),
        type_constraints=floats,
        attributes=attributes,
    )
    dcnv3.set_type_and_shape_inference_function(_dcnv3_shape)
    index = ("I", ["tensor(int64)"], "level shapes and starts")
    msda = defs.OpSchema(
        MSDA,
        DOMAIN,
        DOMAIN_VERSION,
        "Multi-scale deformable attention core (Deformable DETR); see "
        "bevformer/deploy/custom_ops.py",
        inputs=[
            defs.OpSchema.FormalParameter("value", "T"),
            defs.OpSchema.FormalParameter("spatial_shapes", "I"),
            defs.OpSchema.FormalParameter("level_start_index", "I"),
            defs.OpSchema.FormalParameter("sampling_locations", "T"),
            defs.OpSchema.FormalParameter("attention_weights", "T"),
        ],
        outputs=_float_params("output"),
        type_constraints=[*floats, index],
    )
    msda.set_type_and_shape_inference_function(_msda_shape)
    return [dcnv3, msda]


def register_schemas() -> None:
    """Registers the two :data:`DOMAIN` operators with ``onnx`` (once per process), so that
    ``onnx.checker.check_model(..., full_check=True)`` and ``onnx.shape_inference`` know their
    inputs, attributes and output shapes."""
    for schema in _schemas():
        if not defs.has(schema.name, schema.since_version, schema.domain):
            defs.register_schema(schema)


# ------------------------------------------------------------------ reference runtime


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array))  # a writable copy of the runtime's array


class _DCNv3(OpRun):
    op_domain = DOMAIN

    def _run(self, input, offset, mask, **attributes):  # noqa: A002
        args = [int(getattr(self, name)) for name in DCNV3_ATTRIBUTES]
        with torch.no_grad():
            out = ops.dcnv3_core(
                *(_tensor(a) for a in (input, offset, mask)),
                *args,
                float(self.offset_scale),
                remove_center=bool(self.remove_center),
            )
        return (out.numpy(),)


class _MSDA(OpRun):
    op_domain = DOMAIN

    def _run(self, value, spatial_shapes, level_start_index, locations, weights):
        tensors = (value, spatial_shapes, level_start_index, locations, weights)
        with torch.no_grad():
            out = ops.ms_deform_attn(*(_tensor(a) for a in tensors))
        return (out.numpy(),)


class _GridSample(OpRun):
    """ONNX ``GridSample`` (opset 16+) by ``torch.nn.functional.grid_sample``: onnx.reference's
    own accepts only the opset-20 mode names and loops in Python."""

    op_domain = ""
    _MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest",
              "bicubic": "bicubic", "cubic": "bicubic"}  # fmt: skip

    def _run(self, x, grid, align_corners=None, mode=None, padding_mode=None):
        mode = self._MODES[(mode or "bilinear")]
        with torch.no_grad():
            out = torch.nn.functional.grid_sample(
                _tensor(x),
                _tensor(grid),
                mode=mode,
                padding_mode=padding_mode or "zeros",
                align_corners=bool(align_corners),
            )
        return (out.numpy(),)


class _GatherElements(OpRun):
    """ONNX ``GatherElements`` by ``np.take_along_axis``: onnx.reference's own uses
    ``np.choose``, which numpy 1.x limits to 32 entries along the axis (the decoder gathers
    over its 900 queries)."""

    op_domain = ""

    def _run(self, data, indices, axis=None):
        axis = int(axis or 0)
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices, axis=axis),)


_DCNv3.__name__ = DCNV3
_MSDA.__name__ = MSDA
_GridSample.__name__ = "GridSample"
_GatherElements.__name__ = "GatherElements"

# ``onnx.reference.ReferenceEvaluator(model, new_ops=REFERENCE_OPS)`` runs the custom form
# (with PyTorch's GridSample and numpy's take_along_axis for two standard operators)
REFERENCE_OPS = (_DCNv3, _MSDA, _GridSample, _GatherElements)
