"""The perspective head inside the detector: ``_mono`` losses, flips, hybrid-query training.

Batches are random images on the real nuScenes rig with GT boxes in front of the front cameras
and per-camera mono targets made by projecting those boxes (the dataset's ``mono`` layout:
key -> list of N per-camera tensors). The tiny configs run 1-2 steps on 128 x 320 images.

Legend: B batch, T frames, N cameras (6), M boxes, k hybrid queries, G groups.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

from bevformer.builder import build_model
from bevformer.data.transforms import CropResizeFlipImage
from bevformer.models.bev import TemporalBEV
from bevformer.models.coder import NMSFreeCoder
from bevformer.models.criterion import SetCriterion3D
from bevformer.models.detector import BEVFormerV2
from bevformer.models.encoder import BEVEncoder
from bevformer.models.head import BEVFormerHead
from bevformer.models.perspective import PerspectiveHead, targets_from_batch
from bevformer.models.perspective.coder import box3d_corners
from bevformer.models.perspective.stage import PerspectiveStage
from bevformer.structures.frames import cam2lidar as cam2lidar_of
from bevformer.structures.grid import BEVGrid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "projects", "configs", "bevformerv2")

# GT boxes (lidar frame: x right, y forward, z up): box vector x y z w l h yaw vx vy
GT_BOXES = torch.tensor(
    [
        [1.0, 12.0, -0.8, 1.9, 4.5, 1.6, 0.3, 1.0, 0.0],
        [-3.0, 9.0, -0.9, 0.7, 0.7, 1.8, -1.0, 0.0, 0.0],
        [4.0, 20.0, -0.5, 2.5, 10.0, 3.0, 1.2, 0.0, 0.0],
        [8.0, 8.0, -1.0, 0.5, 0.5, 1.0, 0.0, 0.0, 0.0],
        [-6.0, 15.0, -0.8, 1.9, 4.5, 1.6, 2.0, 0.0, 0.0],
    ]
)
GT_LABELS = torch.tensor([0, 8, 1, 9, 0])


def load(name: str) -> Config:
    return Config.fromfile(os.path.join(CONFIG_DIR, name))


def rig_geometry(rig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lidar2img [N, 4, 4], intrinsics [N, 3, 3], cam2lidar [N, 4, 4] of the rig (float32)."""
    eye = np.eye(4)[None]
    c2l = cam2lidar_of(rig.cam2ego, eye, eye, rig.lidar2ego[None])
    as32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return as32(rig.lidar2img()), as32(rig.K), as32(c2l)


def mono_targets(
    boxes: torch.Tensor, labels: torch.Tensor, intrinsics, cam2lidar, img_hw
) -> dict[str, list[torch.Tensor]]:
    """Per-camera mono targets of lidar boxes (M, 9): centre in front, projected centre inside
    the image; rotation = the box yaw about the camera's y axis (any consistent quaternion
    serves the loss)."""
    H, W = img_hw
    out: dict[str, list[torch.Tensor]] = {}
    for n in range(intrinsics.shape[0]):
        lidar2cam = torch.linalg.inv(cam2lidar[n])
        center = boxes[:, :3] @ lidar2cam[:3, :3].T + lidar2cam[:3, 3]  # (M, 3)
        proj = center @ intrinsics[n].T
        uv = proj[:, :2] / proj[:, 2:].clamp(min=1e-3)
        keep = (center[:, 2] > 1.0) & (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0)
        keep &= uv[:, 1] < H
        c, s, yaw = center[keep], boxes[keep, 3:6], boxes[keep, 6]
        quat = torch.stack(
            [torch.cos(yaw / 2), torch.zeros_like(yaw), torch.sin(yaw / 2), torch.zeros_like(yaw)],
            1,
        )
        corners = box3d_corners(quat, c, s) @ intrinsics[n].T  # (m, 8, 3)
        pix = corners[..., :2] / corners[..., 2:].clamp(min=1e-3)
        box2d = torch.cat([pix.min(1).values, pix.max(1).values], 1)
        box2d[:, 0::2] = box2d[:, 0::2].clamp(0, W)
        box2d[:, 1::2] = box2d[:, 1::2].clamp(0, H)
        per_cam = {
            "boxes2d": box2d,
            "labels": labels[keep],
            "centers2d": uv[keep],
            "depths": c[:, 2],
            "sizes_wlh": s,
            "rotations_cam": quat,
            "attr_labels": torch.full((len(c),), 3, dtype=torch.long),
            "speeds": torch.full((len(c),), 1.0),
        }
        for key, value in per_cam.items():
            out.setdefault(key, []).append(value)
    return out


