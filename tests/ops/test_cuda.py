"""The CUDA kernels against the pure-PyTorch references (skipped without a CUDA device).

Each case runs forward and backward on the GPU and compares output and every input gradient
with the reference computed in float64 on the CPU from the same inputs (rounded to the tested
dtype first, so that only the kernel's own arithmetic is compared): float64 to rounding,
float32 to 1e-4, float16 and bfloat16 to their precision (the kernels accumulate in float32).

Bilinear sampling has a kink wherever a sampling position lies on an integer pixel
coordinate, which rounded inputs hit often (bfloat16 has 8 mantissa bits): there the gradient
with respect to the position may be either one-sided derivative. Position gradients are
therefore compared with the reference at the inputs, and with the reference at the positions
nudged by -delta and +delta (the two one-sided derivatives); each element must match one."""

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


def _run(fn, tensors, rest, device, dtype, grad_rounding):
    """Forward + backward of ``fn(*tensors, *rest)`` with the tensors cast to ``dtype`` on
    ``device`` and an output gradient rounded to ``grad_rounding``; returns the output and the
    tensors' gradients, in float64 on the CPU."""
    leaves = [t.detach().to(device, dtype).requires_grad_() for t in tensors]
    out = fn(*leaves, *rest)
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    generator = torch.Generator().manual_seed(1)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(grad_rounding)
    out.backward(grad.to(device, dtype))
    return [t.detach().double().cpu() for t in (out, *(leaf.grad for leaf in leaves))]


def _check(fn, reference, tensors, rest, dtype, position, delta, names):
    """``fn`` on CUDA in ``dtype`` against ``reference`` in float64 on the CPU; ``tensors[
    position]`` holds the sampling positions (offsets), nudged by ``delta`` for the one-sided
    derivatives (module docstring)."""
    rounded = [t.to(dtype).double() for t in tensors]
    ours = _run(fn, rounded, rest, "cuda", dtype, dtype)
    refs = [_run(reference, rounded, rest, "cpu", torch.float64, dtype)]
    for sign in (-1.0, 1.0):
        nudged = list(rounded)
        nudged[position] = rounded[position] + sign * delta
        refs.append(_run(reference, nudged, rest, "cpu", torch.float64, dtype))
    rtol, atol = TOLERANCE[dtype]
    for k, (a, name) in enumerate(zip(ours, names)):
        candidates = [r[k] for r in refs] if k == position + 1 else [refs[0][k]]
        # relative to each tensor's scale: half-precision rounding grows with the magnitude
        tol = atol * max(1.0, float(candidates[0].abs().max()))
        ok = torch.zeros_like(a, dtype=torch.bool)
        for b in candidates:
            ok |= (a - b).abs() <= tol + rtol * b.abs()
        bad = (~ok).nonzero()
        assert len(bad) == 0, (
            f"{name} ({dtype}): {len(bad)} of {a.numel()} elements differ, first at "
            f"{tuple(bad[0].tolist())}: kernel {a[tuple(bad[0])]:.6g}, reference "
            f"{[round(float(b[tuple(bad[0])]), 6) for b in candidates]}"
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
    _check(
        lambda v, lc, w: ms_deform_attn(v, spatial.cuda(), starts.cuda(), lc, w),
        lambda v, lc, w: ms_deform_attn_reference(v, spatial, starts, lc, w),
        (value, loc, weights),
        (),
        dtype,
        position=1,
        delta=2e-6,  # normalised units: 2e-6 x map width, at most 2e-4 pixels here
        names=("out", "value", "loc", "weights"),
    )


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("case", list(DCNV3_CASES) + ["internimage_stage1"])
def test_dcnv3_cuda_matches_reference(cuda_ext, case, dtype):
    if case == "internimage_stage1":  # InternImage-T stage 1 at 1/4 of 320x128: 4 groups x 16
        args = (2, 32, 80, 4, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False)
    else:
        args = DCNV3_CASES[case]
    x, offset, mask, params, rc = dcnv3_inputs(*args)
    rest = (*params, 64, rc)
    _check(dcnv3_core, dcnv3_core_reference, (x, offset, mask), rest, dtype, position=1,
           delta=1e-4, names=("out", "input", "offset", "mask"))  # fmt: skip


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
    rest = (*params, 64, rc)
    cpu = _run(dcnv3_core, (x, offset, mask), rest, "cpu", torch.float32, torch.float32)
    gpu = _run(dcnv3_core, (x, offset, mask), rest, "cuda", torch.float32, torch.float32)
    for a, b, name in zip(gpu, cpu, ("out", "input", "offset", "mask")):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
