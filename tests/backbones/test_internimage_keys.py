"""InternImage-T parameter names and shapes against the official checkpoint layout.

The table below is written down from the official source (OpenGVLab/InternImage
``classification/models/intern_image.py`` and ``ops_dcnv3/modules/dcnv3.py``): the permute
modules inside ``build_norm_layer`` shift the norm to index 1 in ``patch_embed.norm1/2``,
``dcn.dw_conv.1`` and ``downsample.norm``; block norms sit at index 0. InternImage-T: channels
64, depths (4, 4, 18, 4), groups (4, 8, 16, 32), no layer scale, pre-norm (so every level has
its ``norm``), K = 9 kernel points.
"""

import torch

from backbones import internimage_t, load_internimage_checkpoint

STEM = {
    "patch_embed.conv1.weight": (32, 3, 3, 3),
    "patch_embed.conv1.bias": (32,),
    "patch_embed.norm1.1.weight": (32,),
    "patch_embed.norm1.1.bias": (32,),
    "patch_embed.conv2.weight": (64, 32, 3, 3),
    "patch_embed.conv2.bias": (64,),
    "patch_embed.norm2.1.weight": (64,),
    "patch_embed.norm2.1.bias": (64,),
}
# levels.0.blocks.0: C = 64, G = 4, offset G*K*2 = 72, mask G*K = 36, MLP 4C = 256.
BLOCK = {
    "norm1.0.weight": (64,),
    "norm1.0.bias": (64,),
    "dcn.dw_conv.0.weight": (64, 1, 3, 3),
    "dcn.dw_conv.0.bias": (64,),
    "dcn.dw_conv.1.1.weight": (64,),
    "dcn.dw_conv.1.1.bias": (64,),
    "dcn.offset.weight": (72, 64),
    "dcn.offset.bias": (72,),
    "dcn.mask.weight": (36, 64),
    "dcn.mask.bias": (36,),
    "dcn.input_proj.weight": (64, 64),
    "dcn.input_proj.bias": (64,),
    "dcn.output_proj.weight": (64, 64),
    "dcn.output_proj.bias": (64,),
    "norm2.0.weight": (64,),
    "norm2.0.bias": (64,),
    "mlp.fc1.weight": (256, 64),
    "mlp.fc1.bias": (256,),
    "mlp.fc2.weight": (64, 256),
    "mlp.fc2.bias": (64,),
}
LEVEL0_TAIL = {
    "levels.0.norm.0.weight": (64,),
    "levels.0.norm.0.bias": (64,),
    "levels.0.downsample.conv.weight": (128, 64, 3, 3),
    "levels.0.downsample.norm.1.weight": (128,),
    "levels.0.downsample.norm.1.bias": (128,),
}
# 20 keys per block, + 2 for the level norm, + 3 for the downsample (not after the last level).
KEYS_PER_LEVEL = {0: 4 * 20 + 5, 1: 4 * 20 + 5, 2: 18 * 20 + 5, 3: 4 * 20 + 2}
CLS_HEAD = {
    "conv_head.0.weight": (768, 512, 1, 1),  # cls_scale 1.5 * 512
    "conv_head.1.0.weight": (768,),
    "conv_head.1.0.bias": (768,),
    "conv_head.1.0.running_mean": (768,),
    "conv_head.1.0.running_var": (768,),
    "conv_head.1.0.num_batches_tracked": (),
    "head.weight": (1000, 768),
    "head.bias": (1000,),
}


def official_t_layout() -> dict[str, tuple[int, ...]]:
    """Every key of the official InternImage-T classification checkpoint, from the tables."""
    layout = dict(STEM)
    for level, depth in enumerate((4, 4, 18, 4)):
        c, g = 64 * 2**level, 4 * 2**level
        scale = {64: c, 256: 4 * c, 72: 18 * g, 36: 9 * g}  # sizes of level 0 -> level i
        for b in range(depth):
            for name, shape in BLOCK.items():
                shape = tuple(scale.get(s, s) if s != 1 else 1 for s in shape)
                layout[f"levels.{level}.blocks.{b}.{name}"] = shape
        layout[f"levels.{level}.norm.0.weight"] = (c,)
        layout[f"levels.{level}.norm.0.bias"] = (c,)
        if level < 3:
            layout[f"levels.{level}.downsample.conv.weight"] = (2 * c, c, 3, 3)
            layout[f"levels.{level}.downsample.norm.1.weight"] = (2 * c,)
            layout[f"levels.{level}.downsample.norm.1.bias"] = (2 * c,)
    layout.update(CLS_HEAD)
    return layout


def test_table_is_consistent():
    layout = official_t_layout()
    for name, shape in BLOCK.items():
        assert layout[f"levels.0.blocks.0.{name}"] == shape
    assert layout["levels.2.blocks.17.dcn.offset.weight"] == (288, 256)  # G=16: 16*9*2
    assert layout["levels.3.blocks.3.mlp.fc1.weight"] == (2048, 512)
    for level, n in KEYS_PER_LEVEL.items():
        assert sum(k.startswith(f"levels.{level}.") for k in layout) == n
    assert len(layout) == 8 + 85 + 85 + 365 + 82 + 8


def test_model_keys_match_official_layout():
    model = internimage_t(num_classes=1000)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_t_layout()
    for key, shape in {**STEM, **LEVEL0_TAIL}.items():
        assert got[key] == shape
    for level, n in KEYS_PER_LEVEL.items():
        assert sum(k.startswith(f"levels.{level}.") for k in got) == n


def test_official_layout_loads_strictly_into_backbone():
    gen = torch.Generator().manual_seed(0)
    sd = {
        k: torch.randn(shape, generator=gen) if shape else torch.tensor(0)
        for k, shape in official_t_layout().items()
    }
    model = internimage_t()  # detection backbone: no classification head
    report = load_internimage_checkpoint(model, {"model": sd, "epoch": 300})
    assert sorted(report["dropped"]) == sorted(CLS_HEAD)
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []
    own = model.state_dict()
    assert len(own) == len(sd) - len(CLS_HEAD) == 625
    for k, v in own.items():
        assert torch.equal(v, sd[k]), k