def make_batch(rig, batch: int, img_hw: tuple[int, int], seed: int = 0) -> dict:
    """A full training batch (docs/CONVENTIONS.md) with T = 1."""
    g = torch.Generator().manual_seed(seed)
    l2i, K, c2l = rig_geometry(rig)
    mono = mono_targets(GT_BOXES, GT_LABELS, K, c2l, img_hw)
    return {
        "img": torch.randn(batch, 1, 6, 3, *img_hw, generator=g),
        "lidar2img": l2i.expand(batch, 1, 6, 4, 4).clone(),
        "intrinsics": K.expand(batch, 1, 6, 3, 3).clone(),
        "cam2lidar": c2l.expand(batch, 1, 6, 4, 4).clone(),
        "frame_valid": torch.ones(batch, 1, dtype=torch.bool),
        "bda": torch.eye(4).repeat(batch, 1, 1),
        "flip": torch.zeros(batch, dtype=torch.bool),
        "gt_boxes": [GT_BOXES.clone() for _ in range(batch)],
        "gt_labels": [GT_LABELS.clone() for _ in range(batch)],
        "mono": [mono for _ in range(batch)],
        "img_shape": img_hw,
    }


@pytest.fixture(scope="module")
def tiny_rig(make_rig):
    return make_rig(0.2)  # 320 x 180, used cropped to 320 x 128


def test_targets_cover_several_cameras(tiny_rig):
    _, K, c2l = rig_geometry(tiny_rig)
    mono = mono_targets(GT_BOXES, GT_LABELS, K, c2l, (128, 320))
    counts = [len(v) for v in mono["labels"]]
    assert sum(counts) >= 4 and counts[0] >= 2  # CAM_FRONT sees the boxes ahead


