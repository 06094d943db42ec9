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
from bevformer.models.perspective.layers import pick_class

__all__ = ["per_location", "predict_boxes", "top_pairs"]


def per_location(maps: Tensor) -> Tensor:
    """One level's maps ``(BN, C, H, W)`` as ``(BN, H*W, C)`` (a view)."""
    return maps.flatten(2).transpose(1, 2)


def top_pairs(cls_logits: Tensor, centerness: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best (location, class) pairs of each image on one level, by DD3D's candidate
    score ``sigmoid(logit) * sigmoid(centerness)`` (THRESH_WITH_CTR).

    ``cls_logits (BN, K, H, W)``, ``centerness (BN, 1, H, W)`` -> scores, location index into
    H*W, class index, each ``(BN, min(k, H*W*K))`` in decreasing score.
    """
    num_classes = cls_logits.shape[1]
    scores = per_location(cls_logits).sigmoid() * per_location(centerness).sigmoid()  # (BN, HW, K)
    flat = scores.flatten(1)  # (BN, HW*K), location-major
    top, pair = flat.topk(min(k, flat.shape[1]), dim=1)
    return top, torch.div(pair, num_classes, rounding_mode="floor"), pair % num_classes


def _level_candidates(outputs: dict, lvl: int, cfg: PerspectiveTestCfg) -> dict[str, Tensor]:
    """Step 1 on level ``lvl`` of all BN images at once, with the raw outputs the later steps
    read: ``image``, ``location`` (D, 2) pixels, ``labels``, ``scores_2d``, ``ltrb`` (D, 4),
    the labelled class's :data:`BOX3D_CHANNELS` outputs, ``attributes``, ``speeds``.

    The ``pre_nms_topk`` best (location, class) pairs of each image are taken first and then
    thresholded: the same pairs as thresholding first, as DD3D does.
    """
    top, loc_top, cls_top = top_pairs(
        outputs["cls_logits"][lvl], outputs["centerness"][lvl], cfg.pre_nms_topk
    )  # (BN, D_l) each
    image, rank = (top > cfg.pre_nms_thresh).nonzero(as_tuple=True)
    loc_idx, cls_idx = loc_top[image, rank], cls_top[image, rank]  # (D,)

    def rows(key: str) -> Tensor:  # the candidates' (D, C) outputs of ``key``
        return per_location(outputs[key][lvl])[image, loc_idx]

    cand = {
        "image": image,
        "location": outputs["locations"][lvl].float()[loc_idx],
        "labels": cls_idx,
        "scores_2d": top[image, rank].sqrt(),
        "ltrb": rows("box2d"),
        "attributes": rows("attr_logits").argmax(1),
        "speeds": rows("speed")[:, 0],
    }
    for key, ch in BOX3D_CHANNELS.items():
        cand[key] = pick_class(rows(key), cls_idx, ch)  # (D, ch*K) -> the labelled class's
    return cand


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
    (D,), in decreasing score.

    All images and levels are decoded together and the NMS of all images is one call (groups
    (image, class)); the result equals DD3D's per-image loop up to the order of equal scores
    (``tests/models/perspective/test_perspective_head.py`` holds it to that loop). Runs
    without gradients: the detections are not differentiated (the hybrid queries detach
    them).
    """
    cfg = PerspectiveTestCfg.from_cfg(test_cfg)
    num_images, num_classes = outputs["cls_logits"][0].shape[:2]
    device = outputs["cls_logits"][0].device
    height, width = image_size
    with torch.no_grad():
        inv_k = torch.linalg.inv(intrinsics.to(device=device, dtype=torch.float32))  # (BN, 3, 3)
        floats = {k: [m.float() for m in v] for k, v in outputs.items()}
        levels = [_level_candidates(floats, lvl, cfg) for lvl in range(len(floats["locations"]))]
        cand = {k: torch.cat([c[k] for c in levels]) for k in levels[0]}
        image, location = cand["image"], cand["location"]
        box = decode_boxes3d(
            cand["quat"],
            cand["proj_ctr"],
            cand["depth"].squeeze(1),
            cand["size"],
            location,
            inv_k[image],
            canonical_sizes.to(device)[cand["labels"]],
            min_depth=min_depth,
            max_depth=max_depth,
            depth_factor=depth_factor,
        )
        ltrb = cand["ltrb"]
        boxes2d = torch.cat([location - ltrb[:, :2], location + ltrb[:, 2:]], dim=1)
        boxes2d[:, 0::2] = boxes2d[:, 0::2].clamp(0, width)
        boxes2d[:, 1::2] = boxes2d[:, 1::2].clamp(0, height)
        det = {
            "boxes3d": torch.cat([box["center"], box["size"], box["quat"]], dim=1),
            "scores": cand["scores_2d"] * cand["conf3d"].squeeze(1).sigmoid(),
            "scores_2d": cand["scores_2d"],
            "labels": cand["labels"],
            "boxes2d": boxes2d,
            "attributes": cand["attributes"],
            "speeds": cand["speeds"],
        }
        groups = image * num_classes + det["labels"]  # class-wise NMS within each image
        keep = batched_nms(boxes2d, det["scores"], groups, cfg.nms_thresh)  # decreasing score
        # per image, its post_nms_topk best: a stable sort by image keeps the score order
        keep = keep[torch.sort(image[keep], stable=True).indices]
        kept_image = image[keep]
        counts = torch.bincount(kept_image, minlength=num_images)
        first = counts.cumsum(0) - counts
        rank = torch.arange(len(keep), device=device) - first[kept_image]
        keep = keep[rank < cfg.post_nms_topk]
        sizes = counts.clamp(max=cfg.post_nms_topk).tolist()
        split = {k: v[keep].split(sizes) for k, v in det.items()}
    return [{k: split[k][i] for k in det} for i in range(num_images)]
