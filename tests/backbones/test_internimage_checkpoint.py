"""load_internimage_checkpoint: official formats, head dropping, strict errors."""

import pytest
import torch

from backbones import InternImage, internimage_t, internimage_xl, load_internimage_checkpoint

TINY = dict(
    core_op="DCNv3_pytorch",
    channels=16,
    depths=(1, 1, 2, 1),
    groups=(1, 2, 4, 8),
    layer_scale=1e-5,
    post_norm=True,
)


def source_state_dict(num_classes=None):
    torch.manual_seed(0)
    model = InternImage(num_classes=num_classes, **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model.state_dict()


def assert_loaded(model, sd):
    own = model.state_dict()
    assert own.keys() <= sd.keys()
    for k, v in own.items():
        assert torch.equal(v, sd[k]), k


def test_classification_checkpoint_file(tmp_path):
    sd = source_state_dict(num_classes=5)
    path = tmp_path / "internimage_cls.pth"
    torch.save({"model": sd, "epoch": 299, "max_accuracy": 83.5, "config": "yaml text"}, path)
    model = InternImage(**TINY)
    report = load_internimage_checkpoint(model, path)
    assert_loaded(model, sd)
    assert set(report["dropped"]) == {k for k in sd if k.startswith(("conv_head.", "head."))}
    assert len(report["dropped"]) == 8
    # A model with the same head keeps it.
    with_head = InternImage(num_classes=5, **TINY)
    assert load_internimage_checkpoint(with_head, path)["dropped"] == []
    assert_loaded(with_head, sd)


def test_detection_checkpoint_with_backbone_prefix(tmp_path):
    sd = source_state_dict()
    det = {f"backbone.{k}": v for k, v in sd.items()}
    det["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 16, 1, 1)
    det["roi_head.bbox_head.0.fc_cls.weight"] = torch.zeros(81, 1024)
    path = tmp_path / "cascade.pth"
    torch.save({"state_dict": det, "meta": {"epoch": 36, "mmdet_version": "2.28.1"}}, path)
    model = InternImage(**TINY)
    load_internimage_checkpoint(model, path)
    assert_loaded(model, sd)


def test_hugging_face_and_ddp_and_plain_formats():
    sd = source_state_dict(num_classes=5)
    # Hugging Face: "model." prefix, gamma1/2 renamed layer_scale1/2.
    hf = {
        "model." + k.replace(".gamma1", ".layer_scale1").replace(".gamma2", ".layer_scale2"): v
        for k, v in sd.items()
    }
    assert any(k.endswith("layer_scale1") for k in hf)
    for ckpt in (hf, {f"module.{k}": v for k, v in sd.items()}, dict(sd)):
        model = InternImage(**TINY)
        load_internimage_checkpoint(model, ckpt)
        assert_loaded(model, sd)
    detector = {f"img_backbone.{k}": v for k, v in sd.items()}
    detector["img_neck.fpn_convs.0.conv.bias"] = torch.zeros(256)
    model = InternImage(**TINY)
    load_internimage_checkpoint(model, {"state_dict": detector})
    assert_loaded(model, sd)


def test_wrong_variant_lists_shape_mismatches():
    with torch.device("meta"):
        xl = internimage_xl()
    t_weights = {"model": internimage_t(core_op="DCNv3_pytorch", num_classes=1000).state_dict()}
    with pytest.raises(ValueError) as err:
        load_internimage_checkpoint(xl, t_weights)
    msg = str(err.value)
    assert "patch_embed.conv2.weight: model [192, 96, 3, 3] vs checkpoint [64, 32, 3, 3]" in msg
    assert "levels.0.blocks.0.dcn.offset.weight: model [216, 192] vs checkpoint [72, 64]" in msg
    # T has 18 blocks in stage 2, XL 24; XL has layer scales, T has level norms.
    assert "missing keys" in msg and "levels.2.blocks.23.mlp.fc2.weight" in msg
    assert "levels.0.blocks.0.gamma1" in msg
    assert "unexpected keys" in msg and "levels.0.norm.0.weight" in msg
    assert "channels=64" in msg and "channels=192" in msg


def test_strict_error_loads_nothing_and_non_strict_reports():
    sd = source_state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("levels.3.")}
    partial["levels.0.blocks.0.mlp.fc1.bias"] = torch.zeros(3)
    model = InternImage(**TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="missing keys"):
        load_internimage_checkpoint(model, partial)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.warns(UserWarning, match="Partial"):
        report = load_internimage_checkpoint(model, partial, strict=False)
    assert report["mismatched"] == ["levels.0.blocks.0.mlp.fc1.bias"]
    assert all(k.startswith("levels.3.") for k in report["missing"])
    key = "patch_embed.conv1.weight"
    assert torch.equal(model.state_dict()[key], sd[key])


class TrainingConfig:
    """Stands for the yacs config object pickled into raw training checkpoints."""

    lr = 1e-3


def test_pickled_objects_are_skipped_not_run(tmp_path):
    """A raw training checkpoint (weights plus a pickled config object) loads its weights; the
    object is replaced by an inert placeholder named in a warning, never constructed."""
    path = tmp_path / "ckpt_epoch_10.pth"
    sd = source_state_dict()
    torch.save({"model": sd, "config": TrainingConfig()}, path)
    model = InternImage(**TINY)
    with pytest.warns(UserWarning, match=r"not loaded.*TrainingConfig"):
        report = load_internimage_checkpoint(model, path)
    assert report["missing"] == [] and report["unexpected"] == []
    key = "levels.1.blocks.0.dcn.offset.weight"
    assert torch.equal(model.state_dict()[key], sd[key])


def test_not_a_state_dict():
    with pytest.raises(ValueError, match="no tensors"):
        load_internimage_checkpoint(InternImage(**TINY), {"epoch": 3})
    with pytest.raises(FileNotFoundError):
        load_internimage_checkpoint(InternImage(**TINY), "/nonexistent/ckpt.pth")
