"""Every config under projects/configs/bevformerv2 loads with mmengine and builds; the official
hyper-parameters are where they should be; the tiny model trains a step; the XL model runs
forward + loss + backward on CPU (slow).

Legend: B batch, T frames, N cameras, H W image size.
"""

from __future__ import annotations

import glob
import importlib
import os

import numpy as np
import pytest
import torch
from mmengine.config import Config

from bevformer.benchmark import count_parameters
from bevformer.builder import build_from_cfg, build_model
from bevformer.registry import TRANSFORMS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "projects", "configs", "bevformerv2")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))
IMAGENET_RGB = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def load(name: str) -> Config:
    return Config.fromfile(os.path.join(CONFIG_DIR, name))


def _norm(pipeline) -> dict:
    (step,) = [s for s in pipeline if s["type"] == "NormalizeMultiViewImage"]
    return {k: v for k, v in step.items() if k != "type"}


def test_the_expected_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    for name in (
        "bevformerv2_internimage-xl_1600x640_t1_24ep.py",
        "bevformerv2_internimage-xl_1600x640_t2_24ep.py",
        "bevformerv2_internimage-xl_1600x640_t8_24ep.py",
        "bevformerv2_r50_1600x640_t1-base_24ep.py",
        "bevformerv2_tiny_320x128_t1_12ep.py",
        "bevformerv2_tiny_320x128_t2_12ep.py",
    ):
        assert name in names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_is_consistent(path):
    cfg = Config.fromfile(path)
    frames = tuple(cfg.model.bev.frames)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert tuple(cfg[loader].dataset.frames) == frames, loader
    if cfg.model.bev.temporal == "fusion" and len(frames) > 1:
        assert cfg.model.bev.fusion.in_channels == len(frames) * cfg.model.bev.encoder.embed_dims
    else:
        assert cfg.model.bev.fusion is None
    enc, head = cfg.model.bev.encoder, cfg.model.pts_bbox_head
    assert enc.embed_dims == head.embed_dims
    assert enc.num_levels == cfg.model.num_levels <= cfg.model.img_neck.num_outs
    assert cfg.train_cfg.by_epoch and cfg.train_cfg.max_epochs == cfg.param_scheduler[1].end
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=35, norm_type=2)
    # the tiny CPU recipe trains its batch of 2 at lr 1e-3 (docs/ARCHITECTURE.md)
    lr = 1e-3 if "_tiny_" in os.path.basename(path) else 4e-4
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=lr, weight_decay=0.01)
    train_norm = _norm(cfg.train_dataloader.dataset.transforms)
    assert train_norm == _norm(cfg.test_dataloader.dataset.transforms)
    # every pipeline step is a registered transform that accepts its arguments
    for loader in ("train_dataloader", "test_dataloader"):
        steps = build_from_cfg(cfg[loader].dataset.transforms, TRANSFORMS)
        assert len(steps) == len(cfg[loader].dataset.transforms)
        assert all(callable(step) for step in steps)


def test_official_xl_settings():
    cfg = load("bevformerv2_internimage-xl_1600x640_t1_24ep.py")
    bb = cfg.model.img_backbone
    assert (bb.type, bb.channels, tuple(bb.depths), tuple(bb.groups)) == (
        "InternImage",
        192,
        (5, 5, 24, 5),
        (12, 24, 48, 96),
    )
    assert tuple(bb.out_indices) == (1, 2, 3) and cfg.model.img_neck.in_channels == [384, 768, 1536]
    assert _norm(cfg.train_dataloader.dataset.transforms) == IMAGENET_RGB
    assert cfg.optim_wrapper.constructor == "LayerDecayOptimWrapperConstructor"
    assert cfg.optim_wrapper.paramwise_cfg.num_layers == 39
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.9
    warmup, step = cfg.param_scheduler
    assert (warmup.type, warmup.end, warmup.by_epoch) == ("LinearLR", 2000, False)
    assert warmup.start_factor == pytest.approx(1 / 3)
    assert (step.milestones, step.gamma, cfg.train_cfg.max_epochs) == ([20], 0.1, 24)
    enc = cfg.model.bev.encoder
    assert (enc.grid.bev_h, enc.num_layers, enc.num_points_in_pillar, enc.cross_attn_points) == (
        200,
        6,
        4,
        8,
    )
    head = cfg.model.pts_bbox_head
    assert (head.num_query, head.group_detr, head.num_decoder_layers) == (900, 11, 6)
    t8 = load("bevformerv2_internimage-xl_1600x640_t8_24ep.py")
    assert tuple(t8.model.bev.frames) == tuple(range(-7, 1))
    assert t8.model.bev.fusion.inter_channels == 512
    base = load("bevformerv2_r50_1600x640_t1-base_24ep.py")
    assert base.model.pts_bbox_head.group_detr == 1
    steps = [s.type for s in base.train_dataloader.dataset.transforms]
    assert "GlobalRotScaleTransBEV" not in steps
    assert base.optim_wrapper.paramwise_cfg.custom_keys == {"img_backbone": dict(lr_mult=0.5)}
    assert _norm(base.train_dataloader.dataset.transforms)["to_rgb"] is False


