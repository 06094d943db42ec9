"""PerspectiveHead's grouped settings: ``train_cfg`` (PerspectiveTrainCfg) and ``test_cfg``
(PerspectiveTestCfg): defaults, partial dicts, unknown keys, validation, and their use.

Images are 128 x 256 (levels 16x32 ... 1x2), fx = fy = 200, principal point (128, 64).
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from bevformer.builder import build_model
from bevformer.models.perspective import PerspectiveHead, PerspectiveTestCfg, PerspectiveTrainCfg
from bevformer.models.perspective.targets import SIZE_RANGES

H, W, C = 128, 256, 8
STRIDES = (8, 16, 32, 64, 128)
K = torch.tensor([[200.0, 0.0, 128.0], [0.0, 200.0, 64.0], [0.0, 0.0, 1.0]])

TRAIN_DEFAULTS = {
    "size_ranges": SIZE_RANGES,
    "pos_radius": 1.5,
    "focal_alpha": 0.25,
    "focal_gamma": 2.0,
    "box3d_weight": 2.0,
    "conf3d_weight": 1.0,
    "conf3d_temperature": 1.0,
    "smooth_l1_beta": 0.05,
    "box3d_smooth_l1_form": "official",
    "attr_weight": 0.2,
    "speed_weight": 0.2,
}
TEST_DEFAULTS = {
    "pre_nms_thresh": 0.05,
    "pre_nms_topk": 1000,
    "post_nms_topk": 100,
    "nms_thresh": 0.6,
}
FLAT = (
    "num_classes",
    "in_channels",
    "strides",
    "num_convs",
    "depth_mean",
    "depth_std",
    "depth_scale_init",
    "canonical_sizes",
    "min_depth",
    "max_depth",
    "depth_factor",
)


def _head(**kwargs):
    torch.manual_seed(0)
    return PerspectiveHead(in_channels=C, num_convs=1, **kwargs)


def test_signature_is_flat_architecture_plus_two_groups():
    params = [n for n in inspect.signature(PerspectiveHead.__init__).parameters if n != "self"]
    assert params == [*FLAT, "train_cfg", "test_cfg"]
    assert len(params) <= 15


def test_defaults_are_the_official_settings():
    head = _head()
    assert isinstance(head.train_cfg, PerspectiveTrainCfg)
    assert isinstance(head.test_cfg, PerspectiveTestCfg)
    assert dataclasses.asdict(head.train_cfg) == TRAIN_DEFAULTS
    assert dataclasses.asdict(head.test_cfg) == TEST_DEFAULTS
    assert head.train_cfg == PerspectiveTrainCfg() and head.test_cfg == PerspectiveTestCfg()


def test_keys_not_given_keep_their_defaults():
    head = _head(train_cfg=dict(pos_radius=2.0), test_cfg={"nms_thresh": 0.5})
    assert head.train_cfg == dataclasses.replace(PerspectiveTrainCfg(), pos_radius=2.0)
    assert head.test_cfg == PerspectiveTestCfg(nms_thresh=0.5)
    # a dataclass is taken as it is; size ranges from a config (lists) become tuples
    cfg = PerspectiveTrainCfg(size_ranges=[[-1, 32], [32, 64], [64, 128], [128, 256], [256, 1e8]])
    assert _head(train_cfg=cfg).train_cfg is cfg
    assert cfg.size_ranges[1] == (32, 64)


@pytest.mark.parametrize(
    ("group", "key", "accepted"),
    [
        ("train_cfg", "box3d_wieght", "box3d_weight"),
        ("train_cfg", "nms_thresh", "speed_weight"),  # an inference key in the training group
        ("test_cfg", "post_nms_topN", "post_nms_topk"),
    ],
)
def test_unknown_keys_are_rejected_with_the_accepted_ones(group, key, accepted):
    with pytest.raises(TypeError, match=rf"{group} has unknown key\(s\) \['{key}'\].*{accepted}"):
        _head(**{group: {key: 1.0}})


def test_unknown_keys_in_a_config_are_rejected():
    cfg = dict(type="PerspectiveHead", in_channels=C, train_cfg=dict(pos_raduis=2.0))
    with pytest.raises(TypeError, match=r"building PerspectiveHead.*\['pos_raduis'\].*pos_radius"):
        build_model(cfg)
    # the grouped keys are no longer accepted flat
    with pytest.raises(TypeError, match="box3d_smooth_l1_form"):
        build_model(dict(type="PerspectiveHead", box3d_smooth_l1_form="standard"))
    with pytest.raises(TypeError, match="must be a dict"):
        _head(test_cfg=[("nms_thresh", 0.5)])


def test_values_are_validated_and_frozen():
    with pytest.raises(ValueError, match="smooth-L1 form"):
        PerspectiveTrainCfg(box3d_smooth_l1_form="huber")
    with pytest.raises(ValueError, match="a size range per level"):
        _head(train_cfg=dict(size_ranges=SIZE_RANGES[:4]))
    head = _head()
    with pytest.raises(dataclasses.FrozenInstanceError):
        head.train_cfg.box3d_weight = 1.0


def test_the_settings_are_not_in_the_state_dict():
    a = _head().state_dict()
    b = _head(train_cfg=dict(box3d_weight=1.0), test_cfg=dict(nms_thresh=0.3)).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any("cfg" in k for k in a)


def test_test_cfg_sets_the_inference_thresholds():
    head = _head().eval()
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, C, H // s, W // s, generator=gen) for s in STRIDES]
    with torch.no_grad():
        out = head(feats)
    out["cls_logits"] = [m + 4.0 for m in out["cls_logits"]]  # scores above the thresholds
    default = head.predict(out, K[None], (H, W))[0]
    assert len(default["labels"]) > 5
    head.test_cfg = PerspectiveTestCfg(post_nms_topk=5)
    few = head.predict(out, K[None], (H, W))[0]
    assert torch.equal(few["scores"], default["scores"][:5])
    head.test_cfg = PerspectiveTestCfg(pre_nms_thresh=1.0)
    assert len(head.predict(out, K[None], (H, W))[0]["labels"]) == 0