# ----------------------------------------------------------------------- tiny configs train
def _train(
    cfg_name: str, rig, steps: int = 2, mono_grad_check: bool = False, **head_overrides
) -> tuple[nn.Module, list]:
    """A few AdamW steps of a tiny config on random batches; returns the model and the loss
    values of every step. With ``mono_grad_check`` the first step also asserts that the
    ``_mono`` losses alone reach the backbone."""
    cfg = load(cfg_name)
    cfg.model.pts_bbox_head.update(head_overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    history = []
    for step in range(steps):
        losses = model(**make_batch(rig, 1, (128, 320), seed=step), mode="loss")
        mono = sum(v for k, v in losses.items() if k.endswith("_mono"))
        rest = sum(v for k, v in losses.items() if not k.endswith("_mono"))
        opt.zero_grad()
        if mono_grad_check and step == 0:
            mono.backward(retain_graph=True)
            grad = model.img_backbone.patch_embed.conv1.weight.grad
            assert grad is not None and float(grad.abs().sum()) > 0
            rest.backward()
        else:
            (mono + rest).backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return model, history


def test_tiny_config_without_perspective_head_trains(tiny_rig):
    model, history = _train("bevformerv2_tiny_320x128_t1_12ep.py", tiny_rig)
    assert model.perspective is None
    assert not any(k.endswith("_mono") for k in history[-1])
    assert all(math.isfinite(v) for h in history for v in h.values())


def test_tiny_mono_config_logs_mono_losses(tiny_rig):
    model, history = _train(
        "bevformerv2_tiny_320x128_t1-mono_12ep.py", tiny_rig, mono_grad_check=True
    )
    assert isinstance(model.perspective.mono_head, PerspectiveHead)
    names = set(history[-1])
    expected = {
        "loss_cls_mono",
        "loss_box2d_mono",
        "loss_centerness_mono",
        "loss_conf3d_mono",
        "loss_attr_mono",
        "loss_speed_mono",
    }
    assert expected <= names
    assert not any(k.endswith("_mono_mono") for k in names)
    assert {"loss_cls", "loss_bbox"} <= names  # the BEV head's losses are still there
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert history[-1]["loss_box2d_mono"] > 0  # the targets give positives


# ----------------------------------------------------------- a small detector for exact checks
class PointwiseBackbone(nn.Module):
    """1x1 conv: commutes with a horizontal flip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.conv(x)]


class PoolingNeck(nn.Module):
    """Average pools of strides 8..128: flip-equivariant when W is a multiple of 128."""

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [nn.functional.avg_pool2d(feats[0], s) for s in (8, 16, 32, 64, 128)]


def small_detector(mono_loss_weight: float = 1.0, mono_cameras: str = "all") -> BEVFormerV2:
    """``mono_cameras="all"`` by default: the tests here compare with the head run on every
    camera."""
    torch.manual_seed(0)
    C = 16
    return BEVFormerV2(
        img_backbone=PointwiseBackbone(C),
        img_neck=PoolingNeck(),
        bev=TemporalBEV(
            BEVEncoder(embed_dims=C, num_layers=1, grid=BEVGrid(8, 8), num_heads=2, ffn_dims=32)
        ),
        pts_bbox_head=BEVFormerHead(
            embed_dims=C,
            num_query=6,
            num_decoder_layers=1,
            num_heads=2,
            ffn_dims=32,
            dropout=0.0,
        ),
        criterion=SetCriterion3D(),
        post_processor=NMSFreeCoder(10),
        perspective=PerspectiveStage(
            PerspectiveHead(in_channels=C, num_convs=1),
            cameras=mono_cameras,
            loss_weight=mono_loss_weight,
        ),
        use_grid_mask=False,
    )


@pytest.fixture(scope="module")
def flip_rig(make_rig):
    return make_rig(0.16)  # 256 x 144, used cropped to 256 x 128


def test_mono_losses_are_the_heads_losses_times_the_weight(flip_rig):
    batch = make_batch(flip_rig, 2, (128, 256))
    model = small_detector(mono_loss_weight=0.5).train()
    torch.manual_seed(1)
    losses = model(**batch, mode="loss")
    # the same head on the same current-frame maps, by hand
    feats = model.extract_feat(batch["img"][:, 0], None, augment=False)
    outputs = model.perspective.mono_head([f.flatten(0, 1) for f in feats])  # L x [B*N, C, h, w]
    targets = targets_from_batch(batch["mono"], batch["intrinsics"][:, 0])
    assert (
        len(targets) == 12
        and targets[6]["labels"].tolist() == batch["mono"][1]["labels"][0].tolist()
    )
    direct = model.perspective.mono_head.loss(outputs, targets)
    assert set(direct) == {k for k in losses if k.endswith("_mono")}
    for name, value in direct.items():
        torch.testing.assert_close(losses[name], 0.5 * value, rtol=1e-5, atol=1e-7)


def test_flipped_sample_gives_the_same_mono_loss(flip_rig):
    """The dataset keeps mono targets (and intrinsics) in the unflipped image and mirrors only
    the pixels; the detector flips the FPN maps back, so with a flip-equivariant backbone the
    flipped sample's losses equal the unflipped one's."""
    batch = make_batch(flip_rig, 2, (128, 256))
    model = small_detector().train()
    torch.manual_seed(3)
    plain = model(**batch, mode="loss")
    flipped = dict(batch)
    flipped["img"] = batch["img"].flip(-1)
    flipped["flip"] = torch.ones(2, dtype=torch.bool)
    torch.manual_seed(3)
    undone = model(**flipped, mode="loss")
    assert plain["loss_box2d_mono"] > 0
    for name, value in plain.items():
        torch.testing.assert_close(undone[name], value, rtol=1e-4, atol=1e-6, msg=name)
    # without the flag the mirrored maps meet unflipped targets: the loss changes
    flipped["flip"] = torch.zeros(2, dtype=torch.bool)
    torch.manual_seed(3)
    ignored = model(**flipped, mode="loss")
    assert abs((ignored["loss_cls_mono"] - plain["loss_cls_mono"]).item()) > 1e-4


def test_dataset_flip_keeps_mono_targets_and_intrinsics():
    """CropResizeFlipImage with and without a flip: same mono targets and intrinsics, mirrored
    pixels (the contract the detector's feature un-flip relies on)."""
    rng_img = np.random.default_rng(0)
    img = rng_img.uniform(0, 255, size=(90, 160, 3)).astype(np.float32)
    K = np.array([[100.0, 0.0, 80.0], [0.0, 100.0, 45.0], [0.0, 0.0, 1.0]])
    mono = {
        "boxes2d": np.array([[10.0, 40.0, 50.0, 80.0], [100.0, 30.0, 150.0, 89.0]]),
        "centers2d": np.array([[30.0, 60.0], [125.0, 60.0]]),
        "depths": np.array([10.0, 20.0]),
        "labels": np.array([0, 8]),
        "attributes": ("", ""),
    }
    outs = []
    for flip_prob in (0.0, 1.0):
        results = {
            "img": [[img]],
            "intrinsics": K[None, None],
            "lidar2img": np.eye(4)[None, None],
            "mono": [mono],
            "rng": np.random.default_rng(1),
        }
        step = CropResizeFlipImage(final_size=(64, 128), scale_choices=(1.0,), flip_prob=flip_prob)
        outs.append(step(results))
    plain, flipped = outs
    assert (plain["flip"], flipped["flip"]) == (False, True)
    np.testing.assert_array_equal(flipped["img"][0][0], plain["img"][0][0][:, ::-1])
    np.testing.assert_allclose(flipped["intrinsics"], plain["intrinsics"])
    for key in ("boxes2d", "centers2d", "depths", "labels"):
        np.testing.assert_allclose(flipped["mono"][0][key], plain["mono"][0][key])
    # the crop keeps the bottom 80 of 90 rows, resized by 0.8: the first box's top row 40 ->
    # (40 - 10 + 0.5) * 0.8 - 0.5 = 23.9 (pixel centres at integers)
    assert plain["mono"][0]["boxes2d"][0, 1] == pytest.approx(23.9)


def test_missing_mono_targets_or_intrinsics_are_named(flip_rig):
    batch = make_batch(flip_rig, 1, (128, 256))
    model = small_detector().train()
    with pytest.raises(ValueError, match="needs 'mono' targets"):
        model(**{**batch, "mono": None}, mode="loss")
    with pytest.raises(ValueError, match="'intrinsics'"):
        model(**{**batch, "intrinsics": None}, mode="loss")


def test_perspective_head_runs_at_test_time_only_for_hybrid_queries(flip_rig):
    batch = make_batch(flip_rig, 1, (128, 256))
    model = small_detector().eval()
    calls = []
    model.perspective.mono_head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        result = model(**batch, mode="predict")
    assert calls == [] and result[0]["boxes"].shape[1] == 9


# ------------------------------------------------------------------------ hybrid config
def _count_matches(model, batch, mode="loss"):
    """Runs a loss and records, per (layer, sample), the matched query indices."""
    criterion = model.criterion
    record = []
    original = criterion.match

    def recording(*args):
        query_idx, gt_idx = original(*args)
        record.append(query_idx.clone())
        return query_idx, gt_idx

    criterion.match = recording
    try:
        losses = model(**batch, mode=mode)
    finally:
        del criterion.match
    return losses, record


def test_hybrid_config_trains_and_its_queries_get_matched(tiny_rig):
    """num_query = 2 learned queries per group for M = 5 boxes: every group must match at least
    3 boxes to hybrid queries (indices >= num_query within the group)."""
    model, history = _train("bevformerv2_tiny_320x128_t1-hybrid_12ep.py", tiny_rig, num_query=2)
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert any(k.endswith("_mono") for k in history[-1])
    head = model.pts_bbox_head
    k, nq, G = head.num_hybrid_queries, head.num_query, head.group_detr
    assert (k, nq, G) == (30, 2, 2)
    losses, record = _count_matches(model, make_batch(tiny_rig, 1, (128, 320)))
    assert len(record) == 2  # one per decoder layer, batch 1
    for query_idx in record:
        assert len(query_idx) == G * len(GT_BOXES)
        assert int(query_idx.max()) < G * (nq + k)
        within = query_idx % (nq + k)  # index inside the group
        group = query_idx // (nq + k)
        for g in range(G):
            assert int((within[group == g] >= nq).sum()) >= len(GT_BOXES) - nq


def test_hybrid_config_predicts_with_its_proposals(tiny_rig):
    cfg = load("bevformerv2_tiny_320x128_t1-hybrid_12ep.py")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    batch = make_batch(tiny_rig, 2, (128, 320))
    with torch.no_grad():
        outputs = model(**batch, mode="tensor")
        result = model(**batch, mode="predict")
    k = cfg.model.perspective.hybrid.num_queries
    assert outputs["cls_scores"].shape[2] == cfg.model.pts_bbox_head.num_query + k
    proposals = outputs["proposals"]
    assert proposals.reference.shape == (2, k, 3)
    assert bool(proposals.valid.any())  # the untrained head detects plenty (scores ~0.25)
    assert len(result) == 2 and result[0]["boxes"].shape[1] == 9


def test_hybrid_config_trains_on_synthetic_nuscenes(tmp_path):
    """The real pipeline: synthetic dataroot -> info files -> dataset (flip drawn at random,
    mono targets) -> collate -> one training step of the hybrid config (perspective head on)."""
    from bevformer.builder import build_dataset
    from bevformer.data.collate import collate
    from bevformer.data.infos import create_infos
    from bevformer.data.synthetic import generate

    root = generate(
        tmp_path / "nuscenes",
        scenes=2,
        samples_per_scene=2,
        image_size=(400, 225),
        seed=0,
        progress=False,
    )
    written = create_infos(str(root), "v1.0-mini", progress=False)
    cfg = load("bevformerv2_tiny_320x128_t1-hybrid_12ep.py")
    cfg.train_dataloader.dataset.update(info_file=str(written["train"]), data_root=str(root))
    dataset = build_dataset(cfg.train_dataloader.dataset)
    batch = collate([dataset.get_item(0, np.random.default_rng(0))])
    assert sum(len(v) for v in batch["mono"][0]["labels"]) > 0
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    losses = model(**batch, mode="loss")
    assert {"loss_cls", "loss_bbox", "loss_cls_mono", "loss_depth_mono"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grad = model.perspective.hybrid.feature_proj[0].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