def _geometric_steps(cfg: Config) -> tuple[dict, dict]:
    """The train pipeline's BEV augmentation and image crop/resize/flip steps."""
    steps = {s["type"]: s for s in cfg.train_dataloader.dataset.transforms}
    return steps["GlobalRotScaleTransBEV"], steps["CropResizeFlipImage"]


@pytest.mark.parametrize("path", [p for p in CONFIGS if "_tiny_" in p], ids=os.path.basename)
def test_tiny_recipe_neither_flips_nor_rotates(path):
    """The tiny recipe keeps the BEV scaling and image rescaling but no flip or rotation
    (docs/ARCHITECTURE.md "The tiny CPU recipe"); the official XL recipe keeps all of them."""
    bda, crop = _geometric_steps(Config.fromfile(path))
    assert (tuple(bda.rot_range), bda.flip_dx_prob, bda.flip_dy_prob) == ((0.0, 0.0), 0.0, 0.0)
    assert tuple(bda.scale_range) == (0.95, 1.05) and crop.flip_prob == 0.0
    assert len(crop.scale_choices) > 1
    bda, crop = _geometric_steps(load("bevformerv2_internimage-xl_1600x640_t1_24ep.py"))
    assert (tuple(bda.rot_range), bda.flip_dx_prob, bda.flip_dy_prob) == ((-22.5, 22.5), 0.5, 0.5)
    assert crop.flip_prob == 0.5


# --------------------------------------------------------------------- building (needs the head)
@pytest.fixture(scope="module")
def head_module():
    return importlib.import_module("bevformer.models.head")


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds(path, head_module):
    cfg = Config.fromfile(path)
    with torch.device("meta"):  # shapes only: the XL model would take seconds and 1.5 GB
        model = build_model(cfg.model)
    assert type(model).__name__ == "BEVFormerV2"
    assert model.frames == tuple(cfg.model.bev.frames)


def _empty_mono(num_cams: int) -> dict:
    """Perspective-head targets without boxes (the head's own tests cover boxes)."""
    empty = {
        "boxes2d": (0, 4),
        "centers2d": (0, 2),
        "depths": (0,),
        "sizes_wlh": (0, 3),
        "rotations_cam": (0, 4),
        "speeds": (0,),
    }
    mono = {k: [torch.zeros(shape) for _ in range(num_cams)] for k, shape in empty.items()}
    mono["labels"] = [torch.zeros(0, dtype=torch.long) for _ in range(num_cams)]
    mono["attr_labels"] = [torch.zeros(0, dtype=torch.long) for _ in range(num_cams)]
    return mono


def _random_batch(model, batch: int, img_hw: tuple[int, int], rig) -> dict:
    T = len(model.frames)
    l2i = torch.from_numpy(rig.lidar2img()).float()
    K = torch.as_tensor(np.asarray(rig.K), dtype=torch.float32)
    return {
        "img": torch.randn(batch, T, 6, 3, *img_hw),
        "intrinsics": K.expand(batch, T, 6, 3, 3).clone(),
        "mono": [_empty_mono(6) for _ in range(batch)],
        "flip": torch.zeros(batch, dtype=torch.bool),
        "lidar2img": l2i.expand(batch, T, 6, 4, 4).clone(),
        "frame_valid": torch.ones(batch, T, dtype=torch.bool),
        "bda": torch.eye(4).repeat(batch, 1, 1),
        "gt_boxes": [
            torch.tensor([[5.0, 10.0, -1.0, 1.9, 4.5, 1.6, 0.3, 1.0, 0.0]]) for _ in range(batch)
        ],
        "gt_labels": [torch.tensor([0]) for _ in range(batch)],
    }


@pytest.mark.parametrize(
    "name", ["bevformerv2_tiny_320x128_t1_12ep.py", "bevformerv2_tiny_320x128_t2_12ep.py"]
)
def test_tiny_config_training_step(name, head_module, make_rig):
    torch.manual_seed(0)
    model = build_model(load(name).model).train()
    rig = make_rig(0.2)  # 320 x 180; the padded 320 x 128 crop keeps the normalisation size
    losses = model(**_random_batch(model, 2, (128, 320), rig), mode="loss")
    assert losses and all(torch.isfinite(v).all() for v in losses.values())
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    grads = [p.grad for p in model.bev.encoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.slow
def test_xl_config_forward_loss_backward_on_cpu(head_module, make_rig):
    """Real XL sizes (200x200 BEV, 900 x 11 queries), one sample at 320 x 128 pixels."""
    torch.manual_seed(0)
    cfg = load("bevformerv2_internimage-xl_1600x640_t1_24ep.py")
    assert cfg.model.img_backbone.with_cp  # the config's setting; it bounds the peak memory
    model = build_model(cfg.model).train()
    n_params = count_parameters(model)
    print(f"BEVFormer v2 InternImage-XL parameters: {n_params / 1e6:.1f} M")
    assert 300e6 < n_params < 450e6  # backbone ~335 M (official) + FPN, encoder, head
    losses = model(**_random_batch(model, 1, (128, 320), make_rig(0.2)), mode="loss")
    sum(v for k, v in losses.items() if "loss" in k).backward()
    grad = model.img_backbone.patch_embed.conv1.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
