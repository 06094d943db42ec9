"""Inference of the perspective head alone: per-camera 3D boxes after NMS (DD3D).

Follows DD3D's ``FCOS2DInference`` / ``FCOS3DInference`` / ``NuscenesInference`` (BEVFormer
``projects/mmdet3d_plugin/dd3d/modeling/{fcos2d.py, fcos3d.py, nuscenes_dd3d.py}``; the
thresholds are the head's ``test_cfg``,
:class:`~bevformer.models.perspective.config.PerspectiveTestCfg`, whose defaults are DD3D's,
TRI-ML/dd3d ``configs/models/dd3d.yaml``):

1. per level: class scores ``sigmoid(logit) * sigmoid(centerness)`` above
   ``test_cfg.pre_nms_thresh`` (0.05), at most ``test_cfg.pre_nms_topk`` (1000) of them;
2. 2D box = location -/+ ltrb, 2D score = sqrt(that product), 3D box decoded from the
   labelled class's FCOS3D outputs, 3D score = 2D score x sigmoid(3D confidence);
3. per image: class-wise NMS (IoU ``test_cfg.nms_thresh``, 0.6) of the 2D boxes on the 3D
   score, then the ``test_cfg.post_nms_topk`` (100) best.

Shapes: BN images, P locations of one image (level-major), K classes, D detections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from bevformer.models.perspective.coder import BOX3D_CHANNELS, decode_boxes3d
from bevformer.models.perspective.config import PerspectiveTestCfg

__all__ = ["predict_boxes"]


def _level_maps(outputs: dict, key: str, level: int, image: int) -> Tensor:
    """One image's map of one level as (H*W, C)."""
    m = outputs[key][level][image]  # (C, H, W)
    return m.flatten(1).T  # (C, H, W) -> (C, H*W) -> (H*W, C)


def predict_boxes(
    outputs: dict,
    intrinsics: Tensor,
    image_size: tuple[int, int],
    canonical_sizes: Tensor,
    test_cfg: PerspectiveTestCfg | Mapping[str, Any] | None = None,
    *,
    min_depth: float = 0.1,
    max_depth: float = 80.0,
    depth_factor: float = 500.0,
) -> list[dict[str, Tensor]]:
    """Raw head outputs (see ``PerspectiveHead.forward``) -> per-image detections.

    ``intrinsics`` (BN, 3, 3), ``image_size`` (H, W) for clipping the 2D boxes,
    ``canonical_sizes`` (K, 3), ``test_cfg`` the thresholds (a
    :class:`~bevformer.models.perspective.config.PerspectiveTestCfg` or a dict of some of its
    keys; None: the defaults); ``min_depth`` / ``max_depth`` metres and ``depth_factor``
    pixels as in :func:`~bevformer.models.perspective.coder.decode_boxes3d`. Each result holds
    ``boxes3d`` (D, 10) = camera-frame centre xyz, wlh, quaternion wxyz; ``scores`` (D,);
    ``scores_2d`` (D,); ``labels`` (D,); ``boxes2d`` (D, 4); ``attributes`` (D,); ``speeds``
    (D,).
    """
    cfg = PerspectiveTestCfg.from_cfg(test_cfg)
    num_images = outputs["cls_logits"][0].shape[0]
    num_classes = outputs["cls_logits"][0].shape[1]
    device = outputs["cls_logits"][0].device
    inv_k = torch.linalg.inv(intrinsics.to(device=device, dtype=torch.float32))  # (BN, 3, 3)
    outputs = {k: [m.float() for m in v] for k, v in outputs.items()}
    height, width = image_size
    results = []
    for img in range(num_images):
        per_level = []
        for lvl, locations in enumerate(outputs["locations"]):
            scores = _level_maps(outputs, "cls_logits", lvl, img).sigmoid()  # (HW, K)
            ctr = _level_maps(outputs, "centerness", lvl, img).sigmoid()  # (HW, 1)
            scores = scores * ctr  # DD3D THRESH_WITH_CTR: threshold the product
            loc_idx, cls_idx = (scores > cfg.pre_nms_thresh).nonzero(as_tuple=True)
            cand = scores[loc_idx, cls_idx]
            if cand.numel() > cfg.pre_nms_topk:
                cand, keep = cand.topk(cfg.pre_nms_topk)
                loc_idx, cls_idx = loc_idx[keep], cls_idx[keep]
            loc = locations[loc_idx]  # (D_l, 2)
            ltrb = _level_maps(outputs, "box2d", lvl, img)[loc_idx]  # (D_l, 4)
            boxes2d = torch.cat([loc - ltrb[:, :2], loc + ltrb[:, 2:]], dim=1)
            raw = {}
            for key, ch in BOX3D_CHANNELS.items():
                # (HW, ch*K) -> (D_l, ch, K) -> the detected class's (D_l, ch)
                vals = _level_maps(outputs, key, lvl, img)[loc_idx].reshape(-1, ch, num_classes)
                raw[key] = vals.gather(2, cls_idx.view(-1, 1, 1).expand(-1, ch, 1)).squeeze(2)
            box = decode_boxes3d(
                raw["quat"],
                raw["proj_ctr"],
                raw["depth"].squeeze(1),
                raw["size"],
                loc,
                inv_k[img].expand(len(loc), 3, 3),
                canonical_sizes.to(device)[cls_idx],
                min_depth=min_depth,
                max_depth=max_depth,
                depth_factor=depth_factor,
            )
            scores_2d = cand.sqrt()
            attr = _level_maps(outputs, "attr_logits", lvl, img)[loc_idx].argmax(1)
            per_level.append(
                {
                    "boxes3d": torch.cat([box["center"], box["size"], box["quat"]], dim=1),
                    "scores": scores_2d * raw["conf3d"].squeeze(1).sigmoid(),
                    "scores_2d": scores_2d,
                    "labels": cls_idx,
                    "boxes2d": boxes2d,
                    "attributes": attr,
                    "speeds": _level_maps(outputs, "speed", lvl, img)[loc_idx, 0],
                }
            )
        det = {k: torch.cat([d[k] for d in per_level]) for k in per_level[0]}
        det["boxes2d"][:, 0::2] = det["boxes2d"][:, 0::2].clamp(0, width)
        det["boxes2d"][:, 1::2] = det["boxes2d"][:, 1::2].clamp(0, height)
        keep = batched_nms(det["boxes2d"], det["scores"], det["labels"], cfg.nms_thresh)
        keep = keep[: cfg.post_nms_topk]  # batched_nms sorts by decreasing score
        results.append({k: v[keep] for k, v in det.items()})
    return results
