"""Perspective head of BEVFormer v2 (Yang et al., CVPR 2023): FCOS2D + FCOS3D (DD3D).

BEVFormer v2 supervises the image backbone directly with a monocular 3D detector on the FPN
levels P3-P7 (strides 8-128); its losses are added to the BEV detector's. The official head is
``NuscenesDD3D`` (BEVFormer ``projects/mmdet3d_plugin/dd3d/modeling/{core.py, fcos2d.py,
fcos3d.py, nuscenes_dd3d.py}``); this module rebuilds it from plain PyTorch and torchvision
(towers and scalars in :mod:`.layers`; the losses of a batch in :mod:`.batch_loss`, inference in
:mod:`.inference`; the official checkpoint key rules at the end of this module):

- FCOS2D: a classification and a box tower, each 4 x (conv3x3, BatchNorm per level, ReLU);
  class logits, ``ltrb = relu(scale_l * conv)`` (``scale_l`` starts at the stride) and
  centerness on them; nuScenes attribute logits (3) and speed (ReLU) from the class tower.
- FCOS3D: one 4-conv tower; class-specific predictors of the allocentric quaternion (4K),
  projected-centre offset (2K, ``scale_l`` starts at the stride), depth
  (K, ``mean_l + scale_l * conv`` with ``scale_l = 0.3 * std_l``, no conv bias), size (3K) and
  3D confidence (K). Channel ``c * K + k`` holds component c of class k.

The official towers use SyncBN. The towers here are built with plain BatchNorm; the training
launcher converts them to ``torch.nn.SyncBatchNorm`` in multi-GPU runs (config ``sync_bn``,
:mod:`bevformer.engine.sync_bn`).

Official training details reproduced (docs/ARCHITECTURE.md "Training procedure: official
behaviour and deliberate deviations"): the disentangled 3D-box loss uses DD3D's own smooth-L1
(``train_cfg.box3d_smooth_l1_form="official"``, :mod:`.config`: ``0.5 x^2`` below beta, no
division by beta), the speed loss fvcore's standard one; the detector feeds the head only the
cameras with boxes (``PerspectiveStage(cameras="annotated")``, config
``model.perspective.cameras``).

Shapes: B*N images (B samples x N cameras, camera-major within a sample), C channels,
K classes, L levels of size H_l x W_l, P = sum_l H_l*W_l locations of one image (level-major).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bevformer.models.perspective.batch_loss import batch_losses
from bevformer.models.perspective.coder import BOX3D_CHANNELS, NUM_ATTRIBUTES, canonical_box_sizes
from bevformer.models.perspective.config import PerspectiveTestCfg, PerspectiveTrainCfg
from bevformer.models.perspective.inference import predict_boxes
from bevformer.models.perspective.layers import OUTPUT_KEYS, Offset, Scale, Tower, predictor
from bevformer.models.perspective.targets import compute_locations
from bevformer.registry import MODELS

__all__ = ["PerspectiveHead", "Scale", "Offset", "Tower"]

# Depth prior (mean, std) in metres of the boxes each level is responsible for, P3-P7
# (bevformerv2 configs ``fcos3d_cfg.mean/std_depth_per_level``).
DEPTH_MEAN = (44.921, 20.252, 11.712, 7.166, 8.548)
DEPTH_STD = (24.331, 9.833, 6.223, 4.611, 8.275)


@MODELS.register_module()
class PerspectiveHead(nn.Module):
    """FCOS2D + FCOS3D head on P3-P7 with DD3D's targets, losses and inference.

    The architecture and box-coding arguments are flat; the training and inference settings
    are grouped as in mmdetection's heads. Defaults are the official BEVFormer v2 settings
    (the ``fcos3d_bbox_head`` of its ``projects/configs/bevformerv2/*.py``; official files
    relative to ``projects/mmdet3d_plugin/``):

    - ``num_classes`` = 10, ``in_channels`` = 256 (FPN channels), ``strides`` =
      (8, 16, 32, 64, 128) pixels of the levels P3-P7.
    - ``num_convs`` = 4: conv layers of each tower (``fcos2d_cfg.num_cls_convs /
      num_box_convs``, ``fcos3d_cfg.num_convs``; ``dd3d/modeling/{fcos2d,fcos3d}.py``).
    - ``depth_mean`` / ``depth_std``: per level the depth prior in metres
      (``fcos3d_cfg.mean_depth_per_level / std_depth_per_level``; ``fcos3d.py``
      ``FCOS3DHead``); ``depth_scale_init`` = 0.3: the depth scale starts at
      ``0.3 * std_l`` (``fcos3d_cfg.depth_scale_init_factor``).
    - ``canonical_sizes``: (K, 3) per-class (w, l, h) in metres that the predicted sizes scale;
      ``None`` the official ``fcos3d_loss_cfg.canon_box_sizes`` in this project's class order
      (:func:`~bevformer.models.perspective.coder.canonical_box_sizes`).
    - ``min_depth`` = 0.1, ``max_depth`` = 80.0 metres: clamp of the decoded depth;
      ``depth_factor`` = 500.0 pixels: the depth output is scaled by focal length / factor
      (``fcos3d_loss_cfg.min_depth / max_depth / scale_depth_by_focal_lengths_factor``;
      ``fcos3d.py``).
    - ``train_cfg``: dict (or :class:`~bevformer.models.perspective.config.PerspectiveTrainCfg`)
      of the target assignment and loss settings ``size_ranges`` (pixels), ``pos_radius``
      (strides) = 1.5, ``focal_alpha`` = 0.25, ``focal_gamma`` = 2.0, ``box3d_weight`` = 2.0,
      ``conf3d_weight`` = 1.0, ``conf3d_temperature`` = 1.0 (metres), ``smooth_l1_beta`` =
      0.05, ``box3d_smooth_l1_form`` = ``"official"``, ``attr_weight`` = 0.2,
      ``speed_weight`` = 0.2; kept as ``self.train_cfg``.
    - ``test_cfg``: dict (or :class:`~bevformer.models.perspective.config.PerspectiveTestCfg`)
      of the inference thresholds ``pre_nms_thresh`` = 0.05, ``pre_nms_topk`` = 1000,
      ``post_nms_topk`` = 100, ``nms_thresh`` = 0.6; kept as ``self.test_cfg``.

    Keys missing from ``train_cfg`` / ``test_cfg`` keep their defaults; an unknown key raises
    ``TypeError`` listing the accepted ones. Each key's meaning, unit and official source is in
    :mod:`bevformer.models.perspective.config`. ``train_cfg.box3d_smooth_l1_form`` is the
    smooth-L1 form of the disentangled corner loss
    (:func:`~bevformer.models.perspective.losses.smooth_l1`): ``"official"`` (default) as
    DD3D's ``dd3d/layers/smooth_l1_loss.py``, ``"standard"`` the Fast R-CNN form. The speed
    loss always uses the standard form, as the official ``NuscenesLoss`` (fvcore's
    ``smooth_l1_loss``).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 256,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        num_convs: int = 4,
        depth_mean: Sequence[float] = DEPTH_MEAN,
        depth_std: Sequence[float] = DEPTH_STD,
        depth_scale_init: float = 0.3,
        canonical_sizes: Sequence[Sequence[float]] | None = None,
        min_depth: float = 0.1,
        max_depth: float = 80.0,
        depth_factor: float = 500.0,
        train_cfg: PerspectiveTrainCfg | Mapping[str, Any] | None = None,
        test_cfg: PerspectiveTestCfg | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.train_cfg = PerspectiveTrainCfg.from_cfg(train_cfg)
        self.test_cfg = PerspectiveTestCfg.from_cfg(test_cfg)
        size_ranges = self.train_cfg.size_ranges
        num_levels = len(strides)
        if not len(depth_mean) == len(depth_std) == num_levels <= len(size_ranges):
            raise ValueError(
                f"expected a depth mean, a depth std and a size range per level ({num_levels} "
                f"strides), found {len(depth_mean)}, {len(depth_std)} and {len(size_ranges)}"
            )
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.min_depth, self.max_depth, self.depth_factor = min_depth, max_depth, depth_factor

        canon = canonical_box_sizes() if canonical_sizes is None else torch.tensor(canonical_sizes)
        if canon.shape != (num_classes, 3):
            raise ValueError(
                f"expected canonical (w, l, h) sizes of shape ({num_classes}, 3), found "
                f"{tuple(canon.shape)}; pass canonical_sizes for a custom class list"
            )
        self.register_buffer("canonical_sizes", canon.float(), persistent=False)

        c = in_channels
        self.cls_tower = Tower(c, num_convs, num_levels)
        self.box2d_tower = Tower(c, num_convs, num_levels)
        self.box3d_tower = Tower(c, num_convs, num_levels)
        self.cls_logits = predictor(c, num_classes)
        self.box2d_reg = predictor(c, 4)
        self.centerness = predictor(c, 1)
        self.attr_logits = predictor(c, NUM_ATTRIBUTES)
        self.speed = predictor(c, 1)
        self.box3d = nn.ModuleDict(
            {
                name: predictor(c, ch * num_classes, bias=name != "depth")
                for name, ch in BOX3D_CHANNELS.items()
            }
        )
        self.scales_box2d = nn.ModuleList(Scale(s) for s in self.strides)
        self.scales_proj_ctr = nn.ModuleList(Scale(s) for s in self.strides)
        self.scales_size = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.scales_conf = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.scales_depth = nn.ModuleList(Scale(depth_scale_init * s) for s in depth_std)
        self.offsets_depth = nn.ModuleList(Offset(m) for m in depth_mean)

    # ------------------------------------------------------------------ forward
    def forward(self, feats: Sequence[Tensor]) -> dict:
        """FPN maps, one (BN, C, H_l, W_l) per level -> raw outputs, per level lists of maps:
        ``cls_logits`` (BN, K), ``box2d`` (BN, 4) ltrb pixels, ``centerness`` (BN, 1),
        ``attr_logits`` (BN, 3), ``speed`` (BN, 1), ``quat`` (BN, 4K), ``proj_ctr`` (BN, 2K),
        ``depth`` (BN, K), ``size`` (BN, 3K), ``conf3d`` (BN, K), each x H_l x W_l; and
        ``locations``, per level (H_l*W_l, 2) pixel xy."""
        if len(feats) != len(self.strides):
            raise ValueError(
                f"expected {len(self.strides)} feature maps (strides {self.strides}), "
                f"found {len(feats)}"
            )
        out: dict[str, list[Tensor]] = {k: [] for k in (*OUTPUT_KEYS, "locations")}
        for lvl, x in enumerate(feats):
            cls_feat = self.cls_tower(x, lvl)
            box_feat = self.box2d_tower(x, lvl)
            box3d_feat = self.box3d_tower(x, lvl)
            out["cls_logits"].append(self.cls_logits(cls_feat))
            out["box2d"].append(F.relu(self.scales_box2d[lvl](self.box2d_reg(box_feat))))
            out["centerness"].append(self.centerness(box_feat))
            out["attr_logits"].append(self.attr_logits(cls_feat))
            out["speed"].append(F.relu(self.speed(cls_feat)))
            out["quat"].append(self.box3d["quat"](box3d_feat))
            out["proj_ctr"].append(self.scales_proj_ctr[lvl](self.box3d["proj_ctr"](box3d_feat)))
            depth = self.scales_depth[lvl](self.box3d["depth"](box3d_feat))
            out["depth"].append(self.offsets_depth[lvl](depth))
            out["size"].append(self.scales_size[lvl](self.box3d["size"](box3d_feat)))
            out["conf3d"].append(self.scales_conf[lvl](self.box3d["conf3d"](box3d_feat)))
            h, w = x.shape[-2:]
            out["locations"].append(compute_locations(h, w, self.strides[lvl], device=x.device))
        return out

    # ------------------------------------------------------------------ loss
    def loss(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """DD3D losses of one batch; ``targets`` holds one dict per image (see the module
        docstring of :mod:`bevformer.models.perspective`). Keys end with ``_mono``; computed by
        :func:`~bevformer.models.perspective.batch_loss.batch_losses`."""
        return batch_losses(self, outputs, targets)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(
        self, outputs: dict, intrinsics: Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        """Per-image 3D boxes in the camera frame after per-class 2D NMS.

        ``intrinsics`` (BN, 3, 3) of the augmented images, ``image_size`` (H, W). Returns per
        image ``boxes3d`` (D, 10): centre xyz, wlh, quaternion wxyz; ``scores`` (D,) 3D scores
        (2D score x 3D confidence); ``scores_2d``; ``labels`` (D,); ``boxes2d`` (D, 4) x1 y1 x2 y2;
        ``attributes`` (D,) DD3D attribute ids; ``speeds`` (D,).
        """
        return predict_boxes(
            outputs,
            intrinsics,
            image_size,
            self.canonical_sizes,
            self.test_cfg,
            min_depth=self.min_depth,
            max_depth=self.max_depth,
            depth_factor=self.depth_factor,
        )


# ---------------------------------------------------------------- official BEVFormer v2 keys
# Where this head's tensors sit in an official BEVFormer v2 checkpoint: the detector's
# ``fcos3d_bbox_head`` = DD3D ``NuscenesDD3D`` (BEVFormer ``dd3d/modeling/{core,fcos2d,fcos3d,
# nuscenes_dd3d}.py``). Tower convs are detectron2 ``Conv2d`` layers whose ``norm`` is a
# ``ModuleListDial`` of one BatchNorm per level (``tower.i.norm.l`` here ``tower.norms.i.l``);
# the shared class-specific predictors are ``box3d_{quat,ctr,depth,size,conf}.0`` with the
# channel layout of this head (``c * K + k``: ``reshape(-1, C, K)`` in ``FCOS3DLoss``).
# Rules are (regex matched at the start of the official key, replacement of the matched part).
_OFFICIAL_2D = r"^fcos3d_bbox_head\.fcos2d_head\."
_OFFICIAL_3D = r"^fcos3d_bbox_head\.fcos3d_head\."
OFFICIAL_BEVFORMERV2_KEYS = (
    (_OFFICIAL_2D + r"(cls|box2d)_tower\.(\d+)\.norm\.", r"\1_tower.norms.\2."),
    (_OFFICIAL_2D + r"(cls|box2d)_tower\.(\d+)\.weight$", r"\1_tower.convs.\2.weight"),
    (_OFFICIAL_2D + r"(cls_logits|box2d_reg|centerness)\.", r"\1."),
    (_OFFICIAL_2D + r"scales_box2d_reg\.", "scales_box2d."),
    (_OFFICIAL_3D + r"box3d_tower\.(\d+)\.norm\.", r"box3d_tower.norms.\1."),
    (_OFFICIAL_3D + r"box3d_tower\.(\d+)\.weight$", r"box3d_tower.convs.\1.weight"),
    (_OFFICIAL_3D + r"box3d_quat\.0\.", "box3d.quat."),
    (_OFFICIAL_3D + r"box3d_ctr\.0\.", "box3d.proj_ctr."),
    (_OFFICIAL_3D + r"box3d_depth\.0\.", "box3d.depth."),
    (_OFFICIAL_3D + r"box3d_size\.0\.", "box3d.size."),
    (_OFFICIAL_3D + r"box3d_conf\.0\.", "box3d.conf3d."),
    (_OFFICIAL_3D + r"(scales_(proj_ctr|size|conf|depth)|offsets_depth)\.", r"\1."),
    (r"^fcos3d_bbox_head\.(attr_logits|speed)\.", r"\1."),
)
# Official tensors without a counterpart: FCOS3D's depth-prior buffers only initialise
# ``offsets_depth`` / ``scales_depth``, whose trained values the checkpoint carries.
OFFICIAL_BEVFORMERV2_DROPPED = (
    "fcos3d_bbox_head.fcos3d_head.mean_depth_per_level",
    "fcos3d_bbox_head.fcos3d_head.std_depth_per_level",
)
# Keys (below this head) of the learnable scalars: DD3D ``Scale``/``Offset`` hold shape [1],
# :class:`Scale`/:class:`Offset` here a 0-d tensor.
OFFICIAL_BEVFORMERV2_SCALARS = r"(scales_\w+|offsets_depth)\.\d+\.(scale|bias)"


def official_class_channels(head: PerspectiveHead) -> dict[str, int]:
    """Keys (below the head) of the class-indexed tensors -> channels per class (output
    channel ``c * K + k`` is component c of class k): class logits and the 3D predictors."""
    out = {"cls_logits.weight": 1, "cls_logits.bias": 1}
    for name, channels in BOX3D_CHANNELS.items():
        for param, _ in head.box3d[name].named_parameters():
            out[f"box3d.{name}.{param}"] = channels
    return out
