"""InternImage: kernel vs reference core, presets, checkpointing, frozen stages, shapes."""

import os

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from backbones import INTERNIMAGE_CONFIGS, InternImage, build_internimage

TINY = dict(
    channels=16,
    depths=(1, 1, 2, 1),
    groups=(1, 2, 4, 8),
    layer_scale=1.0,
    offset_scale=2.0,
    post_norm=True,
    drop_path_rate=0.0,
)


def randomise(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Random values everywhere (zero-initialised offsets would hide sampling errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


@pytest.mark.parametrize(
    "options",
    [
        dict(),  # XL-like: post-norm, layer scale, offset_scale 2
        dict(post_norm=False, layer_scale=None, offset_scale=1.0),  # T-like
        dict(  # H-like options
            post_norm=False,
            layer_scale=None,
            res_post_norm=True,
            dw_kernel_size=5,
            center_feature_scale=True,
            level2_post_norm=True,
            level2_post_norm_block_ids=(0, 1),
            remove_center=True,
        ),
    ],
)
def test_kernel_core_matches_reference(options):
    cfg = {**TINY, **options}
    kernel = InternImage(core_op="DCNv3", **cfg).double().eval()
    randomise(kernel)
    reference = InternImage(core_op="DCNv3_pytorch", **cfg).double().eval()
    reference.load_state_dict(kernel.state_dict())
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = kernel(x), reference(x)
    assert [t.shape for t in a] == [(2, 16, 16, 12), (2, 32, 8, 6), (2, 64, 4, 3), (2, 128, 2, 2)]
    for ya, yb in zip(a, b):
        assert ya.abs().max() > 0.1
        torch.testing.assert_close(ya, yb, atol=1e-8, rtol=0)


# Parameter counts of the classification models (1k head; H with its attention-pooling head),
# exact, and the official table (M params): T 30, S 50, B 97, L 223, XL 335, H 1080.
EXACT = {
    "t": 29_918_424,
    "s": 50_079_880,
    "b": 97_461_832,
    "l": 223_334_810,
    "xl": 334_819_780,
    "h": 1_089_636_760,
}
TABLE = {"t": 30e6, "s": 50e6, "b": 97e6, "l": 223e6, "xl": 335e6, "h": 1.08e9}


@pytest.mark.parametrize("variant", list(INTERNIMAGE_CONFIGS))
def test_preset_parameter_counts(variant):
    with torch.device("meta"):
        model = build_internimage(variant, num_classes=1000)
    n = sum(p.numel() for p in model.parameters())
    assert n == EXACT[variant]
    assert abs(n - TABLE[variant]) / TABLE[variant] < 0.01


def test_t_count_by_hand():
    # Per block with C channels and G = C/16 groups: dw conv 10C, its LN 2C, offset
    # (C+1)*18G, mask (C+1)*9G, two projections 2(C^2+C), two LNs 4C, MLP 8C^2+5C.
    def block(c):
        g = c // 16
        return (
            10 * c
            + 2 * c
            + (c + 1) * 18 * g
            + (c + 1) * 9 * g
            + 2 * (c * c + c)
            + 4 * c
            + (8 * c * c + 5 * c)
        )

    stem = (3 * 9 * 32 + 32) + 64 + (32 * 9 * 64 + 64) + 128
    levels = sum(d * block(c) + 2 * c for d, c in zip((4, 4, 18, 4), (64, 128, 256, 512)))
    downs = sum(9 * c * 2 * c + 4 * c for c in (64, 128, 256))
    head = 512 * 768 + 2 * 768 + 768 * 1000 + 1000
    assert stem + levels + downs + head == EXACT["t"]


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    cfg = {**TINY, "drop_path_rate": 0.3}  # drop-path masks must match too
    plain = InternImage(core_op="DCNv3_pytorch", with_cp=False, **cfg).double().train()
    randomise(plain, std=0.2)
    ckpt = InternImage(core_op="DCNv3_pytorch", with_cp=True, **cfg).double().train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(123)
        outs = model(x)
        sum((o * (i + 1)).sum() for i, o in enumerate(outs)).backward()
        results.append((outs, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], atol=1e-10, rtol=1e-10, msg=k)
    assert grads_a["levels.0.blocks.0.dcn.offset.weight"].abs().max() > 0


# DDP notes that the depthwise-conv weight grads have channels-last strides; for a
# [C, 1, k, k] weight that is the same memory layout, so the warning is harmless here.
@pytest.mark.filterwarnings("ignore:Grad strides do not match")
def test_with_cp_under_ddp(tmp_path):
    """Non-reentrant checkpointing works inside DistributedDataParallel (1-process gloo)."""
    dist.init_process_group(
        "gloo", init_method=f"file://{os.fspath(tmp_path / 'store')}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        model = InternImage(core_op="DCNv3_pytorch", with_cp=True, **TINY)
        reference = InternImage(core_op="DCNv3_pytorch", with_cp=False, **TINY)
        reference.load_state_dict(model.state_dict())
        ddp = DistributedDataParallel(model)
        x = torch.randn(1, 3, 32, 32)
        sum(o.sum() for o in ddp(x)).backward()
        sum(o.sum() for o in reference(x)).backward()
        for (k, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=k)
    finally:
        dist.destroy_process_group()


def test_out_indices_channels_strides_and_frozen_stages():
    model = InternImage(core_op="DCNv3_pytorch", out_indices=(1, 2, 3), frozen_stages=1, **TINY)
    assert model.out_channels == (32, 64, 128)
    assert model.strides == (8, 16, 32)
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("patch_embed.", "levels.0.")) for n in frozen)
    assert len(frozen) == len(list(model.patch_embed.parameters())) + len(
        list(model.levels[0].parameters())
    )
    model.train()
    assert not model.levels[0].training and model.levels[1].training


def test_classify_and_bad_arguments():
    model = InternImage(core_op="DCNv3_pytorch", num_classes=7, **TINY).eval()
    assert model.classify(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(RuntimeError, match="num_classes"):
        InternImage(core_op="DCNv3_pytorch", **TINY).classify(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="core_op"):
        InternImage(core_op="DCNv4", **TINY)
    with pytest.raises(ValueError, match="out_indices"):
        InternImage(out_indices=(4,), **TINY)


@pytest.mark.parametrize("mode", ["pre", "post", "res_post"])
def test_block_residual_formula(mode):
    """Norm placement and layer scale of one block, written out with its own sub-modules."""
    from backbones.internimage import InternImageLayer

    options = {
        "pre": dict(layer_scale=0.5),
        "post": dict(layer_scale=0.5, post_norm=True),
        "res_post": dict(layer_scale=None, res_post_norm=True),
    }[mode]
    block = InternImageLayer(16, 2, core_op="DCNv3_pytorch", **options).double().eval()
    randomise(block, seed=3)
    x = torch.randn(2, 5, 6, 16, dtype=torch.float64)
    b = block
    with torch.no_grad():
        if mode == "pre":
            y = x + b.gamma1 * b.dcn(b.norm1(x))
            y = y + b.gamma2 * b.mlp(b.norm2(y))
        elif mode == "post":
            y = x + b.gamma1 * b.norm1(b.dcn(x))
            y = y + b.gamma2 * b.norm2(b.mlp(y))
        else:
            y = x + b.res_post_norm1(b.dcn(b.norm1(x)))
            y = y + b.res_post_norm2(b.mlp(b.norm2(y)))
        torch.testing.assert_close(block(x), y, atol=1e-12, rtol=0)
        # The branches really differ (the test would notice a swapped norm placement).
        assert (block(x) - x).abs().max() > 1e-3
