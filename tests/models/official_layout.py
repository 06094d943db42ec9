"""The complete state dict layout (every key, shape and dtype) of an official BEVFormer v2
checkpoint, enumerated module by module from the official sources -- independently of this
project's model, so that the converter is checked against the official tree.

Sources (fundamentalvision/BEVFormer at 66b65f3, mmcv 1.x, mmdet 2.x):

- ``projects/configs/bevformerv2/bevformerv2-r50-{t1-base,t1,t2,t8}-24ep.py``: the model dicts
  (ResNet-50 caffe, FPN 5 outputs ``on_output``, 6 + 6 transformer layers, 900 queries,
  ``group_detr=11`` except t1-base, ``frames``, t8 ``inter_channels=512``, ``NuscenesDD3D``).
- ``bevformer/detectors/bevformerV2.py``: ``img_backbone``, ``img_neck``, ``pts_bbox_head``,
  ``fcos3d_bbox_head`` (GridMask has no tensors).
- ``bevformer/dense_heads/bevformer_head.py``: ``positional_encoding`` (mmdet 2.x
  ``LearnedPositionalEncoding``: ``row_embed``, ``col_embed``), ``transformer``,
  ``cls_branches.i`` = (Linear, LN, ReLU) x 2 + Linear, ``reg_branches.i`` = (Linear, ReLU) x 2
  + Linear, ``bev_embedding``, ``query_embedding`` (``num_query * group_detr`` rows for
  ``BEVFormerHead_GroupDETR``), ``code_weights`` (an ``nn.Parameter`` without grad).
- ``bevformer/modules/transformerV2.py``: ``level_embeds``, ``cams_embeds``, ``encoder``,
  ``decoder``, ``reference_points`` and, with more than one frame, ``fusion`` (``ResNetFusion``:
  ``layers.i`` mmdet ``BasicBlock`` = conv1/bn1/conv2/bn2 [+ downsample conv3x3 + BN when the
  inter channels differ], then ``layer_norm`` = Sequential(Linear, LayerNorm)).
- mmcv ``BaseTransformerLayer`` / ``MyCustomBaseTransformerLayer``: ``attentions.i``,
  ``ffns.0.layers.0.0`` (Linear C->F), ``ffns.0.layers.1`` (Linear F->C), ``norms.0..2``.
- ``modules/temporal_self_attention.py`` (``num_bev_queue=2``), ``spatial_cross_attention.py``
  (``deformable_attention`` = ``MSDeformableAttention3D`` without output_proj, then
  ``output_proj``), ``decoder.py`` (``CustomMSDeformableAttention``), mmcv
  ``MultiheadAttention`` / ``group_attention.py`` ``GroupMultiheadAttention``: ``attn`` =
  ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``).
- ``dd3d/modeling/{core,fcos2d,fcos3d,nuscenes_dd3d}.py`` and ``dd3d/layers/normalization.py``:
  towers of detectron2 ``Conv2d`` (no bias, ``norm`` = ``ModuleListDial`` of one BN per level),
  predictors, ``Scale``/``Offset`` holding a ``[1]`` parameter, FCOS3D's class-specific
  predictors ``box3d_{quat,ctr,depth,size,conf}.0`` (depth without bias) and the buffers
  ``mean_depth_per_level`` / ``std_depth_per_level``; ``attr_logits`` (3) and ``speed``.

Shapes: ``{key: (shape, dtype)}`` in the official registration order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]

F32, I64 = torch.float32, torch.int64

# official configs (class_names, alphabetical)
OFFICIAL_CLASSES = (
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
)

# the four 24-epoch R50 configs: frames, group_detr, ResNetFusion inter_channels
OFFICIAL_CONFIGS = {
    "r50-t1-base": dict(frames=(0,), group_detr=1, inter_channels=None),
    "r50-t1": dict(frames=(0,), group_detr=11, inter_channels=None),
    "r50-t2": dict(frames=(-1, 0), group_detr=11, inter_channels=None),
    "r50-t8": dict(frames=tuple(range(-7, 1)), group_detr=11, inter_channels=512),
}


def _add(out: Layout, key: str, *shape: int, dtype: torch.dtype = F32) -> None:
    assert key not in out, key
    out[key] = (tuple(shape), dtype)


def _linear(out: Layout, p: str, cin: int, cout: int, bias: bool = True) -> None:
    _add(out, p + "weight", cout, cin)
    if bias:
        _add(out, p + "bias", cout)


def _conv(out: Layout, p: str, cin: int, cout: int, k: int, bias: bool) -> None:
    _add(out, p + "weight", cout, cin, k, k)
    if bias:
        _add(out, p + "bias", cout)


def _bn(out: Layout, p: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _add(out, p + name, c)
    _add(out, p + "num_batches_tracked", dtype=I64)


def _ln(out: Layout, p: str, c: int) -> None:
    _add(out, p + "weight", c)
    _add(out, p + "bias", c)


def mmdet_resnet50(out: Layout, p: str) -> None:
    """mmdet ``ResNet(depth=50)``: stem conv1/bn1, ``layer{1..4}`` of Bottlenecks (expansion 4),
    ``downsample`` = (conv1x1, BN) in each stage's first block; no fc."""
    _conv(out, p + "conv1.", 3, 64, 7, bias=False)
    _bn(out, p + "bn1.", 64)
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            q = f"{p}layer{stage}.{b}."
            _conv(out, q + "conv1.", inplanes, planes, 1, bias=False)
            _bn(out, q + "bn1.", planes)
            _conv(out, q + "conv2.", planes, planes, 3, bias=False)
            _bn(out, q + "bn2.", planes)
            _conv(out, q + "conv3.", planes, planes * 4, 1, bias=False)
            _bn(out, q + "bn3.", planes * 4)
            if b == 0:
                _conv(out, q + "downsample.0.", inplanes, planes * 4, 1, bias=False)
                _bn(out, q + "downsample.1.", planes * 4)
            inplanes = planes * 4


