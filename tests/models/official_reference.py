"""An independent recomputation of the official BEVFormer v2 inference forward, for tests.

Plain ``torch`` + ``torch.nn.functional`` re-derived from the formulas of the official sources
(fundamentalvision/BEVFormer at 66b65f3 and the mmcv 1.x / mmdet 2.x / mmdet3d 0.17 modules it
builds on); nothing here imports the project's ``bevformer.models``, ``backbones`` or ``ops``,
so the project's model can be held to it. It reads a state dict in the **official key layout**
(``img_backbone.*``, ``img_neck.*``, ``pts_bbox_head.*``) and runs what ``BEVFormerV2.
simple_test`` runs at test time (``detectors/bevformerV2.py``: ``obtain_history_bev``,
``extract_feat``, ``simple_test_pts``):

1. per frame, oldest first: mmdet ``ResNet`` (``style='caffe'``: the stride of a downsampling
   bottleneck sits on its first 1x1 conv; BN on running statistics) -> mmdet ``FPN``
   (``add_extra_convs='on_output'``, ``relu_before_extra_convs=True``; all ``num_outs`` maps
   are computed, the first ``num_levels`` feed the encoder);
2. ``PerceptionTransformerBEVEncoder.forward`` (``modules/transformerV2.py``): camera and level
   embeddings added to the flattened maps, then ``BEVFormerEncoder`` (``modules/encoder.py``:
   ``get_reference_points`` 3D/2D, ``point_sampling``) with ``BEVFormerLayer`` layers in the
   order ``self_attn, norm, cross_attn, norm, ffn, norm``:
   - ``TemporalSelfAttention`` (``modules/temporal_self_attention.py``) with ``value=None``:
     the value pair is ``[query, query]`` (no positional embedding), offsets and weights come
     from ``cat(value[:bs], query + bev_pos)``, the two copies are averaged;
   - ``SpatialCrossAttention`` + ``MSDeformableAttention3D``
     (``modules/spatial_cross_attention.py``): the queries each camera sees (``bev_mask`` of
     batch 0) are gathered, attend to that camera's maps with ``num_points / D`` points around
     each of the D projected z-anchors, are scattered back and averaged over the hit cameras,
     then ``output_proj`` and the residual;
   - mmcv ``FFN`` (Linear, ReLU, Linear, residual) and ``LayerNorm``s;
3. for T > 1, ``PerceptionTransformerV2.forward``: missing past slots copy the next-newer BEV,
   and ``ResNetFusion`` (mmdet ``BasicBlock`` x ``num_fusion``, then Linear + LayerNorm per
   cell) fuses the T BEVs, oldest first;
4. the decoder (``modules/decoder.py``: ``DetectionTransformerDecoder`` with box refinement;
   mmdet ``DetrTransformerDecoderLayer`` = mmcv ``MultiheadAttention``, norm,
   ``CustomMSDeformableAttention`` over the BEV, norm, FFN, norm) and ``BEVFormerHead.forward``
   (``dense_heads/bevformer_head.py``: ``query_embedding`` split into (query_pos, query),
   ``reference_points = sigmoid(Linear(query_pos))``, per-layer cls/reg branches, centres
   mapped into ``pc_range``);
5. ``NMSFreeCoder.decode`` (``core/bbox/coders/nms_free_coder.py``) on the last layer and
   ``BEVFormerHead.get_bboxes``, which sets ``z = cz - h / 2`` (mmdet3d 0.17
   ``LiDARInstance3DBoxes`` store the bottom centre).

The deformable sampling is mmcv's ``multi_scale_deformable_attn_pytorch`` formula
(``grid_sample`` at ``2 * loc - 1``, bilinear, zeros padding, ``align_corners=False``).

One deliberate difference: the official ``point_sampling`` always projects in float32
(``force_fp32``, then ``.to(torch.float32)``); here the projection runs in float32 or in the
input dtype when that is wider, so a float64 run is float64 throughout.

Inputs (batch 1, as the official test loop): ``img [1, T, N, 3, H, W]`` normalised and padded,
``lidar2img [1, T, N, 4, 4]`` (past frames already re-expressed in the current lidar frame),
``img_shape`` the padded (H, W). Outputs: the BEV fed to the decoder ``[1, bev_h * bev_w, C]``
(fused for T > 1; the official ``outs['bev_embed']`` is its ``[Q, 1, C]`` transpose), every
decoder layer's logits and codes, and the decoded boxes ``[K, 9]`` (x, y, z bottom, w, l, h,
yaw, vx, vy in the lidar frame), scores ``[K]`` and labels ``[K]`` in the official
(alphabetical) class order :data:`OFFICIAL_CLASSES`.

Legend: T frames, N cameras, Q BEV cells (bev_h * bev_w), D z-anchors, L levels, P points,
h heads, C channels, Qd decoder queries, K classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "OFFICIAL_CLASSES",
    "OfficialOutput",
    "OfficialSettings",
    "official_camera_hits",
    "official_forward",
    "official_key_shapes",
    "random_official_state_dict",
]

# ``class_names`` of the official ``projects/configs/bevformerv2/*.py`` (alphabetical)
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

# mmdet ResNet: bottlenecks per stage
_RESNET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_BN_EPS = 1e-5  # mmcv build_norm_layer('BN' / 'SyncBN') -> torch default
_LN_EPS = 1e-5  # mmcv build_norm_layer('LN') and nn.LayerNorm -> torch default


@dataclass(frozen=True)
class OfficialSettings:
    """The hyper-parameters of an official ``bevformerv2`` config the forward depends on.

    Defaults are ``bevformerv2-r50-t1-base-24ep.py``; ``frames`` with more than one entry
    turns on ``ResNetFusion`` (``inter_channels`` None = ``len(frames) * embed_dims``, the t2
    setting).
    """

    bev_h: int = 200
    bev_w: int = 200
    pc_range: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    frames: tuple[int, ...] = (0,)
    embed_dims: int = 256
    pos_feats: int = 128
    ffn_dims: int = 512
    num_cams: int = 6
    num_levels: int = 4
    num_outs: int = 5  # FPN outputs (P3-P7); the encoder reads the first num_levels
    resnet_depth: int = 50
    resnet_out_indices: tuple[int, ...] = (1, 2, 3)
    num_points_in_pillar: int = 4
    encoder_layers: int = 6
    num_heads: int = 8
    tsa_points: int = 4
    sca_points: int = 8
    decoder_layers: int = 6
    decoder_points: int = 4
    num_query: int = 900
    num_classes: int = 10
    code_size: int = 10
    max_num: int = 300
    post_center_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    num_fusion: int = 3
    inter_channels: int | None = None


@dataclass
class OfficialOutput:
    """What :func:`official_forward` returns (shapes in the module docstring)."""

    bev_embed: Tensor  # [1, Q, C]: the BEV the decoder reads (fused for T > 1)
    frame_bevs: list[Tensor | None]  # per frame slot, the encoder output [1, Q, C] or None
    all_cls_scores: Tensor  # [Ldec, 1, Qd, K] logits, official class order
    all_bbox_preds: Tensor  # [Ldec, 1, Qd, 10] codes, centres in metres
    bboxes: Tensor  # [M, 9] decoded boxes, z at the bottom (mmdet3d 0.17 LiDAR boxes)
    scores: Tensor  # [M]
    labels: Tensor  # [M], indices into OFFICIAL_CLASSES


class _Weights:
    """Reads official keys with a shape check and remembers every key it was asked for.

    Without a state dict it returns zeros of the asked shape, so one run lists the keys and
    shapes the forward reads (:func:`official_key_shapes`).
    """

    def __init__(self, state: Mapping[str, Tensor] | None, dtype: torch.dtype) -> None:
        self.state = state
        self.dtype = dtype
        self.seen: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}

    def __call__(self, key: str, *shape: int) -> Tensor:
        self.seen[key] = (tuple(shape), torch.float32)
        if self.state is None:
            return torch.zeros(shape, dtype=self.dtype)
        if key not in self.state:
            raise KeyError(
                f"official state dict has no {key!r} (expected shape {tuple(shape)}); pass a "
                "checkpoint in the official BEVFormer v2 layout (mmdet3d 0.17 key names)"
            )
        value = self.state[key]
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{key}: expected shape {tuple(shape)}, found {tuple(value.shape)}; the settings "
                "do not match the checkpoint's config"
            )
        return value.to(self.dtype)

    def declare(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """Lists a key of the official checkpoint that inference does not read."""
        self.seen[key] = (tuple(shape), dtype)


# ----------------------------------------------------------------------------- small blocks


def _linear(w: _Weights, name: str, x: Tensor, cin: int, cout: int) -> Tensor:
    return F.linear(x, w(f"{name}.weight", cout, cin), w(f"{name}.bias", cout))


def _layer_norm(w: _Weights, name: str, x: Tensor, channels: int) -> Tensor:
    weight, bias = w(f"{name}.weight", channels), w(f"{name}.bias", channels)
    return F.layer_norm(x, (channels,), weight, bias, _LN_EPS)


def _batch_norm(w: _Weights, name: str, x: Tensor, channels: int) -> Tensor:
    """BN (or SyncBN) in eval mode: ``(x - running_mean) / sqrt(running_var + eps) * w + b``."""
    w.declare(f"{name}.num_batches_tracked", (), torch.int64)
    return F.batch_norm(
        x,
        w(f"{name}.running_mean", channels),
        w(f"{name}.running_var", channels),
        w(f"{name}.weight", channels),
        w(f"{name}.bias", channels),
        training=False,
        eps=_BN_EPS,
    )


def _conv(
    w: _Weights,
    name: str,
    x: Tensor,
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = False,
) -> Tensor:
    weight = w(f"{name}.weight", cout, cin, k, k)
    b = w(f"{name}.bias", cout) if bias else None
    return F.conv2d(x, weight, b, stride=stride, padding=padding)


def _ffn(w: _Weights, name: str, x: Tensor, channels: int, hidden: int) -> Tensor:
    """mmcv ``FFN`` (num_fcs=2, ReLU, dropout off): ``x + fc2(relu(fc1(x)))``."""
    hid = F.relu(_linear(w, f"{name}.layers.0.0", x, channels, hidden))
    return x + _linear(w, f"{name}.layers.1", hid, hidden, channels)


def _inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """mmdet / BEVFormer ``inverse_sigmoid``: log(x / (1 - x)), both clamped to >= eps."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def _deform_sample(
    value: Tensor, shapes: Sequence[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """mmcv ``multi_scale_deformable_attn_pytorch`` formula.

    value ``[B, S, h, c]``; locations ``[B, Qn, h, L, P, 2]`` (x, y) in [0, 1] (pixel centres at
    (i + 0.5) / w); weights ``[B, Qn, h, L, P]`` -> ``[B, Qn, h * c]``. Each level is sampled
    by ``grid_sample(bilinear, zeros, align_corners=False)`` at ``2 * loc - 1`` and the samples
    are summed with the weights over levels and points.
    """
    B, _, h, c = value.shape
    Qn, P = locations.shape[1], locations.shape[4]
    out = value.new_zeros(B * h, c, Qn)
    start = 0
    for lvl, (hl, wl) in enumerate(shapes):
        v = value[:, start : start + hl * wl]  # [B, hl*wl, h, c]
        start += hl * wl
        v = v.permute(0, 2, 3, 1).reshape(B * h, c, hl, wl)
        grid = 2.0 * locations[:, :, :, lvl] - 1.0  # [B, Qn, h, P, 2]
        grid = grid.permute(0, 2, 1, 3, 4).reshape(B * h, Qn, P, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        wts = weights[:, :, :, lvl].permute(0, 2, 1, 3).reshape(B * h, 1, Qn, P)
        out = out + (sampled * wts).sum(-1)  # [B*h, c, Qn]
    return out.view(B, h * c, Qn).transpose(1, 2)


# ----------------------------------------------------------------------------- image features


def _resnet_caffe(w: _Weights, x: Tensor, depth: int, out_indices: Sequence[int]) -> list[Tensor]:
    """mmdet ``ResNet(style='caffe')`` in eval mode: ``[M, 3, H, W]`` -> C(i+2) for i in
    ``out_indices``."""
    p = "img_backbone"
    x = F.relu(_batch_norm(w, f"{p}.bn1", _conv(w, f"{p}.conv1", x, 3, 64, 7, 2, 3), 64))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    outs, inplanes = [], 64
    for i, blocks in enumerate(_RESNET_STAGES[depth]):
        planes = 64 * 2**i
        for j in range(blocks):
            name = f"{p}.layer{i + 1}.{j}"
            stride = (1 if i == 0 else 2) if j == 0 else 1
            out = _conv(w, f"{name}.conv1", x, inplanes, planes, 1, stride)  # caffe: stride here
            out = F.relu(_batch_norm(w, f"{name}.bn1", out, planes))
            out = _conv(w, f"{name}.conv2", out, planes, planes, 3, 1, 1)
            out = F.relu(_batch_norm(w, f"{name}.bn2", out, planes))
            out = _batch_norm(
                w, f"{name}.bn3", _conv(w, f"{name}.conv3", out, planes, planes * 4, 1), planes * 4
            )
            identity = x
            if j == 0:  # stride != 1 or inplanes != 4 * planes
                identity = _conv(w, f"{name}.downsample.0", x, inplanes, planes * 4, 1, stride)
                identity = _batch_norm(w, f"{name}.downsample.1", identity, planes * 4)
            x = F.relu(out + identity)
            inplanes = planes * 4
        if i in out_indices:
            outs.append(x)
    return outs


def _fpn(w: _Weights, inputs: Sequence[Tensor], out_channels: int, num_outs: int) -> list[Tensor]:
    """mmdet ``FPN(start_level=0, add_extra_convs='on_output', relu_before_extra_convs=True)``."""
    p = "img_neck"
    laterals = [
        _conv(w, f"{p}.lateral_convs.{i}.conv", x, x.shape[1], out_channels, 1, bias=True)
        for i, x in enumerate(inputs)
    ]
    for i in range(len(laterals) - 1, 0, -1):
        up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        laterals[i - 1] = laterals[i - 1] + up
    outs = [
        _conv(w, f"{p}.fpn_convs.{i}.conv", x, out_channels, out_channels, 3, 1, 1, bias=True)
        for i, x in enumerate(laterals)
    ]
    for i in range(len(laterals), num_outs):
        source = outs[-1] if i == len(laterals) else F.relu(outs[-1])
        outs.append(
            _conv(w, f"{p}.fpn_convs.{i}.conv", source, out_channels, out_channels, 3, 2, 1, True)
        )
    return outs


# ----------------------------------------------------------------------------- BEV encoder


def _reference_points_3d(s: OfficialSettings, dtype: torch.dtype) -> Tensor:
    """``get_reference_points(dim='3d')`` -> ``[D, Q, 3]`` normalised (x, y, z) in [0, 1]."""
    Z, D, H, W = s.pc_range[5] - s.pc_range[2], s.num_points_in_pillar, s.bev_h, s.bev_w
    zs = torch.linspace(0.5, Z - 0.5, D, dtype=dtype).view(D, 1, 1).expand(D, H, W) / Z
    xs = torch.linspace(0.5, W - 0.5, W, dtype=dtype).view(1, 1, W).expand(D, H, W) / W
    ys = torch.linspace(0.5, H - 0.5, H, dtype=dtype).view(1, H, 1).expand(D, H, W) / H
    return torch.stack((xs, ys, zs), -1).reshape(D, H * W, 3)


def _reference_points_2d(s: OfficialSettings, dtype: torch.dtype) -> Tensor:
    """``get_reference_points(dim='2d')`` -> ``[Q, 2]`` normalised (x, y) of the cell centres."""
    H, W = s.bev_h, s.bev_w
    ys, xs = torch.meshgrid(
        torch.linspace(0.5, H - 0.5, H, dtype=dtype),
        torch.linspace(0.5, W - 0.5, W, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs.reshape(-1) / W, ys.reshape(-1) / H), -1)


def _point_sampling(
    s: OfficialSettings, ref_3d: Tensor, lidar2img: Tensor, img_shape: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """``point_sampling``: ``ref_3d [D, Q, 3]``, ``lidar2img [N, 4, 4]`` ->
    ``ref_cam [N, Q, D, 2]`` (pixel / padded (W, H)) and ``bev_mask [N, Q, D]``."""
    dtype = torch.promote_types(ref_3d.dtype, torch.float32)
    lo = torch.tensor(s.pc_range[:3], dtype=dtype)
    hi = torch.tensor(s.pc_range[3:], dtype=dtype)
    pts = ref_3d.to(dtype) * (hi - lo) + lo  # metres
    pts = torch.cat([pts, torch.ones_like(pts[..., :1])], -1)  # [D, Q, 4]
    cam = torch.matmul(lidar2img.to(dtype)[:, None, None], pts[None, ..., None]).squeeze(-1)
    eps = 1e-5
    depth = cam[..., 2:3]  # [N, D, Q, 1]
    mask = depth > eps
    uv = cam[..., 0:2] / torch.maximum(depth, torch.ones_like(depth) * eps)
    uv = torch.stack([uv[..., 0] / img_shape[1], uv[..., 1] / img_shape[0]], -1)
    mask = mask & (uv[..., 1:2] > 0.0) & (uv[..., 1:2] < 1.0)
    mask = mask & (uv[..., 0:1] < 1.0) & (uv[..., 0:1] > 0.0)
    # [N, D, Q, .] -> [N, Q, D, .]
    return uv.permute(0, 2, 1, 3), mask.squeeze(-1).permute(0, 2, 1)


def _temporal_self_attention(
    w: _Weights, name: str, s: OfficialSettings, query: Tensor, bev_pos: Tensor, ref_2d: Tensor
) -> Tensor:
    """``TemporalSelfAttention`` with ``value=None`` (BEVFormer v2): ``[1, Q, C]`` -> same."""
    C, h, P, nq = s.embed_dims, s.num_heads, s.tsa_points, 2
    bs, Q, _ = query.shape
    value = torch.stack([query, query], 1).reshape(bs * nq, Q, C)
    identity = query
    q = query + bev_pos
    q = torch.cat([value[:bs], q], -1)  # [bs, Q, 2C]
    value = _linear(w, f"{name}.value_proj", value, C, C).reshape(bs * nq, Q, h, C // h)
    offsets = _linear(w, f"{name}.sampling_offsets", q, 2 * C, nq * h * P * 2)
    offsets = offsets.view(bs, Q, h, nq, 1, P, 2)
    logits = _linear(w, f"{name}.attention_weights", q, 2 * C, nq * h * P)
    weights = logits.view(bs, Q, h, nq, P).softmax(-1).view(bs, Q, h, nq, 1, P)
    # (bs, Q, h, copy, ...) -> (bs * copy, Q, h, ...)
    weights = weights.permute(0, 3, 1, 2, 4, 5).reshape(bs * nq, Q, h, 1, P)
    offsets = offsets.permute(0, 3, 1, 2, 4, 5, 6).reshape(bs * nq, Q, h, 1, P, 2)
    ref = ref_2d[None, :, None, :].expand(bs * nq, Q, 1, 2)  # hybrid ref: [ref_2d, ref_2d]
    normaliser = torch.tensor([s.bev_w, s.bev_h], dtype=query.dtype)
    locations = ref[:, :, None, :, None, :] + offsets / normaliser
    out = _deform_sample(value, [(s.bev_h, s.bev_w)], locations, weights)  # [bs*2, Q, C]
    out = out.view(bs, nq, Q, C).mean(1)
    return _linear(w, f"{name}.output_proj", out, C, C) + identity


def _spatial_cross_attention(
    w: _Weights,
    name: str,
    s: OfficialSettings,
    query: Tensor,
    feats: Tensor,
    shapes: Sequence[tuple[int, int]],
    ref_cam: Tensor,
    bev_mask: Tensor,
) -> Tensor:
    """``SpatialCrossAttention`` + ``MSDeformableAttention3D``: query ``[1, Q, C]``, feats
    ``[N, S, C]``, ref_cam ``[N, Q, D, 2]``, bev_mask ``[N, Q, D]`` -> ``[1, Q, C]``."""
    C, h, L, P = s.embed_dims, s.num_heads, len(shapes), s.sca_points
    N, D = ref_cam.shape[0], ref_cam.shape[2]
    da = f"{name}.deformable_attention"
    slots = torch.zeros_like(query[0])  # [Q, C]
    hits = [bev_mask[i].sum(-1).nonzero().squeeze(-1) for i in range(N)]
    max_len = max(len(idx) for idx in hits)
    # rebatch: camera i gets the queries it sees, zero-padded to max_len
    q = query.new_zeros(N, max_len, C)
    ref = ref_cam.new_zeros(N, max_len, D, 2)
    for i, idx in enumerate(hits):
        q[i, : len(idx)] = query[0, idx]
        ref[i, : len(idx)] = ref_cam[i, idx]
    value = _linear(w, f"{da}.value_proj", feats, C, C).view(N, -1, h, C // h)
    offsets = _linear(w, f"{da}.sampling_offsets", q, C, h * L * P * 2).view(N, max_len, h, L, P, 2)
    logits = _linear(w, f"{da}.attention_weights", q, C, h * L * P)
    weights = logits.view(N, max_len, h, L * P).softmax(-1).view(N, max_len, h, L, P)
    normaliser = torch.tensor([[wl, hl] for hl, wl in shapes], dtype=query.dtype)
    offsets = offsets / normaliser[:, None, :]  # per level, in units of that level's size
    # point p = (p // D) * D + anchor: P / D points around each of the D anchors
    offsets = offsets.view(N, max_len, h, L, P // D, D, 2)
    locations = (ref[:, :, None, None, None] + offsets).view(N, max_len, h, L, P, 2)
    out = _deform_sample(value, shapes, locations, weights)  # [N, max_len, C]
    for i, idx in enumerate(hits):
        slots[idx] = slots[idx] + out[i, : len(idx)]
    count = (bev_mask.sum(-1) > 0).sum(0).clamp(min=1).to(query.dtype)  # [Q] cameras per query
    slots = slots / count[:, None]
    return _linear(w, f"{name}.output_proj", slots, C, C)[None] + query


def _encoder(
    w: _Weights,
    s: OfficialSettings,
    mlvl_feats: Sequence[Tensor],
    lidar2img: Tensor,
    img_shape: Sequence[int],
) -> Tensor:
    """``PerceptionTransformerBEVEncoder.forward`` (``prev_bev=None``): mlvl_feats
    ``L x [N, C, h, w]``, lidar2img ``[N, 4, 4]`` -> bev ``[1, Q, C]``."""
    C, N, Q = s.embed_dims, mlvl_feats[0].shape[0], s.bev_h * s.bev_w
    head, tr = "pts_bbox_head", "pts_bbox_head.transformer"
    dtype = mlvl_feats[0].dtype
    bev_query = w(f"{head}.bev_embedding.weight", Q, C)[None]  # [1, Q, C]
    row = w(f"{head}.positional_encoding.row_embed.weight", s.bev_h, s.pos_feats)
    col = w(f"{head}.positional_encoding.col_embed.weight", s.bev_w, s.pos_feats)
    # mmdet LearnedPositionalEncoding: cell (i, j) -> cat(col[j], row[i]); flattened row-major
    bev_pos = torch.cat(
        [col[None].expand(s.bev_h, -1, -1), row[:, None].expand(-1, s.bev_w, -1)], -1
    ).reshape(1, Q, 2 * s.pos_feats)
    cams = w(f"{tr}.cams_embeds", s.num_cams, C)
    levels = w(f"{tr}.level_embeds", s.num_levels, C)
    flat, shapes = [], []
    for lvl, feat in enumerate(mlvl_feats):
        x = feat.flatten(2).transpose(1, 2)  # [N, h*w, C]
        flat.append(x + cams[:N, None, :] + levels[lvl])
        shapes.append((feat.shape[2], feat.shape[3]))
    feats = torch.cat(flat, 1)  # [N, S, C]

    ref_cam, bev_mask = _point_sampling(s, _reference_points_3d(s, dtype), lidar2img, img_shape)
    ref_cam = ref_cam.to(dtype)
    ref_2d = _reference_points_2d(s, dtype)
    query = bev_query
    for i in range(s.encoder_layers):
        name = f"{tr}.encoder.layers.{i}"
        query = _temporal_self_attention(w, f"{name}.attentions.0", s, query, bev_pos, ref_2d)
        query = _layer_norm(w, f"{name}.norms.0", query, C)
        query = _spatial_cross_attention(
            w, f"{name}.attentions.1", s, query, feats, shapes, ref_cam, bev_mask
        )
        query = _layer_norm(w, f"{name}.norms.1", query, C)
        query = _ffn(w, f"{name}.ffns.0", query, C, s.ffn_dims)
        query = _layer_norm(w, f"{name}.norms.2", query, C)
    return query


def _resnet_fusion(w: _Weights, s: OfficialSettings, bevs: Sequence[Tensor]) -> Tensor:
    """``ResNetFusion``: T x ``[1, Q, C]`` (oldest first) -> ``[1, Q, C]``."""
    name = "pts_bbox_head.transformer.fusion"
    C, T = s.embed_dims, len(bevs)
    cin = T * C
    inter = s.inter_channels if s.inter_channels is not None else cin
    maps = [b.reshape(1, s.bev_h, s.bev_w, C).permute(0, 3, 1, 2) for b in bevs]
    x = torch.cat(maps, 1)  # [1, T*C, H, W]
    for k in range(s.num_fusion):
        blk = f"{name}.layers.{k}"
        c_in = cin if k == 0 else inter
        out = F.relu(
            _batch_norm(w, f"{blk}.bn1", _conv(w, f"{blk}.conv1", x, c_in, inter, 3, 1, 1), inter)
        )
        out = _batch_norm(
            w, f"{blk}.bn2", _conv(w, f"{blk}.conv2", out, inter, inter, 3, 1, 1), inter
        )
        identity = x
        if k == 0 and inter != cin:  # 3x3 conv + BN shortcut
            identity = _conv(w, f"{blk}.downsample.0", x, cin, inter, 3, 1, 1)
            identity = _batch_norm(w, f"{blk}.downsample.1", identity, inter)
        x = F.relu(out + identity)
    x = x.flatten(2).transpose(1, 2)  # [1, Q, inter]
    x = _linear(w, f"{name}.layer_norm.0", x, inter, C)
    return _layer_norm(w, f"{name}.layer_norm.1", x, C)


# ----------------------------------------------------------------------------- decoder and head


def _multihead_attention(
    w: _Weights, name: str, s: OfficialSettings, query: Tensor, pos: Tensor
) -> Tensor:
    """mmcv ``MultiheadAttention`` (torch ``nn.MultiheadAttention`` inside, dropout off) as the
    decoder's self-attention: q = k = query + pos, v = query; residual added."""
    C, h = s.embed_dims, s.num_heads
    bs, Qd, _ = query.shape
    w_in = w(f"{name}.attn.in_proj_weight", 3 * C, C)
    b_in = w(f"{name}.attn.in_proj_bias", 3 * C)
    qk_in = query + pos
    q = F.linear(qk_in, w_in[:C], b_in[:C])
    k = F.linear(qk_in, w_in[C : 2 * C], b_in[C : 2 * C])
    v = F.linear(query, w_in[2 * C :], b_in[2 * C :])
    q, k, v = (t.view(bs, Qd, h, C // h).transpose(1, 2) for t in (q, k, v))  # [bs, h, Qd, c]
    attn = (q @ k.transpose(-1, -2) / math.sqrt(C // h)).softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(bs, Qd, C)
    return query + _linear(w, f"{name}.attn.out_proj", out, C, C)


def _bev_deformable_attention(
    w: _Weights,
    name: str,
    s: OfficialSettings,
    query: Tensor,
    pos: Tensor,
    bev: Tensor,
    ref_xy: Tensor,
) -> Tensor:
    """``CustomMSDeformableAttention`` over the BEV (one level): query, pos ``[1, Qd, C]``,
    bev ``[1, Q, C]``, ref_xy ``[1, Qd, 2]`` in [0, 1] -> ``[1, Qd, C]`` (residual added)."""
    C, h, P = s.embed_dims, s.num_heads, s.decoder_points
    bs, Qd, _ = query.shape
    q = query + pos
    value = _linear(w, f"{name}.value_proj", bev, C, C).view(bs, -1, h, C // h)
    offsets = _linear(w, f"{name}.sampling_offsets", q, C, h * P * 2).view(bs, Qd, h, 1, P, 2)
    logits = _linear(w, f"{name}.attention_weights", q, C, h * P)
    weights = logits.view(bs, Qd, h, P).softmax(-1).view(bs, Qd, h, 1, P)
    normaliser = torch.tensor([s.bev_w, s.bev_h], dtype=query.dtype)
    locations = ref_xy[:, :, None, None, None, :] + offsets / normaliser
    out = _deform_sample(value, [(s.bev_h, s.bev_w)], locations, weights)
    return query + _linear(w, f"{name}.output_proj", out, C, C)


def _cls_branch(w: _Weights, name: str, s: OfficialSettings, x: Tensor) -> Tensor:
    """2 x (Linear, LayerNorm, ReLU) + Linear(C, K): Sequential indices 0, 1, 3, 4, 6."""
    C = s.embed_dims
    for lin, norm in ((0, 1), (3, 4)):
        x = F.relu(_layer_norm(w, f"{name}.{norm}", _linear(w, f"{name}.{lin}", x, C, C), C))
    return _linear(w, f"{name}.6", x, C, s.num_classes)


def _reg_branch(w: _Weights, name: str, s: OfficialSettings, x: Tensor) -> Tensor:
    """2 x (Linear, ReLU) + Linear(C, 10): Sequential indices 0, 2, 4."""
    C = s.embed_dims
    x = F.relu(_linear(w, f"{name}.0", x, C, C))
    x = F.relu(_linear(w, f"{name}.2", x, C, C))
    return _linear(w, f"{name}.4", x, C, s.code_size)


def _head(w: _Weights, s: OfficialSettings, bev: Tensor) -> tuple[Tensor, Tensor]:
    """Decoder + ``BEVFormerHead.forward`` outputs: bev ``[1, Q, C]`` -> logits
    ``[Ldec, 1, Qd, K]``, codes ``[Ldec, 1, Qd, 10]``."""
    C, head = s.embed_dims, "pts_bbox_head"
    tr = f"{head}.transformer"
    w.declare(f"{head}.code_weights", (s.code_size,), torch.float32)
    embeds = w(f"{head}.query_embedding.weight", s.num_query, 2 * C)
    query_pos, query = embeds[None, :, :C], embeds[None, :, C:]
    reference = _linear(w, f"{tr}.reference_points", query_pos, C, 3).sigmoid()  # [1, Qd, 3]
    x0, y0, z0, x1, y1, z1 = s.pc_range
    all_cls, all_codes = [], []
    for lid in range(s.decoder_layers):
        name = f"{tr}.decoder.layers.{lid}"
        used = reference  # the reference this layer attends with and refines
        query = _multihead_attention(w, f"{name}.attentions.0", s, query, query_pos)
        query = _layer_norm(w, f"{name}.norms.0", query, C)
        query = _bev_deformable_attention(
            w, f"{name}.attentions.1", s, query, query_pos, bev, used[..., :2]
        )
        query = _layer_norm(w, f"{name}.norms.1", query, C)
        query = _ffn(w, f"{name}.ffns.0", query, C, s.ffn_dims)
        query = _layer_norm(w, f"{name}.norms.2", query, C)
        # decoder refinement (with_box_refine): reg_branches[lid] of the layer output
        tmp = _reg_branch(w, f"{head}.reg_branches.{lid}", s, query)
        logit = _inverse_sigmoid(used)
        reference = torch.cat(
            [tmp[..., 0:2] + logit[..., 0:2], tmp[..., 4:5] + logit[..., 2:3]], -1
        ).sigmoid()
        # head outputs of this layer, from the reference it used
        cls = _cls_branch(w, f"{head}.cls_branches.{lid}", s, query)
        xy = (tmp[..., 0:2] + logit[..., 0:2]).sigmoid()
        z = (tmp[..., 4:5] + logit[..., 2:3]).sigmoid()
        codes = torch.cat(
            [
                xy[..., 0:1] * (x1 - x0) + x0,
                xy[..., 1:2] * (y1 - y0) + y0,
                tmp[..., 2:4],
                z * (z1 - z0) + z0,
                tmp[..., 5:],
            ],
            -1,
        )
        all_cls.append(cls)
        all_codes.append(codes)
    return torch.stack(all_cls), torch.stack(all_codes)


def _decode(s: OfficialSettings, cls: Tensor, codes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``NMSFreeCoder.decode_single`` + ``get_bboxes``: logits ``[Qd, K]``, codes ``[Qd, 10]``
    -> boxes ``[M, 9]`` (bottom z), scores ``[M]``, labels ``[M]``."""
    scores, index = cls.sigmoid().reshape(-1).topk(s.max_num)
    labels = index % s.num_classes
    codes = codes[index // s.num_classes]
    # denormalize_bbox: (cx, cy, cz, exp w, exp l, exp h, atan2(sin, cos), vx, vy)
    boxes = torch.cat(
        [
            codes[:, 0:2],
            codes[:, 4:5],
            codes[:, 2:4].exp(),
            codes[:, 5:6].exp(),
            torch.atan2(codes[:, 6:7], codes[:, 7:8]),
            codes[:, 8:10],
        ],
        -1,
    )
    bounds = torch.tensor(s.post_center_range, dtype=boxes.dtype)
    keep = (boxes[:, :3] >= bounds[:3]).all(1) & (boxes[:, :3] <= bounds[3:]).all(1)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    boxes = torch.cat([boxes[:, :2], boxes[:, 2:3] - boxes[:, 5:6] * 0.5, boxes[:, 3:]], -1)
    return boxes, scores, labels


# ----------------------------------------------------------------------------- entry points


def _run(
    w: _Weights,
    s: OfficialSettings,
    img: Tensor,
    lidar2img: Tensor,
    img_shape: Sequence[int],
    frame_valid: Sequence[bool] | None,
) -> OfficialOutput:
    if img.dim() != 6 or img.shape[0] != 1:
        raise ValueError(f"img must be [1, T, N, 3, H, W] (batch 1), got {tuple(img.shape)}")
    T = img.shape[1]
    if T != len(s.frames) or 0 not in s.frames:
        raise ValueError(f"img has {T} frames, settings.frames is {s.frames} (must contain 0)")
    valid = [True] * T if frame_valid is None else [bool(v) for v in frame_valid]
    cur = s.frames.index(0)
    with torch.no_grad():
        bevs: list[Tensor | None] = [None] * T
        for t in range(T):  # obtain_history_bev (past frames), then the current frame
            if t != cur and not valid[t]:
                continue
            backbone = _resnet_caffe(w, img[0, t], s.resnet_depth, s.resnet_out_indices)
            fpn = _fpn(w, backbone, s.embed_dims, s.num_outs)
            bevs[t] = _encoder(w, s, fpn[: s.num_levels], lidar2img[0, t], img_shape)
        bev = bevs[cur]
        if T > 1:
            slots = list(bevs)
            for i in range(cur - 1, -1, -1):  # older slots copy the next-newer BEV
                if slots[i] is None:
                    slots[i] = slots[i + 1]
            for i in range(cur + 1, T):
                if slots[i] is None:
                    slots[i] = slots[i - 1]
            bev = _resnet_fusion(w, s, slots)
        all_cls, all_codes = _head(w, s, bev)
        boxes, scores, labels = _decode(s, all_cls[-1, 0], all_codes[-1, 0])
    return OfficialOutput(bev, bevs, all_cls, all_codes, boxes, scores, labels)


def official_forward(
    state: Mapping[str, Tensor],
    img: Tensor,
    lidar2img: Tensor,
    img_shape: Sequence[int],
    settings: OfficialSettings,
    frame_valid: Sequence[bool] | None = None,
) -> OfficialOutput:
    """The official BEVFormer v2 test-time forward on an official-layout ``state``.

    ``img [1, T, N, 3, H, W]`` and ``lidar2img [1, T, N, 4, 4]`` in ``settings.frames`` order;
    ``img_shape`` the padded (H, W); ``frame_valid [T]`` marks the past frames that exist
    (missing ones copy the next-newer BEV). Computes in ``img``'s dtype. Raises ``KeyError`` /
    ``ValueError`` naming a key that is missing or has the wrong shape.
    """
    w = _Weights(state, img.dtype)
    return _run(w, settings, img, lidar2img.to(img.dtype), img_shape, frame_valid)


def official_camera_hits(
    settings: OfficialSettings, lidar2img: Tensor, img_shape: Sequence[int]
) -> Tensor:
    """Cameras that see each BEV cell (``bev_mask`` of ``point_sampling``, any z-anchor):
    ``lidar2img [N, 4, 4]`` -> ``[bev_h * bev_w]`` counts, the divisor of the SCA average."""
    ref_3d = _reference_points_3d(settings, lidar2img.dtype)
    _, mask = _point_sampling(settings, ref_3d, lidar2img, img_shape)
    return mask.any(-1).sum(0)


def official_key_shapes(
    settings: OfficialSettings,
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Official key -> (shape, dtype) of every tensor :func:`official_forward` reads, plus the
    checkpoint entries inference does not read (BN ``num_batches_tracked``, the head's
    ``code_weights``). Found by running the forward once on a zero state."""
    w = _Weights(None, torch.float32)
    T, N, size = len(settings.frames), 1, 32  # one small camera reads every key
    img = torch.zeros(1, T, N, 3, size, size)
    # a projection that sees part of the BEV: u = x + 16, v = y + 16, depth 1
    proj = torch.tensor([[1.0, 0, 0, 16], [0, 1.0, 0, 16], [0, 0, 0, 1], [0, 0, 0, 1]])
    _run(w, settings, img, proj.expand(1, T, N, 4, 4), (size, size), None)
    return dict(w.seen)


def _init_value(key: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Random values for one official key, at scales that keep activations informative."""

    def normal(std: float, mean: float = 0.0) -> Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        return normal(0.1)
    if leaf == "running_var":
        return torch.rand(shape, generator=gen) + 0.5
    is_norm = any(part in key for part in (".bn", ".norms.", "downsample.1", "layer_norm.1"))
    is_norm = is_norm or (
        "cls_branches" in key and key.split(".")[-2] in ("1", "4") and len(shape) == 1
    )
    if is_norm:
        return normal(0.1, 1.0) if leaf == "weight" else normal(0.1)
    if key.endswith(("bev_embedding.weight", "query_embedding.weight", "_embeds")):
        return normal(1.0)
    if "positional_encoding" in key:
        return torch.rand(shape, generator=gen)  # mmdet init: uniform [0, 1)
    if "sampling_offsets" in key:
        # small input dependence around a fixed spread of +-2 cells
        return normal(0.005) if leaf == "weight" else torch.rand(shape, generator=gen) * 4 - 2
    if "reference_points" in key:
        return normal(0.1) if leaf == "weight" else normal(0.2)
    if key.startswith("pts_bbox_head.cls_branches") and key.split(".")[-2] == "6":
        return normal(0.1) if leaf == "weight" else normal(0.5)
    if len(shape) == 4:  # convolutions: variance-preserving for ReLU nets
        fan_in = shape[1] * shape[2] * shape[3]
        return normal(math.sqrt(1.0 / fan_in))
    if leaf == "in_proj_weight" or (leaf == "weight" and len(shape) == 2):
        return normal(0.02) if shape[1] <= 512 else normal(math.sqrt(1.0 / shape[1]))
    return normal(0.02)


def random_official_state_dict(
    settings: OfficialSettings, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """A deterministic random state dict with every key of :func:`official_key_shapes`.

    Linear weights ~ N(0, 0.02), conv weights ~ N(0, 1/fan_in), norm scales ~ 1, BN running
    variances in [0.5, 1.5), sampling offsets a few cells, embeddings ~ N(0, 1).
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, kind) in sorted(official_key_shapes(settings).items()):
        if kind == torch.int64:
            state[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("code_weights"):
            state[key] = torch.tensor([1.0] * 8 + [0.2] * (shape[0] - 8), dtype=dtype)
        else:
            state[key] = _init_value(key, shape, gen).to(dtype)
    return state
