"""The dcnv3_core kernel against its pure-PyTorch reference, torch.library, bad inputs."""

from __future__ import annotations

import pytest
import torch

from ops import dcnv3_core, dcnv3_core_reference
from ops.checks import reference_ops
from ops.reference import dcnv3_output_size

# (N, H, W, G, Cg, kernel, stride, pad, dilation, offset_scale, remove_center)
CASES = {
    "basic": (2, 5, 6, 2, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False),
    "one_group_odd_channels": (1, 4, 5, 1, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False),
    "many_groups": (1, 4, 4, 8, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False),
    "stride2": (2, 7, 6, 2, 3, (3, 3), (2, 2), (1, 1), (1, 1), 1.0, False),
    "dilation2": (1, 6, 7, 2, 2, (3, 3), (1, 1), (2, 2), (2, 2), 1.0, False),
    "offset_scale2": (1, 5, 5, 3, 2, (3, 3), (1, 1), (1, 1), (1, 1), 2.0, False),
    "remove_center": (2, 5, 4, 2, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, True),
    "rect_kernel_uneven_pad": (1, 5, 6, 2, 2, (3, 5), (1, 2), (1, 2), (1, 1), 0.5, False),
    "batch3": (3, 4, 4, 2, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False),
}


def make_inputs(N, H, W, G, Cg, kernel, stride, pad, dilation, scale, rc, dtype=torch.float64):
    kh, kw = kernel
    Ho = dcnv3_output_size(H, kh, stride[0], pad[0], dilation[0])
    Wo = dcnv3_output_size(W, kw, stride[1], pad[1], dilation[1])
    K = kh * kw - int(rc)
    x = torch.randn(N, H, W, G * Cg, dtype=dtype)
    offset = torch.randn(N, Ho, Wo, G * K * 2, dtype=dtype) * 1.5  # some points leave the image
    mask = torch.rand(N, Ho, Wo, G, K, dtype=dtype).softmax(-1).flatten(-2)
    params = (kh, kw, *stride, *pad, *dilation, G, Cg, scale)
    return x, offset, mask, params, rc


def grads(fn, x, offset, mask, params, rc, im2col_step=64):
    x, offset, mask = (t.clone().requires_grad_() for t in (x, offset, mask))
    out = fn(x, offset, mask, *params, im2col_step, rc)
    g = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    out.backward(g)
    return out.detach(), x.grad, offset.grad, mask.grad


@pytest.mark.parametrize("case", list(CASES))
def test_float64_matches_reference(ext, case):
    inputs = make_inputs(*CASES[case])
    ours = grads(dcnv3_core, *inputs, im2col_step=2)  # batch 3 is not a multiple of 2
    ref = grads(dcnv3_core_reference, *inputs)
    for a, b, name in zip(ours, ref, ("out", "input", "offset", "mask")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_float32_matches_reference(ext):
    inputs = make_inputs(2, 8, 9, 4, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False, torch.float32)
    ours = grads(dcnv3_core, *inputs)
    ref = grads(dcnv3_core_reference, *inputs)
    for a, b, name in zip(ours, ref, ("out", "input", "offset", "mask")):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("case", ["basic", "stride2", "remove_center", "offset_scale2"])
def test_gradcheck(ext, case):
    x, offset, mask, params, rc = make_inputs(*CASES[case])
    args = [t.requires_grad_() for t in (x, offset, mask)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: dcnv3_core(a, b, c, *params, 64, rc), args, eps=1e-6, atol=1e-8
    )


def test_kernel_and_reference_agree_in_dtype_under_cpu_bfloat16_autocast(ext):
    # tools/train.py --amp on a CPU: both paths return the inputs' dtype, although autocast
    # runs the reference's grid_sample in float32
    x, offset, mask, params, rc = make_inputs(*CASES["basic"], dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dcnv3_core(x, offset, mask, *params, 64, rc)
        with reference_ops():
            ref = dcnv3_core(x, offset, mask, *params, 64, rc)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.02, atol=0.02)


def test_zero_offsets_centre_tap_is_identity(ext):
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    offset = torch.zeros(1, 4, 5, 2 * 9 * 2, dtype=torch.float64)
    mask = torch.zeros(1, 4, 5, 2 * 9, dtype=torch.float64)
    mask[..., 4] = mask[..., 9 + 4] = 1.0  # centre tap p = 4 of both groups
    out = dcnv3_core(x, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 2, 3, 1.0, 64)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-14)


def test_non_contiguous_inputs(ext):
    x, offset, mask, params, rc = make_inputs(*CASES["basic"])
    expected = dcnv3_core_reference(x, offset, mask, *params)
    x_nc = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # NHWC view of NCHW memory
    assert not x_nc.is_contiguous()
    mask_nc = torch.cat([mask, mask], -1)[..., : mask.shape[-1]]  # a strided slice
    assert not mask_nc.is_contiguous()
    out = dcnv3_core(x_nc, offset, mask_nc, *params)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_opcheck(ext):
    x, offset, mask, params, rc = make_inputs(*CASES["stride2"], dtype=torch.float32)
    args = (x.requires_grad_(), offset.requires_grad_(), mask.requires_grad_(), *params, rc)
    torch.library.opcheck(torch.ops.bevformer_ops.dcnv3.default, args)


def test_torch_compile(ext):
    class Block(torch.nn.Module):
        """A minimal DCNv3 layer: offsets and softmax mask from a linear layer."""

        def __init__(self, channels=6, group=2):
            super().__init__()
            self.group = group
            self.offset = torch.nn.Linear(channels, group * 9 * 2)
            self.mask = torch.nn.Linear(channels, group * 9)

        def forward(self, x):
            N, H, W, C = x.shape
            mask = self.mask(x).view(N, H, W, self.group, 9).softmax(-1).flatten(-2)
            G = self.group
            return dcnv3_core(x, self.offset(x), mask, 3, 3, 1, 1, 1, 1, 1, 1, G, C // G, 1.0)

    block = Block().double()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    expected = block(x)
    compiled = torch.compile(block, backend="inductor")
    out = compiled(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    out.sum().backward()
    assert block.offset.weight.grad.abs().sum() > 0


def test_bad_inputs(ext):
    x, offset, mask, params, rc = make_inputs(*CASES["basic"])
    x8, offset8, mask8, params8, _ = make_inputs(*CASES["batch3"])  # C = 8, W = 4
    with pytest.raises(ValueError, match="looks like NCHW"):
        dcnv3_core(x8.permute(0, 3, 1, 2), offset8, mask8, *params8)
    with pytest.raises(ValueError, match="offset must be"):
        dcnv3_core(x, offset[..., :-2], mask, *params)
    with pytest.raises(ValueError, match="mask must be"):
        dcnv3_core(x, offset, mask[:, :-1], *params)
    with pytest.raises(ValueError, match="mask must be"):
        # With the centre removed K = 8, so a K = 9 mask is rejected.
        dcnv3_core(x, offset[..., :-4], mask, *params, 64, True)
    with pytest.raises(TypeError, match="floating-point"):
        dcnv3_core(x, offset, mask.long(), *params)
    with pytest.raises(ValueError, match="device"):
        dcnv3_core(x, offset.to("meta"), mask, *params)
    with pytest.raises(ValueError, match="square odd kernel"):
        dcnv3_core(x, offset, mask, 2, 2, *params[2:], 64, True)
    with pytest.raises(ValueError, match="positive integer"):
        dcnv3_core(x, offset, mask, 3, 3, 0, 1, *params[4:])
    with pytest.raises(ValueError, match="4-D"):
        dcnv3_core(x[0], offset, mask, *params)
