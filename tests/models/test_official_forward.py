"""Given the same weights, the project's BEVFormer v2 forward equals the official computation.

The oracle is ``official_reference.py`` (next to this file): the official test-time forward of
fundamentalvision/BEVFormer ``BEVFormerV2.simple_test`` re-derived in plain torch, reading an
official-layout state dict. A random official state dict (deterministic seed) is converted with
``bevformer.models.official.convert_official_bevformerv2`` and loaded strictly into the
project's model, built from the official-setting R50 t1-base config shrunk for speed (20 x 20
BEV, 2 encoder and 2 decoder layers, 60 queries, six 64 x 160 images); the t2 case adds the
XL t2 config's frames and ``ResNetFusion``. Cameras are the real nuScenes rig at 0.1 x scale
with the official crop (bottom 640 of 900 rows), so the spatial cross-attention sees cells hit
by one, two or no cameras; the past frame is taken from another ego pose.

Compared: the BEV the decoder reads, every decoder layer's logits (classes mapped by name from
the official alphabetical order) and box codes, and the decoded boxes, scores and labels
(official boxes have their z at the bottom: z + h / 2 is the project's centre z), within 1e-5
in float32 and 1e-10 in float64 (the reference projects the z-anchors in float64 there, where
the official code always projects in float32).

Legend: T frames, N cameras (6), Q BEV cells (20 x 20), C channels (256), Qd queries, K classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from official_reference import (  # tests/models is on sys.path
    OFFICIAL_CLASSES,
    OfficialSettings,
    official_camera_hits,
    official_forward,
    random_official_state_dict,
)

from bevformer.builder import build_model
from bevformer.engine.launch import load_config
from bevformer.models.official import convert_official_bevformerv2
from bevformer.structures.boxes import CLASSES

REPO = Path(__file__).resolve().parents[2]
R50_T1_BASE = REPO / "projects/configs/bevformerv2/bevformerv2_r50_1600x640_t1-base_24ep.py"
XL_T2 = REPO / "projects/configs/bevformerv2/bevformerv2_internimage-xl_1600x640_t2_24ep.py"

BEV = 20
ENCODER_LAYERS = 2
DECODER_LAYERS = 2
NUM_QUERY = 60  # 600 (query, class) pairs for the official top-300
SCALE = 0.1  # of the 1600 x 900 nuScenes images
IMG_HW = (64, 160)  # the official crop (0, 260, 1600, 900) keeps the bottom rows at this scale
PAST_POSE = (-4.0, 0.6, -6.0)  # x, y (m), yaw (deg) of the ego at the previous keyframe
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}

# project class k <- official class OFFICIAL_CLASSES.index(CLASSES[k])
TO_OFFICIAL = [OFFICIAL_CLASSES.index(name) for name in CLASSES]
FROM_OFFICIAL = torch.tensor([CLASSES.index(name) for name in OFFICIAL_CLASSES])


def small_config(
    temporal: bool,
    bev: int = BEV,
    encoder_layers: int = ENCODER_LAYERS,
    decoder_layers: int = DECODER_LAYERS,
    num_query: int = NUM_QUERY,
):
    """The R50 t1-base model config shrunk for CPU (t2: the XL t2 config's frames + fusion),
    and the matching reference settings; the arguments give other sizes."""
    model = load_config(str(R50_T1_BASE)).model
    if temporal:
        t2 = load_config(str(XL_T2)).model
        model.bev.frames = t2.bev.frames
        model.bev.fusion = t2.bev.fusion
    model.perspective = None  # training-only in the official detector (never run at test time)
    model.bev.encoder.update(num_layers=encoder_layers)
    model.bev.encoder.grid.update(bev_h=bev, bev_w=bev)
    model.pts_bbox_head.update(num_query=num_query, num_decoder_layers=decoder_layers)
    enc, head = model.bev.encoder, model.pts_bbox_head
    settings = OfficialSettings(
        bev_h=bev,
        bev_w=bev,
        pc_range=tuple(enc.grid.pc_range),
        frames=tuple(model.bev.frames),
        embed_dims=enc.embed_dims,
        pos_feats=enc.embed_dims // 2,
        ffn_dims=enc.ffn_dims,
        num_cams=len(enc.camera_names),
        num_levels=model.num_levels,
        num_outs=model.img_neck.num_outs,
        resnet_depth=model.img_backbone.depth,
        resnet_out_indices=tuple(model.img_backbone.out_indices),
        num_points_in_pillar=enc.num_points_in_pillar,
        encoder_layers=encoder_layers,
        num_heads=enc.num_heads,
        tsa_points=enc.self_attn_points,
        sca_points=enc.cross_attn_points,
        decoder_layers=decoder_layers,
        decoder_points=head.num_points,
        num_query=num_query,
        num_classes=head.num_classes,
        max_num=model.post_processor.max_num,
        post_center_range=tuple(model.post_processor.post_center_range),
        num_fusion=model.bev.fusion.num_layers if temporal else 3,
        inter_channels=model.bev.fusion.get("inter_channels") if temporal else None,
    )
    return model, settings


def camera_inputs(
    make_rig, pose, frames, scale: float = SCALE, img_hw: tuple[int, int] = IMG_HW
) -> tuple[torch.Tensor, torch.Tensor]:
    """lidar2img ``[1, T, N, 4, 4]`` of the cropped rig (past frames re-expressed in the current
    lidar frame) and normalised random images ``[1, T, N, 3, H, W]``."""
    rig = make_rig(scale)
    height, width = rig.img_hw
    assert width == img_hw[1]
    rig.K = rig.K.copy()
    rig.K[:, 1, 2] -= height - img_hw[0]  # crop: keep the bottom img_hw[0] rows
    current = pose(0.0, 0.0, 0.0)
    mats = [
        rig.lidar2img(current if t == 0 else pose(*PAST_POSE), current) for t in frames
    ]  # T x [N, 4, 4]
    lidar2img = torch.as_tensor(np.stack(mats))[None]
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(1, len(frames), len(mats[0]), 3, *img_hw, generator=gen)
    return img, lidar2img


def build_case(temporal: bool, make_rig, pose) -> dict:
    model_cfg, settings = small_config(temporal)
    model = build_model(model_cfg).eval()
    state = random_official_state_dict(settings, seed=0)
    converted, report = convert_official_bevformerv2(state, model)
    model.load_state_dict(converted, strict=True)
    assert report.official_keys == len(state) and not report.skipped
    assert report.dropped == ["pts_bbox_head.code_weights"]  # a config value, not a weight
    img, lidar2img = camera_inputs(make_rig, pose, settings.frames)
    return dict(model=model, state=state, settings=settings, img=img, lidar2img=lidar2img, cache={})


@pytest.fixture(scope="module")
def t1(make_rig, pose) -> dict:
    return build_case(False, make_rig, pose)


@pytest.fixture(scope="module")
def t2(make_rig, pose) -> dict:
    return build_case(True, make_rig, pose)


def run_project(model, img, lidar2img, frame_valid=None) -> tuple[dict, dict]:
    """The project's inference path: BEV + head outputs, then the head's NMS-free decoding."""
    B, T = img.shape[:2]
    dev = img.device
    batch = dict(
        frame_valid=torch.ones(B, T, dtype=torch.bool, device=dev)
        if frame_valid is None
        else frame_valid.to(dev),
        bda=torch.eye(4, dtype=img.dtype, device=dev).expand(B, 4, 4),
        flip=torch.zeros(B, dtype=torch.bool, device=dev),
    )
    with torch.no_grad():
        outputs = model(img, lidar2img, mode="tensor", **batch)
        result = model.post_processor.decode(*model.pts_bbox_head.first_group(outputs))[0]
    return outputs, result


def run_both(case: dict, dtype: torch.dtype, frame_valid=None):
    """(project outputs, project boxes, reference output) in ``dtype``, cached per case."""
    key = (dtype, None if frame_valid is None else tuple(frame_valid.flatten().tolist()))
    if key not in case["cache"]:
        model = case["model"].to(dtype)
        img, lidar2img = case["img"].to(dtype), case["lidar2img"].to(dtype)
        outputs, result = run_project(model, img, lidar2img, frame_valid)
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in case["state"].items()}
        valid = None if frame_valid is None else frame_valid[0].tolist()
        ref = official_forward(state, img, lidar2img, IMG_HW, case["settings"], valid)
        case["model"].float()
        case["cache"][key] = (outputs, result, ref)
    return case["cache"][key]


def assert_matches(outputs: dict, result: dict, ref, tol: float) -> None:
    torch.testing.assert_close(outputs["bev_embed"], ref.bev_embed, atol=tol, rtol=tol)
    torch.testing.assert_close(
        outputs["cls_scores"], ref.all_cls_scores[..., TO_OFFICIAL], atol=tol, rtol=tol
    )
    torch.testing.assert_close(outputs["bbox_preds"], ref.all_bbox_preds, atol=tol, rtol=tol)
    boxes = ref.bboxes.clone()
    boxes[:, 2] += boxes[:, 5] / 2  # official bottom z -> centre z
    assert result["boxes"].shape == boxes.shape
    torch.testing.assert_close(result["boxes"], boxes, atol=tol, rtol=tol)
    torch.testing.assert_close(result["scores"], ref.scores, atol=tol, rtol=tol)
    assert torch.equal(result["labels"], FROM_OFFICIAL.to(ref.labels.device)[ref.labels])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_t1_matches_official(t1, dtype):
    outputs, result, ref = run_both(t1, dtype)
    assert ref.bboxes.shape[0] == t1["settings"].max_num  # every centre inside the range
    assert float(ref.bev_embed.std()) > 0.5  # LayerNorm output: informative, not saturated
    assert_matches(outputs, result, ref, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_t2_fusion_matches_official(t2, dtype):
    outputs, result, ref = run_both(t2, dtype)
    past, current = ref.frame_bevs
    assert (past - current).abs().max() > 0.1  # the past frame sees a different scene
    assert_matches(outputs, result, ref, TOLERANCE[dtype])


def test_t2_missing_past_frame_matches_official(t2):
    valid = torch.tensor([[False, True]])
    outputs, result, ref = run_both(t2, torch.float32, valid)
    assert ref.frame_bevs[0] is None
    assert_matches(outputs, result, ref, TOLERANCE[torch.float32])
    full = run_both(t2, torch.float32)[0]["bev_embed"]
    assert (outputs["bev_embed"] - full).abs().max() > 1e-3


def test_geometry_is_nontrivial(t2):
    settings, lidar2img = t2["settings"], t2["lidar2img"][0]
    for t in range(lidar2img.shape[0]):
        hits = official_camera_hits(settings, lidar2img[t], IMG_HW)
        assert int((hits == 0).sum()) > 0  # cells no camera sees (the ego, the rig's gaps)
        assert int((hits == 1).sum()) > 0
        assert int((hits >= 2).sum()) > 0  # overlaps: the SCA average divides by 2
    assert not torch.equal(lidar2img[0], lidar2img[1])


def test_reference_key_list_is_the_official_layout(t1, t2):
    keys = {k: (tuple(v.shape), v.dtype) for k, v in t2["state"].items()}
    expected = {
        "img_backbone.layer2.0.conv1.weight": (128, 256, 1, 1),  # 1x1, stride 2 (caffe)
        "img_neck.fpn_convs.4.conv.weight": (256, 256, 3, 3),  # P7, on output
        "pts_bbox_head.bev_embedding.weight": (BEV * BEV, 256),
        "pts_bbox_head.positional_encoding.row_embed.weight": (BEV, 128),
        "pts_bbox_head.transformer.cams_embeds": (6, 256),
        "pts_bbox_head.transformer.encoder.layers.1.attentions.0.sampling_offsets.weight": (
            128,
            512,
        ),
        "pts_bbox_head.transformer.encoder.layers.1.attentions.1.deformable_attention"
        ".sampling_offsets.weight": (512, 256),
        "pts_bbox_head.transformer.encoder.layers.1.ffns.0.layers.0.0.weight": (512, 256),
        "pts_bbox_head.transformer.fusion.layers.0.conv1.weight": (512, 512, 3, 3),
        "pts_bbox_head.transformer.fusion.layer_norm.0.weight": (256, 512),
        "pts_bbox_head.transformer.decoder.layers.1.attentions.0.attn.in_proj_weight": (768, 256),
        "pts_bbox_head.query_embedding.weight": (NUM_QUERY, 512),
        "pts_bbox_head.cls_branches.1.6.weight": (10, 256),
        "pts_bbox_head.reg_branches.1.4.weight": (10, 256),
        "pts_bbox_head.code_weights": (10,),
    }
    for key, shape in expected.items():
        assert keys[key][0] == shape, key
    assert keys["img_backbone.bn1.num_batches_tracked"] == ((), torch.int64)
    assert not any(k.startswith("pts_bbox_head.transformer.fusion") for k in t1["state"])


# (case, official key): one tensor per stage of the forward
PERTURBED = (
    ("t1", "img_backbone.layer3.2.bn2.running_var"),
    ("t1", "img_neck.fpn_convs.3.conv.bias"),
    ("t1", "pts_bbox_head.transformer.encoder.layers.1.attentions.0.sampling_offsets.bias"),
    (
        "t1",
        "pts_bbox_head.transformer.encoder.layers.0.attentions.1.deformable_attention"
        ".attention_weights.weight",
    ),
    ("t1", "pts_bbox_head.transformer.decoder.layers.1.attentions.1.sampling_offsets.bias"),
    ("t2", "pts_bbox_head.transformer.fusion.layers.1.bn1.weight"),
)


@pytest.mark.parametrize(
    ("case", "key"), PERTURBED, ids=[k.split(".", 2)[-1][:48] for _, k in PERTURBED]
)
def test_a_changed_official_weight_is_detected(request, case, key):
    """The comparison is sensitive: one official tensor changed -> the outputs differ by far
    more than the tolerance."""
    data = request.getfixturevalue(case)
    _, _, ref = run_both(data, torch.float32)
    state = dict(data["state"])
    gen = torch.Generator().manual_seed(2)
    state[key] = state[key] * 1.5 + 0.1 * torch.randn(state[key].shape, generator=gen)
    model = data["model"]
    model.load_state_dict(convert_official_bevformerv2(state, model)[0], strict=True)
    try:
        outputs, _ = run_project(model, data["img"], data["lidar2img"])
    finally:
        model.load_state_dict(convert_official_bevformerv2(data["state"], model)[0], strict=True)
    change = max(
        float((outputs["bev_embed"] - ref.bev_embed).abs().max()),
        float((outputs["bbox_preds"] - ref.all_bbox_preds).abs().max()),
    )
    assert change > 100 * TOLERANCE[torch.float32]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_official_size_matches_on_cuda(make_rig, pose, capsys):
    """The official t2 setting at full size (six 640 x 1600 crops of 1600 x 900 images, 200 x 200
    BEV, 6 + 6 layers, 900 queries, two frames) on the GPU, with the compiled CUDA kernels:
    float64 within 1e-9, float32 (no TF32) BEV and head outputs within 1e-3."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg, settings = small_config(True, bev=200, encoder_layers=6, decoder_layers=6, num_query=900)
    model = build_model(cfg).eval()
    state = random_official_state_dict(settings, seed=0)
    model.load_state_dict(convert_official_bevformerv2(state, model)[0], strict=True)
    img, lidar2img = camera_inputs(make_rig, pose, settings.frames, 1.0, (640, 1600))
    measured = {}
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
        model.to("cuda", dtype)
        cuda_state = {
            k: (v.to(dtype) if v.is_floating_point() else v).cuda() for k, v in state.items()
        }
        x, l2i = img.to("cuda", dtype), lidar2img.to("cuda", dtype)
        outputs, result = run_project(model, x, l2i)
        with torch.device("cuda"):  # the reference creates its constants on the default device
            ref = official_forward(cuda_state, x, l2i, (640, 1600), settings)
        diffs = {
            "bev": (outputs["bev_embed"] - ref.bev_embed).abs().max(),
            "cls": (outputs["cls_scores"] - ref.all_cls_scores[..., TO_OFFICIAL]).abs().max(),
            "box": (outputs["bbox_preds"] - ref.all_bbox_preds).abs().max(),
        }
        measured[str(dtype)] = {k: float(v) for k, v in diffs.items()}
        if dtype == torch.float64:
            assert_matches(outputs, result, ref, tol)
        else:  # top-k order may flip between near-equal float32 scores: compare the raw outputs
            assert max(measured[str(dtype)].values()) < tol, measured
        del cuda_state, outputs, ref
    with capsys.disabled():
        print(f"\nofficial-size forward, max |project - official|: {measured}")
