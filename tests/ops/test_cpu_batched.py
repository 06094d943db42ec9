"""The batched CPU path (channel counts 8/16/32/64) against the pure-PyTorch references.

The CPU kernels take a vectorised path for 8, 16, 32 and 64 channels per head/group and a
per-point path otherwise (the odd channel counts of ``test_dcnv3.py`` and
``test_ms_deform_attn.py``). The vectorised path splits the work differently with two threads:
ms_deform_attn gives each (batch, group of heads) task its own slice of the value gradient;
dcnv3 gives each thread a band of input rows and defers the scatters of points whose kernel
reaches across a band boundary. These tests run it with two threads on shapes that exercise
each case: several chunks and bands, head groups, points outside the maps, corners on the
image border, many queries sampling the same pixels, and float64 agreement to 1e-10.
"""

from __future__ import annotations

import pytest
import torch

from ops import dcnv3_core, dcnv3_core_reference, ms_deform_attn, ms_deform_attn_reference
from ops.reference import dcnv3_output_size


@pytest.fixture
def two_threads():
    """Two intra-op threads for the test (the kernels' task split depends on the count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _grads(fn, inputs, grad_seed=1):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    g = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(grad_seed)
    )
    out.backward(g.to(out.dtype))  # the same numbers for every dtype
    return [out.detach()] + [t.grad for t in leaves]


def _assert_all_close(ours, ref, names, tol):
    for a, b, name in zip(ours, ref, names):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)


# ------------------------------------------------------------------------------------- dcnv3


def _dcnv3_inputs(N, H, W, G, Cg, spread, dtype=torch.float64, kernel=3, stride=1, pad=1,
                  dilation=1, scale=1.0, remove_center=False):  # fmt: skip
    Ho = dcnv3_output_size(H, kernel, stride, pad, dilation)
    Wo = dcnv3_output_size(W, kernel, stride, pad, dilation)
    K = kernel * kernel - int(remove_center)
    x = torch.randn(N, H, W, G * Cg, dtype=dtype)
    offset = torch.randn(N, Ho, Wo, G * K * 2, dtype=dtype) * spread
    mask = torch.rand(N, Ho, Wo, G, K, dtype=dtype).softmax(-1).flatten(-2)
    params = (kernel, kernel, stride, stride, pad, pad, dilation, dilation, G, Cg, scale, 64,
              remove_center)  # fmt: skip

    def kernel_fn(a, b, c):
        return dcnv3_core(a, b, c, *params)

    def reference_fn(a, b, c):
        return dcnv3_core_reference(a, b, c, *params)

    return (x, offset, mask), kernel_fn, reference_fn


DCN_NAMES = ("out", "input", "offset", "mask")


@pytest.mark.parametrize("channels", [8, 16, 32, 64])
def test_dcnv3_vector_channels_float64(ext, two_threads, channels):
    """Three images of 12x16 (576 output pixels: two chunks, the band boundary inside the second
    image), two groups, offsets that send many points across the boundary and out of the
    image."""
    inputs, fn, ref = _dcnv3_inputs(3, 12, 16, 2, channels, spread=2.5)
    _assert_all_close(_grads(fn, inputs), _grads(ref, inputs), DCN_NAMES, 1e-10)


@pytest.mark.parametrize(
    "kw",
    [
        dict(stride=2, pad=1),
        dict(dilation=2, pad=2),
        dict(scale=2.0),
        dict(remove_center=True),
        dict(kernel=5, pad=2),
    ],
    ids=["stride2", "dilation2", "offset_scale2", "remove_center", "kernel5"],
)
def test_dcnv3_vector_geometry_float64(ext, two_threads, kw):
    # three images: at least 512 output pixels (two chunks) also with stride 2
    inputs, fn, ref = _dcnv3_inputs(3, 32, 22, 3, 8, spread=1.5, **kw)
    _assert_all_close(_grads(fn, inputs), _grads(ref, inputs), DCN_NAMES, 1e-10)


def test_dcnv3_far_offsets_are_deferred_correctly(ext, two_threads):
    """Offsets of tens of pixels: most points reach into the other thread's band, so most
    scatters take the deferred route; a single image, so the bands split its rows."""
    inputs, fn, ref = _dcnv3_inputs(1, 32, 20, 1, 16, spread=12.0)
    _assert_all_close(_grads(fn, inputs), _grads(ref, inputs), DCN_NAMES, 1e-10)


def test_dcnv3_border_corners_and_zero_offsets(ext, two_threads):
    """Integer and half-integer sampling positions on and next to the border (a corner outside,
    one inside; exact corner weights of 0 and 1)."""
    inputs, fn, ref = _dcnv3_inputs(1, 20, 30, 2, 16, spread=0.0)
    x, offset, mask = inputs
    offset = torch.round(torch.randn_like(offset) * 2) / 2  # multiples of 0.5 px
    ours, theirs = fn(x, offset, mask), ref(x, offset, mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # the value gradient does not depend on the kinks of the position gradient
    _, gx_ours, *_ = _grads(fn, (x, offset, mask))
    _, gx_ref, *_ = _grads(ref, (x, offset, mask))
    torch.testing.assert_close(gx_ours, gx_ref, rtol=1e-10, atol=1e-10)


def _one_and_two_threads(fn, inputs):
    """(outputs and gradients with one thread, the same with two)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _grads(fn, inputs)
        torch.set_num_threads(2)
        two = _grads(fn, inputs)
    finally:
        torch.set_num_threads(before)
    return one, two


