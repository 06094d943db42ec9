"""Official BEVFormer v2 checkpoints convert into this project's model.

The official tensors come from ``official_layout`` (the official module tree, enumerated from
the official sources, not from this project's model); the converter must map every one of
them, reorder every class-indexed tensor and leave the model loadable with ``strict=True``.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from official_layout import (  # noqa: I001  (tests/models is on sys.path)
    OFFICIAL_CLASSES,
    mmcv_checkpoint,
    official_layout,
    random_state_dict,
)

from bevformer.builder import build_model
from bevformer.engine.launch import load_config
from bevformer.models.official import (
    convert_if_official,
    convert_official_bevformerv2,
    is_official_bevformerv2,
)
from bevformer.structures.boxes import CLASSES

REPO = Path(__file__).resolve().parents[2]
T1_BASE = "projects/configs/bevformerv2/bevformerv2_r50_1600x640_t1-base_24ep.py"
# the official t2 (frames (-1, 0), group-DETR 11) on this project's R50 config, with the fusion
# of the internimage-xl t2 config
T2_OPTIONS = {
    "model.bev.frames": (-1, 0),
    "model.bev.fusion": dict(
        _delete_=True, type="ResNetFusion", in_channels=512, out_channels=256, num_layers=3
    ),
    "model.pts_bbox_head.group_detr": 11,
}
# a small variant (20 x 20 BEV, one encoder and decoder layer, 20 queries) for forward passes
SMALL_OPTIONS = {
    "model.bev.encoder.grid.bev_h": 20,
    "model.bev.encoder.grid.bev_w": 20,
    "model.bev.encoder.num_layers": 1,
    "model.pts_bbox_head.num_decoder_layers": 1,
    "model.pts_bbox_head.num_query": 20,
}
SMALL_HEAD = dict(bev_hw=(20, 20), layers=1, num_query=20)


def build(options: dict | None = None) -> torch.nn.Module:
    return build_model(load_config(str(REPO / T1_BASE), options).model)


@pytest.fixture(scope="module")
def t1_base():
    return build()


@pytest.fixture(scope="module")
def official_t1_base():
    return random_state_dict(official_layout("r50-t1-base"))


@pytest.fixture(scope="module")
def t2():
    return build(T2_OPTIONS)


@pytest.fixture(scope="module")
def official_t2():
    return random_state_dict(official_layout("r50-t2"), seed=1)


@pytest.fixture(scope="module")
def tool():
    """``tools/convert_checkpoint.py``'s namespace (``main``, ``convert``)."""
    return runpy.run_path(str(REPO / "tools" / "convert_checkpoint.py"), run_name="convert_tool")