def mmdet_fpn(out: Layout, p: str, in_channels: Sequence[int], c: int, num_outs: int) -> None:
    """mmdet ``FPN(add_extra_convs='on_output')``: ConvModules without norm (``.conv``)."""
    for i, cin in enumerate(in_channels):
        _conv(out, f"{p}lateral_convs.{i}.conv.", cin, c, 1, bias=True)
    for i in range(num_outs):  # extra convs on the last output: c -> c
        _conv(out, f"{p}fpn_convs.{i}.conv.", c, c, 3, bias=True)


def _ffn(out: Layout, p: str, c: int, f: int) -> None:
    _linear(out, p + "ffns.0.layers.0.0.", c, f)
    _linear(out, p + "ffns.0.layers.1.", f, c)


def _deformable(out: Layout, p: str, cin: int, heads: int, levels: int, points: int) -> None:
    _linear(out, p + "sampling_offsets.", cin, heads * levels * points * 2)
    _linear(out, p + "attention_weights.", cin, heads * levels * points)


def encoder_layer(out: Layout, p: str, c: int, f: int) -> None:
    """``BEVFormerLayer``: TemporalSelfAttention (8 heads, 1 level, 4 points, 2 BEV copies),
    SpatialCrossAttention (MSDeformableAttention3D 8 heads, 4 levels, 8 points), FFN, 3 LN."""
    tsa = p + "attentions.0."
    _deformable(out, tsa, 2 * c, 2 * 8, 1, 4)  # num_bev_queue * heads
    _linear(out, tsa + "value_proj.", c, c)
    _linear(out, tsa + "output_proj.", c, c)
    sca = p + "attentions.1."
    _deformable(out, sca + "deformable_attention.", c, 8, 4, 8)
    _linear(out, sca + "deformable_attention.value_proj.", c, c)
    _linear(out, sca + "output_proj.", c, c)
    _ffn(out, p, c, f)
    for i in range(3):
        _ln(out, f"{p}norms.{i}.", c)


