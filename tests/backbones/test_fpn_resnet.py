"""FPN neck (BEVFormer v2 settings) and the torchvision ResNet backbone."""

import pytest
import torch
import torchvision

from backbones import FPN, InternImage, ResNetBackbone


def bevformer_v2_fpn(in_channels=(512, 1024, 2048), in_strides=(8, 16, 32)):
    return FPN(
        in_channels=in_channels,
        out_channels=256,
        num_outs=5,
        start_level=0,
        add_extra_convs="on_output",
        relu_before_extra_convs=True,
        in_strides=in_strides,
    )


def test_fpn_p3_to_p7_shapes_strides_and_keys():
    fpn = bevformer_v2_fpn()
    # 256 x 704 image: C3..C5 at strides 8, 16, 32.
    feats = [torch.randn(2, c, 256 // s, 704 // s) for c, s in ((512, 8), (1024, 16), (2048, 32))]
    outs = fpn(feats)
    assert [tuple(o.shape) for o in outs] == [
        (2, 256, 32, 88),
        (2, 256, 16, 44),
        (2, 256, 8, 22),
        (2, 256, 4, 11),
        (2, 256, 2, 6),
    ]
    assert fpn.strides == (8, 16, 32, 64, 128)
    assert fpn.out_channels == (256,) * 5
    keys = {k: tuple(v.shape) for k, v in fpn.state_dict().items()}
    assert len(keys) == 16  # 3 lateral + 5 output convs, weight and bias each (mmdet names)
    assert keys["lateral_convs.0.conv.weight"] == (256, 512, 1, 1)
    assert keys["lateral_convs.2.conv.weight"] == (256, 2048, 1, 1)
    assert keys["fpn_convs.3.conv.weight"] == (256, 256, 3, 3)  # first extra conv, on P5
    assert keys["fpn_convs.4.conv.bias"] == (256,)


def test_fpn_arithmetic_top_down_and_extra_levels():
    """One channel, identity convs: P3 = C3 + up(C4), P4 = C4; extras from P4 (on_output)."""
    fpn = FPN([1, 1], 1, num_outs=4, add_extra_convs="on_output", relu_before_extra_convs=True)
    with torch.no_grad():
        for conv in fpn.lateral_convs:
            conv.conv.weight.fill_(1.0)
        for conv in fpn.fpn_convs:
            conv.conv.weight.zero_()
            conv.conv.bias.zero_()
        for conv in fpn.fpn_convs[:2]:
            conv.conv.weight[0, 0, 1, 1] = 1.0  # 3x3 identity
        fpn.fpn_convs[2].conv.weight.fill_(1.0)  # sums the 3x3 window
        fpn.fpn_convs[3].conv.weight.fill_(-1.0)
    c3 = torch.ones(1, 1, 4, 4)
    c4 = torch.full((1, 1, 2, 2), 2.0)
    p3, p4, p5, p6 = fpn([c3, c4])
    assert torch.equal(p3, torch.full((1, 1, 4, 4), 3.0))
    assert torch.equal(p4, c4)
    # Stride-2 conv at (0, 0) with padding 1 sees the 2x2 map of 2s: 8.
    assert p5.shape == (1, 1, 1, 1) and p5.item() == 8.0
    # ReLU before the next extra conv: -1 * relu(8) = -8 (centre tap only is inside).
    assert p6.item() == -8.0


def test_fpn_from_internimage_stages_2_to_4():
    backbone = InternImage(
        core_op="DCNv3_pytorch",
        channels=16,
        depths=(1, 1, 1, 1),
        groups=(1, 2, 4, 8),
        out_indices=(1, 2, 3),
    )
    fpn = FPN.from_backbone(
        backbone, out_channels=32, num_outs=5, add_extra_convs="on_output",
        relu_before_extra_convs=True,
    )  # fmt: skip
    assert fpn.in_channels == [32, 64, 128]
    assert fpn.strides == (8, 16, 32, 64, 128)
    outs = fpn(backbone(torch.randn(1, 3, 64, 128)))
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 16), (4, 8), (2, 4), (1, 2), (1, 1)]


def test_fpn_bad_arguments():
    with pytest.raises(ValueError, match="add_extra_convs"):
        FPN([8, 16], 8, num_outs=3, add_extra_convs="on_nothing")
    with pytest.raises(ValueError, match="num_outs"):
        FPN([8, 16, 32], 8, num_outs=2)


def test_resnet50_caffe_style_shapes_and_strides():
    net = ResNetBackbone(depth=50, out_indices=(1, 2, 3), style="caffe")
    assert net.out_channels == (512, 1024, 2048) and net.strides == (8, 16, 32)
    outs = net(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 8, 12), (1, 1024, 4, 6), (1, 2048, 2, 3)]
    for layer in (net.layer2, net.layer3, net.layer4):
        assert layer[0].conv1.stride == (2, 2) and layer[0].conv2.stride == (1, 1)
        assert layer[0].downsample[0].stride == (2, 2)
    pytorch_style = ResNetBackbone(style="pytorch")
    assert pytorch_style.layer2[0].conv1.stride == (1, 1)
    assert pytorch_style.layer2[0].conv2.stride == (2, 2)
    # torchvision (= mmdet) parameter names, without the classifier.
    tv_keys = set(torchvision.models.resnet50(weights=None).state_dict())
    assert set(net.state_dict()) == tv_keys - {"fc.weight", "fc.bias"}


def test_resnet_frozen_stages_and_norm_eval():
    net = ResNetBackbone(frozen_stages=1, norm_eval=True, style="caffe")
    frozen = {n.split(".")[0] for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}
    assert all(p.requires_grad for p in net.layer2.parameters())
    net.train()
    assert net.training and not net.layer3[0].bn1.training and not net.bn1.training
    assert net.layer3[0].conv1.training
