"""LayerDecayOptimWrapperConstructor: learning rates and weight decay per parameter."""

import pytest
from mmengine.optim import build_optim_wrapper
from torch import nn

import backbones  # noqa: F401  (registers the constructor)
from backbones import FPN, InternImage
from backbones.layer_decay import get_layer_id

DEPTHS = (1, 1, 2, 1)  # 5 blocks -> num_layers = 5, N = 7 layer ids (0..6)


class TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.img_backbone = InternImage(
            core_op="DCNv3_pytorch",
            channels=16,
            depths=DEPTHS,
            groups=(1, 2, 4, 8),
            layer_scale=1.0,
            out_indices=(1, 2, 3),
        )
        self.img_neck = FPN([32, 64, 128], 8, num_outs=3)
        self.head = nn.Linear(8, 10)
        self.sampling_offsets = nn.Linear(8, 16)  # as in a deformable-attention head


def build(paramwise_cfg, lr=1e-3, weight_decay=0.05):
    model = TinyDetector()
    cfg = dict(
        optimizer=dict(type="AdamW", lr=lr, weight_decay=weight_decay),
        constructor="LayerDecayOptimWrapperConstructor",
        paramwise_cfg=paramwise_cfg,
    )
    wrapper = build_optim_wrapper(model, cfg)
    settings = {}
    for group in wrapper.optimizer.param_groups:
        for name in group["param_names"]:
            settings[name] = (group["lr"], group["weight_decay"])
    assert len(settings) == sum(1 for _ in model.parameters())
    return settings


def test_layer_ids_follow_the_official_table():
    # XL: depths (5, 5, 24, 5), num_layers 39 -> N = 41.
    d, n = (5, 5, 24, 5), 41
    assert get_layer_id("img_backbone.patch_embed.conv1.weight", n, d) == 0
    assert get_layer_id("img_backbone.levels.0.blocks.0.dcn.offset.weight", n, d) == 1
    assert get_layer_id("img_backbone.levels.1.blocks.4.mlp.fc1.weight", n, d) == 10
    assert get_layer_id("img_backbone.levels.0.downsample.conv.weight", n, d) == 6
    assert get_layer_id("img_backbone.levels.2.downsample.norm.1.weight", n, d) == 35
    assert get_layer_id("img_backbone.levels.3.norm.0.weight", n, d) == 35
    assert get_layer_id("img_backbone.levels.3.blocks.4.gamma1", n, d) == 39
    assert get_layer_id("pts_bbox_head.transformer.level_embeds", n, d) == 40
    assert get_layer_id("img_neck.fpn_convs.0.conv.weight", n, d) == 40


def test_learning_rates_and_weight_decay():
    rate, base = 0.9, 1e-3
    s = build(dict(num_layers=5, layer_decay_rate=rate, offset_lr_scale=0.01))
    # lr = base * rate ** (N - 1 - layer_id) with N = 7.
    stage0 = s["img_backbone.levels.0.blocks.0.mlp.fc1.weight"]
    stage3 = s["img_backbone.levels.3.blocks.0.mlp.fc1.weight"]
    head = s["head.weight"]
    assert stage0 == pytest.approx((base * rate**5, 0.05))  # layer id 1
    assert stage3 == pytest.approx((base * rate**1, 0.05))  # layer id 1 + 1 + 1 + 2 = 5
    assert head == pytest.approx((base, 0.05))
    assert s["img_backbone.patch_embed.conv1.weight"] == pytest.approx((base * rate**6, 0.05))
    assert s["img_backbone.levels.2.blocks.1.dcn.offset.weight"][0] == pytest.approx(
        base * rate**2  # layer id 4; backbone DCNv3 offsets keep the layer lr, as officially
    )
    assert s["img_backbone.levels.0.downsample.conv.weight"][0] == pytest.approx(base * rate**4)
    # No weight decay for biases, norms, layer scales (1-D).
    assert s["img_backbone.levels.0.blocks.0.mlp.fc1.bias"] == pytest.approx((base * rate**5, 0))
    assert s["img_backbone.levels.1.blocks.0.norm1.0.weight"][1] == 0
    assert s["img_backbone.levels.1.blocks.0.gamma1"][1] == 0
    # Official offset rule: names with 'sampling_offsets' get offset_lr_scale and no decay.
    assert s["sampling_offsets.weight"] == pytest.approx((base * 0.01, 0))
    assert s["img_neck.lateral_convs.0.conv.weight"] == pytest.approx((base, 0.05))


def test_custom_keys_and_offset_keys():
    s = build(
        dict(
            num_layers=5,
            layer_decay_rate=0.5,
            offset_lr_scale=0.1,
            offset_keys=(".dcn.offset.", ".dcn.mask."),
            custom_keys={"img_neck": dict(lr_mult=0.5, decay_mult=0.0)},
        ),
        lr=2e-4,
    )
    assert s["img_neck.fpn_convs.1.conv.weight"] == pytest.approx((1e-4, 0.0))
    assert s["img_backbone.levels.3.blocks.0.dcn.mask.weight"][0] == pytest.approx(2e-4 * 0.5 * 0.1)
    assert s["img_backbone.levels.3.blocks.0.dcn.input_proj.weight"][0] == pytest.approx(1e-4)
    assert s["sampling_offsets.weight"][0] == pytest.approx(2e-4)


def test_frozen_params_are_left_out_and_errors():
    model = TinyDetector()
    for p in model.img_backbone.patch_embed.parameters():
        p.requires_grad = False
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
            constructor="LayerDecayOptimWrapperConstructor",
            paramwise_cfg=dict(num_layers=5, layer_decay_rate=0.9),
        ),
    )
    names = [n for g in wrapper.optimizer.param_groups for n in g["param_names"]]
    assert not any("patch_embed" in n for n in names)
    assert len(names) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(KeyError, match="layer_decay_rate"):
        build_optim_wrapper(
            TinyDetector(),
            dict(
                optimizer=dict(type="AdamW", lr=1e-3),
                constructor="LayerDecayOptimWrapperConstructor",
                paramwise_cfg=dict(num_layers=5),
            ),
        )