def decoder_layer(out: Layout, p: str, c: int, f: int) -> None:
    """``DetrTransformerDecoderLayer``: (Group)MultiheadAttention, CustomMSDeformableAttention
    (8 heads, 1 level, 4 points), FFN, 3 LN."""
    mha = p + "attentions.0.attn."
    _add(out, mha + "in_proj_weight", 3 * c, c)
    _add(out, mha + "in_proj_bias", 3 * c)
    _linear(out, mha + "out_proj.", c, c)
    ca = p + "attentions.1."
    _deformable(out, ca, c, 8, 1, 4)
    _linear(out, ca + "value_proj.", c, c)
    _linear(out, ca + "output_proj.", c, c)
    _ffn(out, p, c, f)
    for i in range(3):
        _ln(out, f"{p}norms.{i}.", c)


def resnet_fusion(out: Layout, p: str, cin: int, inter: int, cout: int, layers: int = 3) -> None:
    """transformerV2 ``ResNetFusion``: mmdet BasicBlocks (3x3 convs without bias, SyncBN)."""
    for i in range(layers):
        q = f"{p}layers.{i}."
        c0 = cin if i == 0 else inter
        _conv(out, q + "conv1.", c0, inter, 3, bias=False)
        _bn(out, q + "bn1.", inter)
        _conv(out, q + "conv2.", inter, inter, 3, bias=False)
        _bn(out, q + "bn2.", inter)
        if i == 0 and inter != cin:
            _conv(out, q + "downsample.0.", cin, inter, 3, bias=False)
            _bn(out, q + "downsample.1.", inter)
    _linear(out, p + "layer_norm.0.", inter, cout)
    _ln(out, p + "layer_norm.1.", cout)


