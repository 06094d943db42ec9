"""``init_cfg=dict(type="Pretrained", ...)`` on the backbones: official file layouts load and set
every parameter in ``init_weights()``, building never reads the file, errors say what to do."""

from __future__ import annotations

import logging
from collections import OrderedDict

import pytest
import torch
import torchvision
from mmengine.logging import MMLogger

from backbones import InternImage, ResNetBackbone
from backbones.resnet import checkpoint_filter_fn

TINY_INTERNIMAGE = dict(
    core_op="DCNv3_pytorch",
    channels=16,
    depths=(1, 1, 2, 1),
    groups=(1, 2, 4, 8),
    layer_scale=1e-5,
    post_norm=True,
)
# mmdet ResNet-50 (tools/model_converters/detectron2pytorch.py, arch_settings[50])
RESNET50_BLOCKS = (3, 4, 6, 3)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logged():
    """Messages sent to the current mmengine logger during the test."""
    logger = MMLogger.get_current_instance()
    handler = Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def randomised(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return OrderedDict(
        (k, torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone())
        for k, v in state.items()
    )


def caffe_resnet50_keys() -> list[str]:
    """The keys of mmdet's caffe ResNet-50 (``open-mmlab://detectron2/resnet50_caffe``), as
    mmdet's detectron2pytorch converter names them: BN as affine + zero mean / unit var."""

    def bn(name: str) -> list[str]:
        return [f"{name}.{p}" for p in ("bias", "weight", "running_mean", "running_var")]

    keys = ["conv1.weight", *bn("bn1")]
    for i, blocks in enumerate(RESNET50_BLOCKS, start=1):
        for j in range(blocks):
            if j == 0:
                keys += [f"layer{i}.{j}.downsample.0.weight", *bn(f"layer{i}.{j}.downsample.1")]
            for k in (1, 2, 3):
                keys += [f"layer{i}.{j}.conv{k}.weight", *bn(f"layer{i}.{j}.bn{k}")]
    return keys


def assert_every_parameter_from(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), state[name]), name


def test_torchvision_resnet50_file(tmp_path, logged):
    reference = torchvision.models.resnet50(weights=None).state_dict()
    state = randomised(reference)
    assert {"fc.weight", "layer1.0.conv1.weight", "bn1.running_var"} <= state.keys()
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(state, path)
    model = ResNetBackbone(
        depth=50, style="caffe", init_cfg=dict(type="Pretrained", checkpoint=str(path))
    )
    before = model.conv1.weight.detach().clone()
    assert not torch.equal(before, state["conv1.weight"])  # building did not load
    model.init_weights()
    assert_every_parameter_from(model, state)
    assert torch.equal(model.layer4[2].bn3.running_mean, state["layer4.2.bn3.running_mean"])
    summary = next(m for m in logged if "resnet50-0676ba61.pth" in m)
    assert "0 missing" in summary and "0 unexpected" in summary and "fc.weight" in summary


def test_mmdet_caffe_resnet50_file(tmp_path, logged):
    shapes = torchvision.models.resnet50(weights=None).state_dict()
    keys = caffe_resnet50_keys()
    # the torchvision names minus the classifier and the BatchNorm step counters
    weights = [k for k in shapes if not k.startswith("fc.") and "num_batches" not in k]
    assert sorted(keys) == sorted(weights)
    state = randomised({k: shapes[k] for k in keys})
    path = tmp_path / "resnet50_msra-5891d200.pth"
    torch.save({"state_dict": state}, path)
    model = ResNetBackbone(
        depth=50, style="caffe", init_cfg=dict(type="Pretrained", checkpoint=str(path))
    )
    model.init_weights()
    assert_every_parameter_from(model, state)
    assert any("resnet50_msra" in m and "0 missing" in m for m in logged)


def test_detector_file_and_prefix(tmp_path):
    model = ResNetBackbone(depth=50)
    state = randomised(model.state_dict())
    neck = {"img_neck.lateral_convs.0.conv.weight": torch.zeros(256, 512, 1, 1)}
    detector = {"state_dict": {**{f"img_backbone.{k}": v for k, v in state.items()}, **neck}}
    kept, skipped = checkpoint_filter_fn(detector, model)
    assert kept.keys() == state.keys() and skipped == list(neck)

    path = tmp_path / "fcos.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, path)
    explicit = ResNetBackbone(
        depth=50, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
    )
    explicit.init_weights()
    assert_every_parameter_from(explicit, state)
    wrong = ResNetBackbone(
        depth=50, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="img_backbone.")
    )
    with pytest.raises(
        ValueError, match=r"no key of .*fcos.pth starts with prefix 'img_backbone\.'"
    ):
        wrong.init_weights()


def test_internimage_classification_file(tmp_path, logged):
    torch.manual_seed(1)
    source = InternImage(num_classes=10, **TINY_INTERNIMAGE)
    state = randomised(source.state_dict())
    path = tmp_path / "internimage_tiny_1k.pth"
    torch.save({"model": state, "epoch": 300}, path)
    model = InternImage(init_cfg=dict(type="Pretrained", checkpoint=str(path)), **TINY_INTERNIMAGE)
    assert not torch.equal(model.patch_embed.conv1.weight, state["patch_embed.conv1.weight"])
    model.init_weights()
    assert_every_parameter_from(model, state)
    summary = next(m for m in logged if "internimage_tiny_1k.pth" in m)
    assert "0 missing" in summary and "head.weight" in summary  # classifier skipped, reported


def test_missing_file_is_found_at_init_weights_not_at_build(tmp_path):
    path = tmp_path / "ckpts" / "internimage_xl_22k_192to384.pth"
    model = InternImage(init_cfg=dict(type="Pretrained", checkpoint=str(path)), **TINY_INTERNIMAGE)
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()
    msg = str(err.value)
    assert str(path) in msg
    assert "huggingface.co/OpenGVLab/InternImage/resolve/main/internimage_xl_22k_192to384" in msg
    assert "model.img_backbone.init_cfg.checkpoint" in msg
    assert "model.img_backbone.init_cfg=None" in msg


def test_file_of_another_architecture_loads_nothing(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = InternImage(init_cfg=dict(type="Pretrained", checkpoint=str(path)), **TINY_INTERNIMAGE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no tensor of .*resnet18.pth fits the model"):
        model.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_init_cfg_is_checked_when_built():
    with pytest.raises(ValueError, match="Pretrained"):
        ResNetBackbone(init_cfg=dict(type="Kaiming"))
    with pytest.raises(ValueError, match="unknown key"):
        InternImage(
            init_cfg=dict(type="Pretrained", checkpoint="x.pth", strict=True), **TINY_INTERNIMAGE
        )


def test_xl_configs_name_the_official_file():
    from bevformer.engine.launch import load_config

    for frames in ("t1", "t2", "t8"):
        cfg = load_config(
            f"projects/configs/bevformerv2/bevformerv2_internimage-xl_1600x640_{frames}_24ep.py"
        )
        init = cfg.model.img_backbone.init_cfg
        assert init == dict(type="Pretrained", checkpoint="ckpts/internimage_xl_22k_192to384.pth")
    r50 = load_config("projects/configs/bevformerv2/bevformerv2_r50_1600x640_t1-base_24ep.py")
    assert r50.load_from == "ckpts/fcos_r50_coco_2mmdet.pth" and r50.load_from_strict is False
