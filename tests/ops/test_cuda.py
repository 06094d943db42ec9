"""The CUDA kernels against the pure-PyTorch references (skipped without a CUDA device).

Each case runs forward and backward on the GPU and compares output and every input gradient
with the reference computed in float64 on the CPU: float64 to rounding, float32 to 1e-4,
float16 and bfloat16 to their precision (the kernels accumulate in float32)."""

from __future__ import annotations

import pytest
import torch
from test_dcnv3 import CASES as DCNV3_CASES
from test_dcnv3 import make_inputs as dcnv3_inputs
from test_ms_deform_attn import make_inputs as msda_inputs

from ops import dcnv3_core, dcnv3_core_reference, ms_deform_attn, ms_deform_attn_reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# dtype -> (rtol, atol) against the float64 reference
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


@pytest.fixture(scope="module")
def cuda_ext(ext):
    if not ext.with_cuda:
        pytest.skip("the extension was built without CUDA sources")
    return ext


def _run(fn, tensors, rest, device, dtype, seed=1):
    """Forward + backward of ``fn(*tensors, *rest)`` with the tensors cast to ``dtype`` on
    ``device``; returns the output and the tensors' gradients, in float64 on the CPU."""
    leaves = [t.detach().to(device, dtype).requires_grad_() for t in tensors]
    out = fn(*leaves, *rest)
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    grad = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    out.backward(grad.to(device, dtype))
    return [t.detach().double().cpu() for t in (out, *(leaf.grad for leaf in leaves))]


def _compare(ours, ref, dtype, names):
    rtol, atol = TOLERANCE[dtype]
    for a, b, name in zip(ours, ref, names):
        # relative to each tensor's scale: half-precision rounding grows with the magnitude
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=f"{name} ({dtype})")


def _msda(value, loc, weights, spatial, starts, device, dtype, fn):
    return _run(
        lambda v, lc, w: fn(v, spatial.to(device), starts.to(device), lc, w),
        (value, loc, weights),
        (),
        device,
        dtype,
    )


MSDA_SHAPES = [
    dict(),
    dict(C=7, H=3, Q=4, P=2),  # odd channels, 3 heads
    dict(spread=1.0),  # many locations far outside the maps
    # BEVFormer-like: 4 levels, 8 heads x 32 channels, 4 points, some thousand queries
    dict(B=1, C=32, H=8, Q=2500, P=4, shapes=((32, 88), (16, 44), (8, 22), (4, 11))),
]


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("kw", MSDA_SHAPES, ids=["small", "odd", "outside", "bevformer"])
def test_ms_deform_attn_cuda_matches_reference(cuda_ext, kw, dtype):
    if dtype == torch.float64 and kw.get("Q", 0) > 1000:
        pytest.skip("the reference in float64 is enough on the small cases")
    value, spatial, starts, loc, weights = msda_inputs(**kw)
    ours = _msda(value, loc, weights, spatial, starts, "cuda", dtype, ms_deform_attn)
    ref = _msda(
        value, loc, weights, spatial, starts, "cpu", torch.float64, ms_deform_attn_reference
    )
    _compare(ours, ref, dtype, ("out", "value", "loc", "weights"))


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("case", list(DCNV3_CASES) + ["internimage_stage1"])
def test_dcnv3_cuda_matches_reference(cuda_ext, case, dtype):
    if case == "internimage_stage1":  # InternImage-T stage 1 at 1/4 of 320x128: 4 groups x 16
        args = (2, 32, 80, 4, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False)
    else:
        args = DCNV3_CASES[case]
    x, offset, mask, params, rc = dcnv3_inputs(*args)
    ours = _run(dcnv3_core, (x, offset, mask), (*params, 64, rc), "cuda", dtype)
    ref = _run(dcnv3_core_reference, (x, offset, mask), (*params, 64, rc), "cpu", torch.float64)
    _compare(ours, ref, dtype, ("out", "input", "offset", "mask"))


def test_gradcheck_on_cuda(cuda_ext):
    value, spatial, starts, loc, weights = msda_inputs(B=2, H=2, C=3, Q=3, P=2)
    spatial, starts = spatial.cuda(), starts.cuda()
    args = [t.cuda().requires_grad_() for t in (value, loc, weights)]
    assert torch.autograd.gradcheck(
        lambda v, lc, w: ms_deform_attn(v, spatial, starts, lc, w), args, eps=1e-6, atol=1e-8
    )
    x, offset, mask, params, rc = dcnv3_inputs(*DCNV3_CASES["stride2"])
    args = [t.cuda().requires_grad_() for t in (x, offset, mask)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: dcnv3_core(a, b, c, *params, 64, rc), args, eps=1e-6, atol=1e-8
    )


def test_cpu_and_cuda_kernels_agree_in_float32(cuda_ext):
    """The two compiled kernels on the same float32 inputs (a larger DCNv3 layer)."""
    x, offset, mask, params, rc = dcnv3_inputs(
        1, 24, 40, 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False, torch.float32
    )
    cpu = _run(dcnv3_core, (x, offset, mask), (*params, 64, rc), "cpu", torch.float32)
    gpu = _run(dcnv3_core, (x, offset, mask), (*params, 64, rc), "cuda", torch.float32)
    _compare(gpu, cpu, torch.float32, ("out", "input", "offset", "mask"))