def test_dcnv3_one_and_two_threads_agree(ext):
    inputs, fn, _ = _dcnv3_inputs(3, 20, 18, 2, 16, spread=3.0)
    one, two = _one_and_two_threads(fn, inputs)
    _assert_all_close(two, one, DCN_NAMES, 1e-12)


@pytest.mark.parametrize("channels", [8, 16, 32, 64])
def test_dcnv3_vector_channels_float32(ext, two_threads, channels):
    inputs, fn, ref = _dcnv3_inputs(3, 12, 16, 2, channels, spread=2.0, dtype=torch.float32)
    ours = _grads(fn, inputs)
    theirs = _grads(ref, [t.double() for t in inputs])
    _assert_all_close([t.double() for t in ours], theirs, DCN_NAMES, 1e-4)
    assert all(t.dtype == torch.float32 for t in ours)


def test_dcnv3_vector_gradcheck(ext):
    inputs, fn, _ = _dcnv3_inputs(1, 5, 6, 2, 8, spread=1.5)
    leaves = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------- ms_deform_attn


def _msda_inputs(B, M, C, Q, P, shapes, spread=0.2, dtype=torch.float64, cluster=None):
    spatial = torch.tensor(shapes, dtype=torch.int64)
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    S, L = int(spatial.prod(1).sum()), len(shapes)
    value = torch.randn(B, S, M, C, dtype=dtype)
    if cluster is None:  # uniform over the maps and `spread` beyond them
        loc = torch.rand(B, Q, M, L, P, 2, dtype=dtype) * (1 + 2 * spread) - spread
    else:  # every query samples the same few pixels around `cluster`
        loc = torch.tensor(cluster, dtype=dtype) + 0.02 * torch.randn(B, Q, M, L, P, 2, dtype=dtype)
    weights = torch.rand(B, Q, M, L, P, dtype=dtype)

    def fn(v, lc, w):
        return ms_deform_attn(v, spatial, starts, lc, w)

    def ref(v, lc, w):
        return ms_deform_attn_reference(v, spatial, starts, lc, w)

    return (value, loc, weights), fn, ref


MSDA_NAMES = ("out", "value", "loc", "weights")
LEVELS = ((9, 11), (5, 6), (3, 3), (1, 2))


@pytest.mark.parametrize("channels", [8, 16, 32, 64])
@pytest.mark.parametrize("batch,heads", [(1, 8), (3, 2), (2, 3), (4, 1)])
def test_msda_vector_channels_float64(ext, two_threads, channels, batch, heads):
    """Batch/head combinations that give each (batch, heads) task all heads (4 x 1, 2 x 3),
    half of them (1 x 8 and 3 x 2 with two threads: strided slices of the value gradient)."""
    inputs, fn, ref = _msda_inputs(batch, heads, channels, 7, 3, LEVELS, spread=0.3)
    _assert_all_close(_grads(fn, inputs), _grads(ref, inputs), MSDA_NAMES, 1e-10)


def test_msda_many_queries_on_the_same_pixels(ext, two_threads):
    """300 queries x 8 heads x 4 levels x 4 points all sample around one spot: many adds into
    the same value-gradient rows, within a batch of points and across batches."""
    inputs, fn, ref = _msda_inputs(2, 8, 16, 300, 4, LEVELS, cluster=(0.4, 0.6))
    _assert_all_close(_grads(fn, inputs), _grads(ref, inputs), MSDA_NAMES, 1e-10)


def test_msda_points_outside_and_on_the_border(ext, two_threads):
    inputs, fn, ref = _msda_inputs(2, 2, 32, 40, 4, LEVELS, spread=1.0)
    value, loc, weights = inputs
    # exact pixel centres and edges of level 0 (corners with weight 0 or 1; the kernel and the
    # reference may differ in the one-sided position gradient there, not in value/weights)
    h, w = LEVELS[0]
    loc[:, :10, :, 0, :, 0] = torch.randint(-1, w + 2, (2, 10, 2, 4)).double() / w
    loc[:, :10, :, 0, :, 1] = (torch.randint(-1, h + 2, (2, 10, 2, 4)).double() + 0.5) / h
    ours, theirs = _grads(fn, (value, loc, weights)), _grads(ref, (value, loc, weights))
    for i in (0, 1, 3):  # out, value, weights
        torch.testing.assert_close(ours[i], theirs[i], rtol=1e-10, atol=1e-10, msg=MSDA_NAMES[i])
    # position gradients away from the kinks
    torch.testing.assert_close(ours[2][:, 10:], theirs[2][:, 10:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("channels", [8, 16, 32, 64])
def test_msda_vector_channels_float32(ext, two_threads, channels):
    inputs, fn, ref = _msda_inputs(2, 4, channels, 9, 4, LEVELS, dtype=torch.float32)
    ours = _grads(fn, inputs)
    theirs = _grads(ref, [t.double() for t in inputs])
    _assert_all_close([t.double() for t in ours], theirs, MSDA_NAMES, 1e-4)


def test_msda_vector_gradcheck(ext):
    inputs, fn, _ = _msda_inputs(2, 2, 8, 3, 2, ((4, 5), (2, 3)), spread=0.3)
    leaves = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)


def test_msda_one_and_two_threads_agree(ext):
    inputs, fn, _ = _msda_inputs(1, 8, 32, 50, 4, LEVELS)
    one, two = _one_and_two_threads(fn, inputs)
    _assert_all_close(two, one, MSDA_NAMES, 1e-12)