def bevformer_head(
    out: Layout,
    p: str,
    *,
    frames: Sequence[int],
    group_detr: int,
    inter_channels: int | None,
    num_classes: int = 10,
    c: int = 256,
    f: int = 512,
    bev_hw: tuple[int, int] = (200, 200),
    num_query: int = 900,
    layers: int = 6,
) -> None:
    """``BEVFormerHead[_GroupDETR]`` with ``PerceptionTransformerV2``."""
    h, w = bev_hw
    _add(out, p + "positional_encoding.row_embed.weight", h, c // 2)
    _add(out, p + "positional_encoding.col_embed.weight", w, c // 2)
    t = p + "transformer."
    _add(out, t + "level_embeds", 4, c)
    _add(out, t + "cams_embeds", 6, c)
    for i in range(layers):
        encoder_layer(out, f"{t}encoder.layers.{i}.", c, f)
    for i in range(layers):
        decoder_layer(out, f"{t}decoder.layers.{i}.", c, f)
    _linear(out, t + "reference_points.", c, 3)
    if len(frames) > 1:
        cin = len(frames) * c
        resnet_fusion(out, t + "fusion.", cin, inter_channels or cin, c)
    for i in range(layers):
        q = f"{p}cls_branches.{i}."
        _linear(out, q + "0.", c, c)
        _ln(out, q + "1.", c)
        _linear(out, q + "3.", c, c)
        _ln(out, q + "4.", c)
        _linear(out, q + "6.", c, num_classes)
    for i in range(layers):
        q = f"{p}reg_branches.{i}."
        _linear(out, q + "0.", c, c)
        _linear(out, q + "2.", c, c)
        _linear(out, q + "4.", c, 10)
    _add(out, p + "bev_embedding.weight", h * w, c)
    _add(out, p + "query_embedding.weight", num_query * group_detr, 2 * c)
    _add(out, p + "code_weights", 10)


def _tower(out: Layout, p: str, c: int, convs: int = 4, levels: int = 5) -> None:
    for i in range(convs):
        _add(out, f"{p}{i}.weight", c, c, 3, 3)  # detectron2 Conv2d, bias=False with a norm
        for lvl in range(levels):
            _bn(out, f"{p}{i}.norm.{lvl}.", c)


def nuscenes_dd3d(out: Layout, p: str, num_classes: int = 10, c: int = 256, levels: int = 5):
    """``NuscenesDD3D``: ``fcos2d_head``, ``fcos3d_head``, then ``attr_logits`` and ``speed``."""
    k = num_classes
    q = p + "fcos2d_head."
    _tower(out, q + "cls_tower.", c)
    _tower(out, q + "box2d_tower.", c)
    _conv(out, q + "cls_logits.", c, k, 3, bias=True)
    _conv(out, q + "box2d_reg.", c, 4, 3, bias=True)
    _conv(out, q + "centerness.", c, 1, 3, bias=True)
    for lvl in range(levels):
        _add(out, f"{q}scales_box2d_reg.{lvl}.scale", 1)
    q = p + "fcos3d_head."
    _add(out, q + "mean_depth_per_level", levels)
    _add(out, q + "std_depth_per_level", levels)
    _tower(out, q + "box3d_tower.", c)
    _conv(out, q + "box3d_quat.0.", c, 4 * k, 3, bias=True)
    _conv(out, q + "box3d_ctr.0.", c, 2 * k, 3, bias=True)
    _conv(out, q + "box3d_depth.0.", c, 1 * k, 3, bias=False)  # use_scale: no bias
    _conv(out, q + "box3d_size.0.", c, 3 * k, 3, bias=True)
    _conv(out, q + "box3d_conf.0.", c, 1 * k, 3, bias=True)
    for name in ("scales_proj_ctr", "scales_size", "scales_conf", "scales_depth"):
        for lvl in range(levels):
            _add(out, f"{q}{name}.{lvl}.scale", 1)
    for lvl in range(levels):
        _add(out, f"{q}offsets_depth.{lvl}.bias", 1)
    _conv(out, p + "attr_logits.", c, 3, 3, bias=True)  # MAX_NUM_ATTRIBUTES
    _conv(out, p + "speed.", c, 1, 3, bias=True)


def official_layout(name: str = "r50-t1-base", **head: Any) -> Layout:
    """Every tensor of the official ``bevformerv2-{name}-24ep`` checkpoint's ``state_dict``;
    ``head`` overrides :func:`bevformer_head` arguments (smaller BEV, fewer layers)."""
    cfg = {**OFFICIAL_CONFIGS[name], **head}
    out: Layout = {}
    mmdet_resnet50(out, "img_backbone.")
    mmdet_fpn(out, "img_neck.", (512, 1024, 2048), 256, 5)
    bevformer_head(out, "pts_bbox_head.", **cfg)
    nuscenes_dd3d(out, "fcos3d_bbox_head.")
    return out


def random_state_dict(layout: Layout, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the layout's shapes, scaled so that a forward pass stays finite:
    matrices and kernels N(0, 1/fan_in), BN variances in [1, 2), vectors 1 + N(0, 0.01) for
    ``weight`` and N(0, 0.01) otherwise, int64 counters in 0..99."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in layout.items():
        if dtype == I64:
            state[key] = torch.randint(0, 100, shape, generator=gen, dtype=dtype)
            continue
        value = torch.randn(shape, generator=gen, dtype=dtype)
        if len(shape) >= 2:
            value = value / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("running_var"):
            value = 1.0 + torch.rand(shape, generator=gen, dtype=dtype)
        else:
            value = value * 0.1 + (1.0 if key.endswith("weight") else 0.0)
        state[key] = value
    return state


def mmcv_checkpoint(state: dict[str, torch.Tensor], config_name: str) -> dict:
    """The wrapper mmcv 1.x ``save_checkpoint`` writes around a state dict."""
    return {
        "meta": {
            "mmcv_version": "1.4.0",
            "CLASSES": OFFICIAL_CLASSES,
            "config": f"# bevformerv2-{config_name}-24ep.py\nplugin = True\n",
            "epoch": 24,
            "iter": 168768,
        },
        "state_dict": state,
    }