def test_r50_t1_base_converts_with_the_tool_and_loads_strictly(
    tmp_path, tool, t1_base, official_t1_base, capsys
):
    src, dst = tmp_path / "bevformerv2-r50-t1-base-24ep.pth", tmp_path / "out" / "converted.pth"
    torch.save(mmcv_checkpoint(official_t1_base, "r50-t1-base"), src)
    before = src.read_bytes()
    assert tool["main"]([str(REPO / T1_BASE), str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "1090 keys -> 1087 (656 renamed, 23 class-permuted, 30 reshaped, 3 dropped)" in printed
    for key in (
        "pts_bbox_head.code_weights",
        "fcos3d_bbox_head.fcos3d_head.mean_depth_per_level",
        "fcos3d_bbox_head.fcos3d_head.std_depth_per_level",
    ):
        assert f"dropped: {key}" in printed
    assert src.read_bytes() == before  # the input is untouched
    assert not (tmp_path / "out" / "converted.pth.tmp").exists()

    out = torch.load(dst, map_location="cpu", weights_only=True)
    meta = out["meta"]
    assert meta["converted_from"] == src.name and len(meta["source_sha256"]) == 64
    assert meta["classes"] == list(CLASSES) and meta["official_classes"] == list(OFFICIAL_CLASSES)
    assert meta["source_meta"]["epoch"] == 24 and meta["source_meta"]["mmcv_version"] == "1.4.0"
    assert len(out["state_dict"]) == len(t1_base.state_dict()) == 1087
    t1_base.load_state_dict(out["state_dict"], strict=True)

    # values travel unchanged where nothing is permuted or reshaped
    pairs = {
        "bev.encoder.layers.2.cross_attn.deformable_attention.sampling_offsets.weight": (
            "pts_bbox_head.transformer.encoder.layers.2.attentions.1.deformable_attention."
            "sampling_offsets.weight"
        ),
        "pts_bbox_head.decoder.layers.5.self_attn.attn.in_proj_weight": (
            "pts_bbox_head.transformer.decoder.layers.5.attentions.0.attn.in_proj_weight"
        ),
        "img_backbone.layer3.5.bn2.running_var": "img_backbone.layer3.5.bn2.running_var",
        "perspective.mono_head.box3d_tower.norms.2.4.running_mean": (
            "fcos3d_bbox_head.fcos3d_head.box3d_tower.2.norm.4.running_mean"
        ),
    }
    state = t1_base.state_dict()
    for mine, theirs in pairs.items():
        assert torch.equal(state[mine], official_t1_base[theirs]), mine
    scale = official_t1_base["fcos3d_bbox_head.fcos3d_head.scales_depth.3.scale"]
    assert state["perspective.mono_head.scales_depth.3.scale"].shape == () and scale.shape == (1,)
    assert state["perspective.mono_head.scales_depth.3.scale"] == scale[0]

    # OUT == IN is refused, and so is a file that is not an official checkpoint
    assert tool["main"]([str(REPO / T1_BASE), str(src), str(src)]) == 1
    assert "OUT must differ from IN" in capsys.readouterr().err
    assert tool["main"]([str(REPO / T1_BASE), str(dst), str(tmp_path / "again.pth")]) == 1
    assert "is not an official BEVFormer v2 checkpoint" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_r50_t2_converts_into_the_fusion_model(t2, official_t2):
    model, official = t2, official_t2
    assert len(official) == 1130
    converted, report = convert_official_bevformerv2(mmcv_checkpoint(official, "r50-t2"), model)
    model.load_state_dict(converted, strict=True)
    assert (len(report.renamed), len(report.permuted), len(report.reshaped)) == (696, 23, 30)
    assert len(report.dropped) == 3 and len(converted) == 1127
    assert torch.equal(
        converted["bev.fusion.proj.weight"],
        official["pts_bbox_head.transformer.fusion.layer_norm.0.weight"],
    )
    assert converted["pts_bbox_head.query_embedding.weight"].shape == (9900, 512)


def _class_indexed(layout) -> dict[str, int]:
    """Official class-indexed keys -> channels per class (official sources: the last Linear of
    each cls branch, FCOS2D cls_logits, FCOS3D box3d_* predictors reshaped (-1, C, K))."""
    out = {}
    for key in layout:
        if key.startswith("pts_bbox_head.cls_branches.") and ".6." in key:
            out[key] = 1
        if key.startswith("fcos3d_bbox_head.fcos2d_head.cls_logits."):
            out[key] = 1
    channels = {"quat": 4, "ctr": 2, "depth": 1, "size": 3, "conf": 1}
    for name, c in channels.items():
        for param in ("weight", "bias"):
            key = f"fcos3d_bbox_head.fcos3d_head.box3d_{name}.0.{param}"
            if key in layout:
                out[key] = c
    return out


def test_every_class_indexed_tensor_follows_the_project_class_order(t1_base, official_t1_base):
    layout = official_layout("r50-t1-base")
    marked = dict(official_t1_base)
    indexed = _class_indexed(layout)
    assert len(indexed) == 23
    K = len(OFFICIAL_CLASSES)
    for key, channels in indexed.items():
        # output channel c * K + j (official class j, component c) holds 100 * c + j
        values = torch.tensor([100.0 * c + j for c in range(channels) for j in range(K)])
        shape = layout[key][0]
        marked[key] = values.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
    converted, report = convert_official_bevformerv2(marked, t1_base)
    assert len(report.permuted) == 23
    mine = {new: old for old, new in report.renamed}
    found = 0
    for key, value in converted.items():
        old = mine.get(key, key)
        if old not in indexed:
            assert torch.equal(value.flatten(), marked[old].flatten()), key  # not permuted
            continue
        found += 1
        channels = indexed[old]
        rows = value.reshape(value.shape[0], -1)[:, 0]
        expected = [
            100.0 * c + OFFICIAL_CLASSES.index(name) for c in range(channels) for name in CLASSES
        ]
        assert rows.tolist() == expected, key
    assert found == 23
    # project class 0 is "car", official class 3
    car = converted["pts_bbox_head.cls_branches.0.6.bias"][CLASSES.index("car")]
    assert car == OFFICIAL_CLASSES.index("car") == 3
    # the checkpoint's meta["CLASSES"] gives the official order when present
    ckpt = mmcv_checkpoint(marked, "r50-t1-base")
    ckpt["meta"]["CLASSES"] = CLASSES
    same, _ = convert_official_bevformerv2(ckpt, t1_base)
    assert same["perspective.mono_head.cls_logits.bias"].tolist() == list(range(K))


# official prefix -> project prefix, each pinned by a marked tensor
PREFIXES = [
    ("img_backbone.layer2.0.downsample.0.", "img_backbone.layer2.0.downsample.0."),
    ("img_neck.fpn_convs.4.conv.", "img_neck.fpn_convs.4.conv."),
    ("pts_bbox_head.bev_embedding.", "bev.encoder.bev_embedding."),
    ("pts_bbox_head.positional_encoding.row_embed.", "bev.encoder.positional_encoding.row_embed."),
    ("pts_bbox_head.positional_encoding.col_embed.", "bev.encoder.positional_encoding.col_embed."),
    ("pts_bbox_head.transformer.level_embeds", "bev.encoder.level_embeds"),
    ("pts_bbox_head.transformer.cams_embeds", "bev.encoder.cams_embeds"),
    ("pts_bbox_head.transformer.encoder.layers.1.attentions.0.", "bev.encoder.layers.1.self_attn."),
    (
        "pts_bbox_head.transformer.encoder.layers.1.attentions.1.deformable_attention.",
        "bev.encoder.layers.1.cross_attn.deformable_attention.",
    ),
    (
        "pts_bbox_head.transformer.encoder.layers.1.attentions.1.output_proj.",
        "bev.encoder.layers.1.cross_attn.output_proj.",
    ),
    (
        "pts_bbox_head.transformer.encoder.layers.4.ffns.0.layers.0.0.",
        "bev.encoder.layers.4.ffn.0.",
    ),
    ("pts_bbox_head.transformer.encoder.layers.4.ffns.0.layers.1.", "bev.encoder.layers.4.ffn.3."),
    ("pts_bbox_head.transformer.encoder.layers.5.norms.0.", "bev.encoder.layers.5.norms.0."),
    ("pts_bbox_head.transformer.encoder.layers.5.norms.2.", "bev.encoder.layers.5.norms.2."),
    (
        "pts_bbox_head.transformer.decoder.layers.2.attentions.0.attn.",
        "pts_bbox_head.decoder.layers.2.self_attn.attn.",
    ),
    (
        "pts_bbox_head.transformer.decoder.layers.2.attentions.1.",
        "pts_bbox_head.decoder.layers.2.cross_attn.",
    ),
    (
        "pts_bbox_head.transformer.decoder.layers.3.ffns.0.layers.0.0.",
        "pts_bbox_head.decoder.layers.3.ffn.0.",
    ),
    (
        "pts_bbox_head.transformer.decoder.layers.3.ffns.0.layers.1.",
        "pts_bbox_head.decoder.layers.3.ffn.3.",
    ),
    (
        "pts_bbox_head.transformer.decoder.layers.0.norms.0.",
        "pts_bbox_head.decoder.layers.0.norm1.",
    ),
    (
        "pts_bbox_head.transformer.decoder.layers.0.norms.1.",
        "pts_bbox_head.decoder.layers.0.norm2.",
    ),
    (
        "pts_bbox_head.transformer.decoder.layers.0.norms.2.",
        "pts_bbox_head.decoder.layers.0.norm3.",
    ),
    ("pts_bbox_head.transformer.reference_points.", "pts_bbox_head.reference_points."),
    ("pts_bbox_head.query_embedding.", "pts_bbox_head.query_embedding."),
    ("pts_bbox_head.cls_branches.5.4.", "pts_bbox_head.cls_branches.5.4."),
    ("pts_bbox_head.reg_branches.5.4.", "pts_bbox_head.reg_branches.5.4."),
    (
        "fcos3d_bbox_head.fcos2d_head.cls_tower.3.weight",
        "perspective.mono_head.cls_tower.convs.3.weight",
    ),
    (
        "fcos3d_bbox_head.fcos2d_head.cls_tower.3.norm.4.",
        "perspective.mono_head.cls_tower.norms.3.4.",
    ),
    (
        "fcos3d_bbox_head.fcos2d_head.box2d_tower.0.weight",
        "perspective.mono_head.box2d_tower.convs.0.weight",
    ),
    (
        "fcos3d_bbox_head.fcos2d_head.box2d_tower.0.norm.1.",
        "perspective.mono_head.box2d_tower.norms.0.1.",
    ),
    ("fcos3d_bbox_head.fcos2d_head.box2d_reg.", "perspective.mono_head.box2d_reg."),
    ("fcos3d_bbox_head.fcos2d_head.centerness.", "perspective.mono_head.centerness."),
    ("fcos3d_bbox_head.fcos2d_head.scales_box2d_reg.2.", "perspective.mono_head.scales_box2d.2."),
    (
        "fcos3d_bbox_head.fcos3d_head.box3d_tower.1.weight",
        "perspective.mono_head.box3d_tower.convs.1.weight",
    ),
    (
        "fcos3d_bbox_head.fcos3d_head.box3d_tower.1.norm.0.",
        "perspective.mono_head.box3d_tower.norms.1.0.",
    ),
    ("fcos3d_bbox_head.fcos3d_head.scales_proj_ctr.4.", "perspective.mono_head.scales_proj_ctr.4."),
    ("fcos3d_bbox_head.fcos3d_head.scales_size.0.", "perspective.mono_head.scales_size.0."),
    ("fcos3d_bbox_head.fcos3d_head.scales_conf.1.", "perspective.mono_head.scales_conf.1."),
    ("fcos3d_bbox_head.fcos3d_head.scales_depth.2.", "perspective.mono_head.scales_depth.2."),
    ("fcos3d_bbox_head.fcos3d_head.offsets_depth.3.", "perspective.mono_head.offsets_depth.3."),
    ("fcos3d_bbox_head.attr_logits.", "perspective.mono_head.attr_logits."),
    ("fcos3d_bbox_head.speed.", "perspective.mono_head.speed."),
    # class-indexed ones (a constant survives the permutation)
    ("pts_bbox_head.cls_branches.2.6.", "pts_bbox_head.cls_branches.2.6."),
    ("fcos3d_bbox_head.fcos2d_head.cls_logits.", "perspective.mono_head.cls_logits."),
    ("fcos3d_bbox_head.fcos3d_head.box3d_quat.0.", "perspective.mono_head.box3d.quat."),
    ("fcos3d_bbox_head.fcos3d_head.box3d_ctr.0.", "perspective.mono_head.box3d.proj_ctr."),
    ("fcos3d_bbox_head.fcos3d_head.box3d_depth.0.", "perspective.mono_head.box3d.depth."),
    ("fcos3d_bbox_head.fcos3d_head.box3d_size.0.", "perspective.mono_head.box3d.size."),
    ("fcos3d_bbox_head.fcos3d_head.box3d_conf.0.", "perspective.mono_head.box3d.conf3d."),
]
FUSION_PREFIXES = [
    ("pts_bbox_head.transformer.fusion.layers.0.conv1.", "bev.fusion.layers.0.conv1."),
    ("pts_bbox_head.transformer.fusion.layers.2.bn2.", "bev.fusion.layers.2.bn2."),
    ("pts_bbox_head.transformer.fusion.layer_norm.0.", "bev.fusion.proj."),
    ("pts_bbox_head.transformer.fusion.layer_norm.1.", "bev.fusion.norm."),
]


def _check_prefixes(official, model, table) -> None:
    marked = dict(official)
    expected = {}
    for row, (prefix, _) in enumerate(table):
        keys = [k for k in official if k.startswith(prefix)]
        assert keys, prefix
        for key in keys:
            marked[key] = torch.full_like(official[key], 1000 + row)
        expected[row] = {table[row][1] + k[len(prefix) :] for k in keys}
    converted, _ = convert_official_bevformerv2(marked, model)
    holders: dict[int, set[str]] = {}
    for key, value in converted.items():
        first = float(value.flatten()[0])  # random values are never whole numbers >= 1000
        row = int(first) - 1000
        if first == int(first) and 0 <= row < len(table) and bool((value == first).all()):
            holders.setdefault(row, set()).add(key)
    for row, (prefix, new) in enumerate(table):
        assert holders.get(row) == expected[row], (prefix, new, sorted(holders.get(row, ()))[:4])


def test_every_prefix_of_the_map(t1_base, official_t1_base):
    _check_prefixes(official_t1_base, t1_base, PREFIXES)


def test_fusion_prefixes():
    _check_prefixes(
        random_state_dict(official_layout("r50-t2")), build(T2_OPTIONS), FUSION_PREFIXES
    )


def test_detection_and_pass_through(t1_base, official_t1_base):
    ckpt = mmcv_checkpoint(official_t1_base, "r50-t1-base")
    assert is_official_bevformerv2(ckpt) and is_official_bevformerv2(official_t1_base)
    ddp = {f"module.{k}": v for k, v in official_t1_base.items()}
    assert is_official_bevformerv2(ddp)
    own = t1_base.state_dict()
    assert not is_official_bevformerv2(own)
    same, description = convert_if_official(own, t1_base)
    assert same is own and description is None
    converted, description = convert_if_official(ddp, t1_base)
    assert description.startswith("official BEVFormer v2 checkpoint converted: 1090 keys")
    t1_base.load_state_dict(converted, strict=True)


def test_checkpoints_of_other_architectures_are_refused(t1_base, official_t1_base, official_t2):
    # BEVFormer v1: can-bus MLP, no perspective head
    v1 = {k: v for k, v in official_t1_base.items() if not k.startswith("fcos3d_bbox_head.")}
    v1["pts_bbox_head.transformer.can_bus_mlp.0.weight"] = torch.zeros(128, 18)
    with pytest.raises(ValueError, match=r"(?s)BEVFormer v1 checkpoint.*model tensors the "
                       r"checkpoint lacks: perspective\.mono_head\.cls_tower"):  # fmt: skip
        convert_official_bevformerv2(v1, t1_base)

    # a t2 checkpoint (fusion, 11 query groups) into the single-frame t1-base model
    with pytest.raises(ValueError, match=r"(?s)40 official keys of model\.bev\.fusion, which the "
                       r"model does not have.*bevformerv2_r50_1600x640_t2_24ep.*9900 rows and "
                       r"the model 900.*"
                       r"group_detr"):  # fmt: skip
        convert_official_bevformerv2(official_t2, t1_base)

    # strict=False: what has no place in the model is skipped, the rest left to the loader
    converted, report = convert_official_bevformerv2(official_t2, t1_base, strict=False)
    assert len(report.skipped) == 40 and report.skipped[0].startswith("pts_bbox_head.transformer.")
    assert "1090 keys" not in report.summary() and "40 skipped" in report.summary()
    assert converted["pts_bbox_head.query_embedding.weight"].shape == (9900, 512)
    assert set(converted) == set(t1_base.state_dict())

    # fewer encoder layers in the model than in the checkpoint
    shallow = build({"model.bev.encoder.num_layers": 3})
    with pytest.raises(ValueError, match=r"78 checkpoint tensors the model does not have: "
                       r"bev\.encoder\.layers\.3 \(26\), bev\.encoder\.layers\.4 \(26\), "
                       r"bev\.encoder\.layers\.5 \(26\)"):  # fmt: skip
        convert_official_bevformerv2(official_t1_base, shallow)

    # another backbone kind
    backbone = t1_base.img_backbone
    t1_base.img_backbone = torch.nn.Conv2d(3, 8, 3)
    try:
        with pytest.raises(TypeError, match="model.img_backbone is a Conv2d.*ResNetBackbone"):
            convert_official_bevformerv2(official_t1_base, t1_base)
    finally:
        t1_base.img_backbone = backbone

    # another class list
    with pytest.raises(ValueError, match="not a permutation of the model's"):
        convert_official_bevformerv2(
            official_t1_base, t1_base, official_classes=[*OFFICIAL_CLASSES[:-1], "van"]
        )


def test_converted_model_predicts_deterministically(make_rig):
    model = build(SMALL_OPTIONS).eval()
    official = random_state_dict(official_layout("r50-t1-base", **SMALL_HEAD), seed=3)
    converted, report = convert_official_bevformerv2(official, model)
    model.load_state_dict(converted, strict=True)
    again, _ = convert_official_bevformerv2(official, model)
    assert all(torch.equal(again[k], v) for k, v in converted.items())
    assert len(report.renamed) == 656 - 5 * 26 - 5 * 22  # 5 fewer encoder / decoder layers

    rig = make_rig(0.08)  # 72 x 128 images
    lidar2img = torch.from_numpy(rig.lidar2img()).float()[None, None]  # [1, 1, N, 4, 4]
    img = torch.randn(1, 1, 6, 3, *rig.img_hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = model(img, lidar2img, mode="tensor")
        second = model(img, lidar2img, mode="tensor")
    for key in ("cls_scores", "bbox_preds", "bev_embed"):
        assert torch.isfinite(first[key]).all(), key
        assert torch.equal(first[key], second[key]), key
    assert first["cls_scores"].shape == (1, 1, 20, 10)


@pytest.mark.parametrize("name", ["r50-t1-base", "r50-t1", "r50-t2", "r50-t8"])
def test_each_official_r50_checkpoint_loads_into_its_project_config(name):
    """The project ships one config per official R50 checkpoint; each loads strictly."""
    config = f"projects/configs/bevformerv2/bevformerv2_r50_1600x640_{name[4:]}_24ep.py"
    model = build_model(load_config(str(REPO / config)).model)
    official = random_state_dict(official_layout(name), seed=3)
    converted, report = convert_official_bevformerv2(official, model)
    model.load_state_dict(converted, strict=True)
    assert len(converted) == len(model.state_dict()) == len(official) - 3, report.summary()


def test_official_file_loads_directly_where_tools_test_and_load_from_read_it(
    tmp_path, official_t1_base, caplog
):
    """``tools/test.py CONFIG OFFICIAL.pth`` (strict) and ``load_from`` convert in memory."""
    from bevformer.checkpoint import load_model_weights, load_weights

    path = tmp_path / "bevformerv2-r50-t1-base-24ep.pth"
    torch.save(mmcv_checkpoint(official_t1_base, "r50-t1-base"), path)
    model = build()
    report = load_model_weights(model, str(path))  # what tools/test.py calls
    assert report.complete and len(report.loaded) == 1087
    name = "pts_bbox_head.transformer.encoder.layers.0.attentions.0.value_proj.weight"
    assert torch.equal(model.state_dict()["bev.encoder.layers.0.self_attn.value_proj.weight"],
                       official_t1_base[name])  # fmt: skip
    again = build()
    report = load_weights(again, str(path), strict=False)  # what load_from calls
    assert report.complete and "official" in report.format
