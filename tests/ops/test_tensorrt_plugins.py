"""The TensorRT plugins of ``ops/tensorrt`` against the torch CUDA ops.

On a CUDA machine with the ``tensorrt`` Python package: the plugin library is built with
``tools/build_trt_plugins.py``, a one-node ONNX graph (``bevformer::DCNv3`` or
``bevformer::MultiScaleDeformableAttention``, written with ``onnx.helper``) is turned into a
TensorRT engine with the library loaded, and its output must equal ``ops.dcnv3_core`` /
``ops.ms_deform_attn`` on the same CUDA inputs: float32 to 1e-5 (absolute), float16 to 2e-3.
Without a CUDA device these tests skip; without ``tensorrt`` (or TensorRT's headers) they fail
and say what is missing. The build script's header lookup is checked everywhere.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_dcnv3 import make_inputs as dcnv3_inputs
from test_ms_deform_attn import make_inputs as msda_inputs

from ops import dcnv3_core, ms_deform_attn

REPO = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ONNX_TYPES = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.int64: TensorProto.INT64,
    torch.int32: TensorProto.INT32,
}
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3}
DCNV3_FIELDS = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h",
                "dilation_w", "group", "group_channels", "offset_scale")  # fmt: skip


def _build_script() -> ModuleType:
    path = REPO / "tools" / "build_trt_plugins.py"
    spec = importlib.util.spec_from_file_location("build_trt_plugins", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trt(tmp_path_factory):
    """The tensorrt module, with the plugin library built and loaded into its registry."""
    try:
        import tensorrt
    except ImportError as err:
        pytest.fail(f"these tests need the tensorrt Python package on a CUDA machine ({err}); "
                    "pip install tensorrt", pytrace=False)  # fmt: skip
    script = _build_script()
    try:
        library = script.build(out=tmp_path_factory.mktemp("trt") / "libplugins.so")
    except script.BuildError as err:
        pytest.fail(f"building the plugin library failed: {err}", pytrace=False)
    assert tensorrt.get_plugin_registry().load_library(str(library)) is not None
    return tensorrt


def one_node_model(op_type: str, tensors: dict, constants: set, attrs: dict, out: torch.Tensor):
    """ONNX model with one ``bevformer::<op_type>`` node whose inputs are ``tensors`` in order:
    the names in ``constants`` as initializers, the others as graph inputs."""
    node = helper.make_node(op_type, list(tensors), ["output"], domain="bevformer", **attrs)
    inputs = [
        helper.make_tensor_value_info(name, ONNX_TYPES[t.dtype], t.shape)
        for name, t in tensors.items()
        if name not in constants
    ]
    output = helper.make_tensor_value_info("output", ONNX_TYPES[out.dtype], out.shape)
    initializers = [numpy_helper.from_array(tensors[n].cpu().numpy(), n) for n in constants]
    graph = helper.make_graph([node], op_type, inputs, [output], initializer=initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("bevformer", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def run_engine(trt, model: onnx.ModelProto, inputs: dict, like: torch.Tensor) -> torch.Tensor:
    """Build a TensorRT engine from ``model`` and run it on the CUDA tensors ``inputs``."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # strongly typed: the plugins run in the inputs' type (always so from TensorRT 11 on)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [
        str(parser.get_error(i)) for i in range(parser.num_errors)
    ]
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None, "TensorRT could not build the engine (its log is above)"
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    assert tuple(engine.get_tensor_shape("output")) == tuple(like.shape)
    context = engine.create_execution_context()
    out = torch.empty_like(like)
    for name, tensor in inputs.items():
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("output", out.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return out


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    ("dtype", "geometry"),
    [  # (kernel, stride, pad, dilation, offset_scale, remove_center)
        (torch.float32, ((3, 3), (1, 1), (1, 1), (1, 1), 1.0, False)),
        (torch.float32, ((3, 5), (2, 1), (1, 2), (1, 2), 0.5, False)),  # output-size arithmetic
        (torch.float32, ((3, 3), (2, 2), (1, 1), (1, 1), 2.0, True)),
        (torch.float16, ((3, 3), (1, 1), (1, 1), (1, 1), 1.0, False)),
    ],
)
def test_dcnv3_plugin_matches_the_torch_op(trt, dtype, geometry):
    x, offset, mask, params, rc = dcnv3_inputs(1, 8, 8, 2, 8, *geometry, dtype=torch.float32)
    x, offset, mask = (t.to("cuda", dtype) for t in (x, offset, mask))
    expected = dcnv3_core(x, offset, mask, *params, 64, rc)  # im2col_step 64
    attrs = dict(zip(DCNV3_FIELDS, params), remove_center=int(rc))
    tensors = {"input": x, "offset": offset, "mask": mask}
    model = one_node_model("DCNv3", tensors, set(), attrs, expected)
    out = run_engine(trt, model, tensors, expected)
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL[dtype])


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    ("dtype", "index_dtype"),
    [(torch.float32, torch.int64), (torch.float32, torch.int32), (torch.float16, torch.int64)],
)
def test_msda_plugin_matches_the_torch_op(trt, dtype, index_dtype):
    value, shapes, starts, loc, weights = msda_inputs(
        B=1, H=2, C=8, Q=10, P=4, shapes=((8, 8), (4, 4)), dtype=torch.float32
    )
    value, loc, weights = (t.to("cuda", dtype) for t in (value, loc, weights))
    expected = ms_deform_attn(value, shapes, starts, loc, weights)
    tensors = {
        "value": value,
        "spatial_shapes": shapes.to(index_dtype),
        "level_start_index": starts.to(index_dtype),
        "sampling_locations": loc,
        "attention_weights": weights,
    }
    constants = {"spatial_shapes", "level_start_index"}
    model = one_node_model("MultiScaleDeformableAttention", tensors, constants, {}, expected)
    inputs = {name: t for name, t in tensors.items() if name not in constants}
    out = run_engine(trt, model, inputs, expected)
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL[dtype])


def test_build_script_says_where_it_looked_for_the_headers(monkeypatch, tmp_path):
    script = _build_script()
    monkeypatch.delenv("TENSORRT_INCLUDE", raising=False)
    with pytest.raises(script.BuildError, match="missing, which has no NvInferRuntime.h"):
        script.find_tensorrt_include(str(tmp_path / "missing"))  # explicit: no fallback
    monkeypatch.setattr(script, "header_candidates", lambda explicit: [("system", tmp_path)])
    with pytest.raises(script.BuildError, match=f"not found; looked in:\n  {tmp_path}"):
        script.find_tensorrt_include()
    (tmp_path / "NvInferVersion.h").write_text(  # TensorRT 11's indirection
        "#define TRT_MAJOR_ENTERPRISE 11\n#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n"
        "#define NV_TENSORRT_MINOR 1\n#define NV_TENSORRT_PATCH 0\n"
    )
    assert script.tensorrt_version(tmp_path) == (11, 1, 0)
