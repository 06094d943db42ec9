"""The ms_deform_attn kernel against its pure-PyTorch reference, torch.library, bad inputs."""

from __future__ import annotations

import pytest
import torch

from ops import ms_deform_attn, ms_deform_attn_reference
from ops.checks import reference_ops


def make_inputs(B=2, H=2, C=3, Q=5, P=3, shapes=((4, 5), (2, 3), (1, 2)), dtype=torch.float64,
                spread=0.3):  # fmt: skip
    """Random inputs; locations reach ``spread`` outside [0, 1] (partly outside the map)."""
    spatial = torch.tensor(shapes, dtype=torch.int64)
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    S, L = int(spatial.prod(1).sum()), len(shapes)
    value = torch.randn(B, S, H, C, dtype=dtype)
    loc = torch.rand(B, Q, H, L, P, 2, dtype=dtype) * (1 + 2 * spread) - spread
    weights = torch.rand(B, Q, H, L, P, dtype=dtype)
    return value, spatial, starts, loc, weights


def grads(fn, value, spatial, starts, loc, weights):
    value, loc, weights = (t.clone().requires_grad_() for t in (value, loc, weights))
    out = fn(value, spatial, starts, loc, weights)
    g = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    out.backward(g)
    return out.detach(), value.grad, loc.grad, weights.grad


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(C=1, H=1, P=1, shapes=((3, 3),)),
        dict(C=7, H=3, Q=4, P=2),  # odd channels, 3 heads
        dict(B=1, C=32, H=2, Q=3, P=4, shapes=((6, 4), (3, 2))),
        dict(spread=1.0),  # many locations far outside the maps
    ],
)
def test_float64_matches_reference(ext, kw):
    inputs = make_inputs(**kw)
    ours = grads(ms_deform_attn, *inputs)
    ref = grads(ms_deform_attn_reference, *inputs)
    for a, b, name in zip(ours, ref, ("out", "value", "loc", "weights")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_float32_matches_reference(ext):
    inputs = make_inputs(C=16, H=4, Q=20, P=4, dtype=torch.float32)
    ours = grads(ms_deform_attn, *inputs)
    ref = grads(ms_deform_attn_reference, *inputs)
    for a, b, name in zip(ours, ref, ("out", "value", "loc", "weights")):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


def test_gradcheck(ext):
    value, spatial, starts, loc, weights = make_inputs(B=2, H=2, C=3, Q=3, P=2)
    args = [t.requires_grad_() for t in (value, loc, weights)]
    assert torch.autograd.gradcheck(
        lambda v, lc, w: ms_deform_attn(v, spatial, starts, lc, w), args, eps=1e-6, atol=1e-8
    )


def test_outside_locations_give_zero(ext):
    value, spatial, starts, loc, weights = make_inputs(B=1, Q=2, P=1, shapes=((3, 3),))
    loc[..., 0] = -0.5  # x half a map to the left: every corner outside
    out = ms_deform_attn(value, spatial, starts, loc, weights)
    assert out.abs().max().item() == 0.0


def test_non_contiguous_and_int32_inputs(ext):
    value, spatial, starts, loc, weights = make_inputs()
    expected = ms_deform_attn_reference(value, spatial, starts, loc, weights)
    value_nc = value.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    loc_nc = loc.transpose(0, 1).contiguous().transpose(0, 1)
    assert not value_nc.is_contiguous() and not loc_nc.is_contiguous()
    out = ms_deform_attn(value_nc, spatial.int(), starts.int(), loc_nc, weights)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_mixed_float_dtypes_are_promoted(ext):
    value, spatial, starts, loc, weights = make_inputs(dtype=torch.float32)
    out = ms_deform_attn(value, spatial, starts, loc.double(), weights)
    assert out.dtype == torch.float64
    expected = ms_deform_attn_reference(
        value.double(), spatial, starts, loc.double(), weights.double()
    )
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_bfloat16_on_cpu_is_computed_in_float32(ext):
    value, spatial, starts, loc, weights = make_inputs(dtype=torch.float32)
    out = ms_deform_attn(*(t.bfloat16() if t.is_floating_point() else t
                           for t in (value, spatial, starts, loc, weights)))  # fmt: skip
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn_reference(value, spatial, starts, loc, weights)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)


def test_kernel_and_reference_agree_in_dtype_under_cpu_bfloat16_autocast(ext):
    # tools/train.py --amp on a CPU: both paths return the inputs' dtype, although autocast
    # runs the reference's grid_sample in float32
    value, spatial, starts, loc, weights = make_inputs(C=8, Q=6, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms_deform_attn(value, spatial, starts, loc, weights)
        with reference_ops():
            ref = ms_deform_attn(value, spatial, starts, loc, weights)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.02, atol=0.02)


def test_opcheck(ext):
    value, spatial, starts, loc, weights = make_inputs(dtype=torch.float32)
    args = (value.requires_grad_(), spatial, starts, loc.requires_grad_(), weights)
    torch.library.opcheck(torch.ops.bevformer_ops.ms_deform_attn.default, args)


def test_torch_compile(ext):
    class Sampler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 3)

        def forward(self, value, spatial, starts, loc, weights):
            return self.proj(
                ms_deform_attn(value, spatial, starts, loc, weights).unflatten(-1, (2, 3))
            )

    module = Sampler().double()
    value, spatial, starts, loc, weights = make_inputs()
    expected = module(value, spatial, starts, loc, weights)
    compiled = torch.compile(module, backend="inductor", fullgraph=False)
    out = compiled(value, spatial, starts, loc.requires_grad_(), weights)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    out.sum().backward()
    assert loc.grad is not None and loc.grad.abs().sum() > 0


def grow_last(shapes):
    shapes = shapes.clone()
    shapes[-1, 0] += 1
    return shapes


@pytest.mark.parametrize(
    "mutate,error,match",
    [
        (lambda v, s, i, lc, w: (v[0], s, i, lc, w), ValueError, r"value must be \[B, S, H, C\]"),
        (lambda v, s, i, lc, w: (v, s, i, lc[..., :1], w), ValueError, "sampling_locations"),
        (lambda v, s, i, lc, w: (v, s, i, lc, w[:, :, :1]), ValueError, "attention_weights"),
        (lambda v, s, i, lc, w: (v, s[:2], i, lc, w), ValueError, "spatial_shapes must be"),
        (lambda v, s, i, lc, w: (v, grow_last(s), i, lc, w), ValueError, "cover"),
        (lambda v, s, i, lc, w: (v, s, i + 1, lc, w), ValueError, "level_start_index"),
        (lambda v, s, i, lc, w: (v, s.double(), i, lc, w), TypeError, "integer"),
        (lambda v, s, i, lc, w: (v.long(), s, i, lc, w), TypeError, "floating-point"),
        (lambda v, s, i, lc, w: (v, s, i, lc.to("meta"), w), ValueError, "device"),
    ],
)
def test_bad_inputs(ext, mutate, error, match):
    with pytest.raises(error, match=match):
        ms_deform_attn(*mutate(*make_inputs()))
