"""The official perspective-loss details and their switches: DD3D's smooth-L1 form in the 3D-box
loss (``train_cfg.box3d_smooth_l1_form``), the perspective head on the annotated cameras only
(``mono_cameras``), and which configs select what.

Images are 128 x 256 with fx = fy = 200 and principal point (128, 64); B batch, N cameras (6).
"""

from __future__ import annotations

import glob
import math
import os

import pytest
import torch
from mmengine.config import Config
from test_mono_integration import small_detector  # tests/models is on sys.path

from bevformer.builder import build_model
from bevformer.models.detector import BEVFormerV2
from bevformer.models.perspective import PerspectiveHead, targets_from_batch
from bevformer.models.perspective.coder import box3d_corners
from bevformer.models.perspective.losses import disentangled_corner_loss, smooth_l1
from bevformer.models.perspective.targets import has_usable_boxes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG_DIR = os.path.join(ROOT, "projects", "configs", "bevformerv2")
H, W, C, N = 128, 256, 16, 6
K = torch.tensor([[200.0, 0.0, 128.0], [0.0, 200.0, 64.0], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------ smooth-L1
def test_smooth_l1_forms_on_hand_computed_values():
    # beta 0.05: |x| 0.01 and 0.04 lie on the quadratic branch, 0.1 and 1.0 on the linear one
    x = torch.tensor([0.01, -0.04, 0.1, -1.0])
    official = smooth_l1(x, torch.zeros(4), beta=0.05, form="official")
    standard = smooth_l1(x, torch.zeros(4), beta=0.05, form="standard")
    # official (dd3d/layers/smooth_l1_loss.py): 0.5 x^2 below beta, |x| - beta / 2 above
    assert official.tolist() == pytest.approx([0.00005, 0.0008, 0.075, 0.975])
    # standard (fvcore): 0.5 x^2 / beta below beta, |x| - beta / 2 above
    assert standard.tolist() == pytest.approx([0.001, 0.016, 0.075, 0.975])
    assert smooth_l1(x, torch.zeros(4), beta=0.05).tolist() == standard.tolist()  # default
    # beta < 1e-5: plain L1 in both forms
    for form in ("official", "standard"):
        assert smooth_l1(x, torch.zeros(4), 0.0, form).tolist() == pytest.approx(x.abs().tolist())


def test_official_form_has_a_beta_times_smaller_gradient_below_beta():
    for form, expected in (("official", 0.01), ("standard", 0.2)):  # x and x / beta
        x = torch.tensor(0.01, requires_grad=True)
        smooth_l1(x, torch.tensor(0.0), 0.05, form).backward()
        assert x.grad.item() == pytest.approx(expected)


def test_unknown_form_is_rejected():
    with pytest.raises(ValueError, match="'official'"):
        smooth_l1(torch.zeros(1), torch.zeros(1), 0.05, form="huber")
    with pytest.raises(ValueError, match="smooth-L1 form"):
        PerspectiveHead(in_channels=C, train_cfg=dict(box3d_smooth_l1_form="huber"))


def test_disentangled_loss_of_a_depth_error_below_beta():
    # box on the optical axis at z = 10, predicted depth 10.02: the 8 corners move 0.02 in z,
    # 8 of the 24 coordinates; official 0.5 * 0.02^2 = 2e-4, standard 2e-4 / 0.05 = 4e-3
    inv_k = torch.eye(3)[None]
    target = {
        "quat": torch.tensor([[1.0, 0, 0, 0]]),
        "proj_ctr": torch.zeros(1, 2),
        "depth": torch.tensor([10.0]),
        "size": torch.tensor([[2.0, 4.0, 1.5]]),
    }
    pred = dict(target, depth=torch.tensor([10.02]))
    official, _ = disentangled_corner_loss(pred, target, inv_k, beta=0.05)  # default form
    standard, _ = disentangled_corner_loss(pred, target, inv_k, beta=0.05, form="standard")
    assert official["depth"].item() == pytest.approx(2e-4 / 3, rel=1e-3)
    assert standard["depth"].item() == pytest.approx(4e-3 / 3, rel=1e-3)


def _yaw_quat(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, math.sin(yaw / 2), 0.0]


def _camera_boxes(shift: float = 0.0) -> dict[str, torch.Tensor]:
    """A car and a pedestrian in front of the camera, in the dataset's ``mono`` keys."""
    center = torch.tensor([[1.0 + shift, 0.5, 8.0], [-2.0, 0.6, 6.0 + shift]])
    size = torch.tensor([[1.9, 4.5, 1.7], [0.7, 0.7, 1.8]])
    quat = torch.tensor([_yaw_quat(0.3), _yaw_quat(-1.0)])
    pix = box3d_corners(quat, center, size) @ K.T  # (2, 8, 3)
    pix = pix[..., :2] / pix[..., 2:]
    boxes2d = torch.cat([pix.min(1).values, pix.max(1).values], 1)
    boxes2d[:, 0::2] = boxes2d[:, 0::2].clamp(0, W)
    boxes2d[:, 1::2] = boxes2d[:, 1::2].clamp(0, H)
    proj = center @ K.T
    return {
        "boxes2d": boxes2d,
        "labels": torch.tensor([0, 8]),
        "centers2d": proj[:, :2] / proj[:, 2:],
        "depths": center[:, 2].clone(),
        "sizes_wlh": size,
        "rotations_cam": quat,
        "attr_labels": torch.tensor([0, 3]),
        "speeds": torch.tensor([2.0, 0.5]),
    }


def _no_boxes() -> dict[str, torch.Tensor]:
    shapes = {
        "boxes2d": (0, 4),
        "centers2d": (0, 2),
        "depths": (0,),
        "sizes_wlh": (0, 3),
        "rotations_cam": (0, 4),
        "speeds": (0,),
    }
    out = {k: torch.zeros(s) for k, s in shapes.items()}
    out["labels"] = torch.zeros(0, dtype=torch.long)
    out["attr_labels"] = torch.zeros(0, dtype=torch.long)
    return out


def _mono(annotated: set[int]) -> dict[str, list[torch.Tensor]]:
    """One sample's ``mono``: boxes in the cameras ``annotated``, none in the others."""
    per_cam = [_camera_boxes(0.3 * n) if n in annotated else _no_boxes() for n in range(N)]
    return {k: [cam[k] for cam in per_cam] for k in per_cam[0]}


def test_head_uses_the_official_form_for_the_box_and_the_standard_form_for_speed():
    targets = targets_from_batch([_mono({0, 1})], K.expand(1, N, 3, 3))[:2]
    torch.manual_seed(0)
    feats = [torch.randn(2, C, H // s, W // s) for s in (8, 16, 32, 64, 128)]
    official = PerspectiveHead(in_channels=C)
    standard = PerspectiveHead(in_channels=C, train_cfg=dict(box3d_smooth_l1_form="standard"))
    standard.load_state_dict(official.state_dict())
    assert official.train_cfg.box3d_smooth_l1_form == "official"  # the default is the official form
    a = official.loss(official(feats), targets)
    b = standard.loss(standard(feats), targets)
    for name in ("cls", "box2d", "centerness", "conf3d", "attr", "speed"):
        assert a[f"loss_{name}_mono"].item() == b[f"loss_{name}_mono"].item(), name
    for part in ("quat", "proj_ctr", "depth", "size"):
        # 0.5 x^2 <= 0.5 x^2 / beta for beta < 1, equal beyond beta
        assert a[f"loss_{part}_mono"].item() <= b[f"loss_{part}_mono"].item() + 1e-6, part


# ------------------------------------------------------------------------- camera selection
def _detector(mono_cameras: str) -> BEVFormerV2:
    return small_detector(mono_cameras=mono_cameras).train()


def _batch(annotated: list[set[int]], seed: int = 0) -> dict:
    B = len(annotated)
    # lidar (x right, y forward, z up) -> camera (x right, y down, z forward), then K
    lidar2cam = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    k4 = torch.eye(4)
    k4[:3, :3] = K
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(B, 1, N, 3, H, W, generator=g),
        "lidar2img": (k4 @ lidar2cam).expand(B, 1, N, 4, 4).clone(),
        "intrinsics": K.expand(B, 1, N, 3, 3).clone(),
        "frame_valid": torch.ones(B, 1, dtype=torch.bool),
        "gt_boxes": [torch.tensor([[1.0, 8.0, -0.5, 1.9, 4.5, 1.7, 0.3, 0.0, 0.0]])] * B,
        "gt_labels": [torch.tensor([0])] * B,
        "mono": [_mono(cams) for cams in annotated],
    }


def _mono_losses(model: BEVFormerV2, batch: dict) -> dict[str, float]:
    losses = model(**batch, mode="loss")
    return {k: v.item() for k, v in losses.items() if k.endswith("_mono")}


def test_cameras_without_boxes_do_not_reach_the_perspective_loss():
    """Camera 3 has no box: under "annotated" its image may be anything (its
    negatives and its share of the towers' BatchNorm statistics do not count); under "all"
    changing it changes the loss."""
    batch = _batch([{0, 1}])
    other = dict(batch, img=batch["img"].clone())
    other["img"][0, 0, 3] = 5.0 * torch.randn(3, H, W)
    annotated = _detector("annotated")
    base = _mono_losses(annotated, batch)
    assert base["loss_box2d_mono"] > 0 and base["loss_cls_mono"] > 0
    assert _mono_losses(annotated, other) == pytest.approx(base, rel=1e-6, abs=1e-9)
    every = _detector("all")
    a, b = _mono_losses(every, batch), _mono_losses(every, other)
    assert abs(a["loss_cls_mono"] - b["loss_cls_mono"]) > 1e-4


def test_annotated_cameras_equal_the_head_on_those_images_alone():
    batch = _batch([{0, 1}, {4}])
    model = _detector("annotated")
    losses = _mono_losses(model, batch)
    feats = model.extract_feat(batch["img"][:, 0], None, augment=False)
    targets = targets_from_batch(batch["mono"], batch["intrinsics"][:, 0])
    keep = has_usable_boxes(targets, 10)
    assert keep.nonzero().squeeze(1).tolist() == [0, 1, 10]  # image b * N + n
    index = keep.nonzero().squeeze(1)
    outputs = model.perspective.mono_head([f.flatten(0, 1)[index] for f in feats])
    direct = model.perspective.mono_head.loss(outputs, [targets[i] for i in index.tolist()])
    assert losses == pytest.approx({k: v.item() for k, v in direct.items()}, rel=1e-5)
    # outputs computed on every camera (the hybrid-query path) are subset the same way
    all_outputs = model.perspective.mono_head([f.flatten(0, 1) for f in feats])
    subset = model.perspective.loss(feats, batch["mono"], batch["intrinsics"][:, 0], all_outputs)
    by_hand = model.perspective.mono_head.loss(
        {k: v if k == "locations" else [m[index] for m in v] for k, v in all_outputs.items()},
        [targets[i] for i in index.tolist()],
    )
    for name, value in by_hand.items():
        torch.testing.assert_close(subset[name], value)


def test_a_batch_without_any_box_gives_zero_losses_with_the_graph_intact():
    """The official dataset re-draws such a sample; here its perspective losses are the head's
    losses on every camera times 0, so every head parameter still gets a (zero) gradient."""
    model = _detector("annotated")
    losses = model(**_batch([set()]), mode="loss")
    mono = {k: v for k, v in losses.items() if k.endswith("_mono")}
    assert mono and all(v.item() == 0.0 for v in mono.values())
    sum(losses.values()).backward()
    for name, p in model.perspective.mono_head.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) == 0.0, name
    # under "all" the same batch trains the classifier on the negatives
    every = _detector("all")
    assert every(**_batch([set()]), mode="loss")["loss_cls_mono"].item() > 0


def test_unknown_camera_selection_is_rejected():
    with pytest.raises(ValueError, match="perspective cameras must be one of"):
        _detector("some")


# ---------------------------------------------------------------------------------- configs
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")))
OFFICIAL = [name for name in CONFIGS if "_tiny_" not in name]  # the R50 and XL configs
TINY_MONO = [
    "bevformerv2_tiny_320x128_t1-mono_12ep.py",
    "bevformerv2_tiny_320x128_t1-hybrid_12ep.py",
    "bevformerv2_tiny_320x128_t2-hybrid_12ep.py",
    "bevformerv2_tiny_320x128_t2-stream-hybrid_12ep.py",
]


def test_the_config_lists_are_complete():
    assert len(OFFICIAL) >= 4 and "bevformerv2_internimage-xl_1600x640_t1_24ep.py" in OFFICIAL
    with_head = [
        n
        for n in CONFIGS
        if "_tiny_" in n and Config.fromfile(os.path.join(CONFIG_DIR, n)).model.perspective
    ]
    assert sorted(with_head) == sorted(TINY_MONO)


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_setting_configs_train_as_the_official_code(name):
    cfg = Config.fromfile(os.path.join(CONFIG_DIR, name))
    assert cfg.model.perspective.mono_head.train_cfg.box3d_smooth_l1_form == "official"
    assert cfg.model.perspective.cameras == "annotated"
    assert cfg.sync_bn == "torch" and cfg.norm_layer == "BN"


@pytest.mark.parametrize("name", TINY_MONO)
def test_tiny_configs_keep_the_training_of_their_recorded_results(name):
    cfg = Config.fromfile(os.path.join(CONFIG_DIR, name))
    assert cfg.model.perspective.mono_head.train_cfg.box3d_smooth_l1_form == "standard"
    assert cfg.model.perspective.cameras == "all"
    assert cfg.norm_layer == "BN"


def test_configs_build_with_their_settings():
    official = Config.fromfile(
        os.path.join(CONFIG_DIR, "bevformerv2_internimage-xl_1600x640_t1_24ep.py")
    )
    head = build_model(official.model.perspective.mono_head)
    assert isinstance(head, PerspectiveHead) and head.train_cfg.box3d_smooth_l1_form == "official"
    tiny = Config.fromfile(os.path.join(CONFIG_DIR, TINY_MONO[0]))
    with torch.device("meta"):  # shapes only
        model = build_model(tiny.model)
    assert (
        model.perspective.mono_head.train_cfg.box3d_smooth_l1_form == "standard"
        and model.perspective.cameras == "all"
    )
