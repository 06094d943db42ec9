"""Losses of one batch of the perspective head: target assignment glue and DD3D's loss terms.

``PerspectiveHead.loss`` delegates here (:func:`batch_losses`); the element-wise loss
functions are in :mod:`bevformer.models.perspective.losses`, the FCOS assignment in
:mod:`bevformer.models.perspective.targets`. Official: BEVFormer
``projects/mmdet3d_plugin/dd3d/modeling/{fcos2d.py, fcos3d.py, nuscenes_dd3d.py}``
(``FCOS2DLoss``, ``FCOS3DLoss``, ``NuscenesLoss``); weights and parameters are the head's
``train_cfg`` (:class:`~bevformer.models.perspective.config.PerspectiveTrainCfg`):

- classification: sigmoid focal loss summed over all locations / number of positives;
- 2D box: centerness-weighted ``1 - GIoU`` / centerness sum; centerness: BCE summed /
  number of positives;
- 3D box: the disentangled corner losses of the labelled class's outputs, each
  ``box3d_weight`` x centerness-weighted sum / centerness sum; 3D confidence:
  ``conf3d_weight`` x BCE against ``exp(-L1 / conf3d_temperature)`` of the full box, weighted
  the same way;
- attributes: ``attr_weight`` x mean cross entropy over the boxes with an attribute; speed:
  ``speed_weight`` x centerness-weighted standard smooth-L1 / centerness sum of the boxes
  with a known speed.

The normalisers (number of positives, centerness sums) are averaged over the distributed
ranks as the official ``reduce_sum(...) / num_gpus``. Losses are computed in float32 (official
``force_fp32``).

Shapes: BN images, K classes, P locations of one image (level-major), Pos positive locations
of the batch, M_i boxes of image i.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from bevformer.models.perspective.coder import BOX3D_CHANNELS, NO_ATTRIBUTE, decode_boxes3d
from bevformer.models.perspective.layers import OUTPUT_KEYS, flatten_levels, pick_class
from bevformer.models.perspective.losses import (
    BOX3D_PARTS,
    centerness_targets,
    disentangled_corner_loss,
    ltrb_giou_loss,
    smooth_l1,
)
from bevformer.models.perspective.targets import assign_targets, usable_boxes

if TYPE_CHECKING:
    from bevformer.models.perspective.head import PerspectiveHead

__all__ = ["assign_batch", "batch_losses", "gather_gt", "mean_over_ranks"]


def mean_over_ranks(value: Tensor) -> Tensor:
    """Average of a scalar over the distributed ranks (itself without a process group)."""
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


def assign_batch(
    head: PerspectiveHead, locations: list[Tensor], targets: list[dict]
) -> dict[str, Tensor]:
    """Per-image assignment stacked to (BN, P, ...) targets: ``labels`` (BN, P), background
    K; ``ltrb`` (BN, P, 4) pixels; ``rows`` (BN, P) row of the assigned box in its image's
    target dict, -1 for background. ``locations``: per level (H_l*W_l, 2) pixel xy."""
    labels, ltrb, gt_rows = [], [], []
    device = locations[0].device
    for tgt in targets:
        lab = tgt["labels"].to(device=device, dtype=torch.long)
        depth = tgt["depth"].to(device)
        kept = usable_boxes(lab, depth, head.num_classes).nonzero().squeeze(1)  # (M',)
        gt_index, reg = assign_targets(
            locations,
            head.strides,
            tgt["boxes2d"].to(device)[kept],
            radius=head.train_cfg.pos_radius,
            size_ranges=head.train_cfg.size_ranges,
        )
        pos = gt_index >= 0
        row = torch.full_like(gt_index, -1)  # (P,) row of the box in the target dict
        row[pos] = kept[gt_index[pos]]
        label = torch.full_like(gt_index, head.num_classes)
        label[pos] = lab[row[pos]]
        labels.append(label)
        ltrb.append(reg)
        gt_rows.append(row)
    # per image (P, ...) -> (BN, P, ...)
    return {
        "labels": torch.stack(labels),
        "ltrb": torch.stack(ltrb),
        "rows": torch.stack(gt_rows),
    }


def gather_gt(
    targets: list[dict], assigned: dict, pos_img: Tensor, pos_loc: Tensor, key: str
) -> Tensor:
    """Target ``key`` of the box assigned to each positive location, (Pos, D) float32."""
    counts = torch.tensor([len(t["labels"]) for t in targets], device=pos_img.device)
    offsets = torch.cumsum(counts, 0) - counts  # first row of each image in the concat
    rows = offsets[pos_img] + assigned["rows"][pos_img, pos_loc]
    # per image (M_i, ...) -> (sum M_i, D)
    width = max(t[key][0].numel() if len(t[key]) else 1 for t in targets)
    values = torch.cat([t[key].reshape(len(t["labels"]), width).float() for t in targets])
    return values.to(pos_img.device)[rows]


def batch_losses(head: PerspectiveHead, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
    """DD3D losses of one batch (``PerspectiveHead.loss``): ``outputs`` of the head's
    ``forward``, one target dict per image. Returns scalar ``loss_{cls, box2d, centerness,
    quat, proj_ctr, depth, size, conf3d, attr, speed}_mono``; without positives every term
    but the classification is a zero connected to the outputs."""
    num_images = outputs["cls_logits"][0].shape[0]
    if len(targets) != num_images:
        raise ValueError(f"expected one target dict per image ({num_images}), found {len(targets)}")
    assigned = assign_batch(head, outputs["locations"], targets)
    # losses in float32 also under autocast (official ``force_fp32``)
    flat = {k: flatten_levels(outputs[k]).float() for k in OUTPUT_KEYS}
    locations = torch.cat(outputs["locations"])  # (P, 2)
    labels = assigned["labels"]  # (BN, P)
    pos_img, pos_loc = (labels < head.num_classes).nonzero(as_tuple=True)  # (Pos,) each
    ltrb = assigned["ltrb"][pos_img, pos_loc]  # (Pos, 4)
    ctr = centerness_targets(ltrb)  # (Pos,)
    speed = gather_gt(targets, assigned, pos_img, pos_loc, "speeds").squeeze(1)
    speed_known = ~torch.isnan(speed)  # (Pos,)
    # normalisers averaged over the ranks, reduced on every rank (also without positives)
    stats = torch.stack([ctr.new_tensor(float(pos_img.numel())), ctr.sum(), ctr[speed_known].sum()])
    num_pos, ctr_sum, speed_ctr_sum = mean_over_ranks(stats.detach()).tolist()
    num_pos, denom = max(num_pos, 1.0), max(ctr_sum, 1e-6)
    speed_denom = max(speed_ctr_sum, 1e-6)

    cfg = head.train_cfg
    logits = flat["cls_logits"]  # (BN, P, K)
    cls_target = F.one_hot(labels, head.num_classes + 1)[..., : head.num_classes].to(logits)
    loss_cls = sigmoid_focal_loss(
        logits, cls_target, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="sum"
    )
    losses = {"loss_cls_mono": loss_cls / num_pos}
    if pos_img.numel() == 0:
        zero = sum(v.sum() for v in flat.values()) * 0.0
        names = ("box2d", "centerness", *BOX3D_PARTS, "conf3d", "attr", "speed")
        losses.update({f"loss_{n}_mono": zero for n in names})
        return losses

    giou = ltrb_giou_loss(flat["box2d"][pos_img, pos_loc], ltrb)
    losses["loss_box2d_mono"] = (giou * ctr).sum() / denom
    ctr_logit = flat["centerness"][pos_img, pos_loc, 0]
    bce = F.binary_cross_entropy_with_logits(ctr_logit, ctr, reduction="sum")
    losses["loss_centerness_mono"] = bce / num_pos

    flat["locations"] = locations
    losses.update(_loss_3d(head, flat, targets, assigned, pos_img, pos_loc, ctr, denom))
    nusc = _loss_nuscenes(head, flat, targets, assigned, pos_img, pos_loc, ctr, speed_denom)
    losses.update(nusc)
    return losses


def _loss_3d(head, flat, targets, assigned, pos_img, pos_loc, ctr, denom) -> dict:
    """Disentangled 3D-box parts and 3D confidence (official ``FCOS3DLoss``)."""
    cfg = head.train_cfg
    lab = assigned["labels"][pos_img, pos_loc]  # (Pos,)
    pred = {k: pick_class(flat[k][pos_img, pos_loc], lab, ch) for k, ch in BOX3D_CHANNELS.items()}
    inv_k = torch.stack([torch.linalg.inv(t["intrinsics"].to(ctr)) for t in targets])
    inv_k = inv_k[pos_img]  # (Pos, 3, 3)
    locations = flat["locations"][pos_loc]  # (Pos, 2)
    decoded = decode_boxes3d(
        pred["quat"],
        pred["proj_ctr"],
        pred["depth"].squeeze(1),
        pred["size"],
        locations,
        inv_k,
        head.canonical_sizes[lab],
        min_depth=head.min_depth,
        max_depth=head.max_depth,
        depth_factor=head.depth_factor,
    )
    gt = {
        "quat": gather_gt(targets, assigned, pos_img, pos_loc, "rotation_cam"),
        "proj_ctr": gather_gt(targets, assigned, pos_img, pos_loc, "center2d"),
        "depth": gather_gt(targets, assigned, pos_img, pos_loc, "depth").squeeze(1),
        "size": gather_gt(targets, assigned, pos_img, pos_loc, "size_wlh"),
    }
    gt = {k: v.to(ctr) for k, v in gt.items()}
    parts, l1 = disentangled_corner_loss(
        decoded, gt, inv_k, cfg.smooth_l1_beta, cfg.box3d_smooth_l1_form
    )
    out = {f"loss_{k}_mono": cfg.box3d_weight * (v * ctr).sum() / denom for k, v in parts.items()}
    conf_target = torch.exp(-l1 / cfg.conf3d_temperature)
    bce = F.binary_cross_entropy_with_logits(
        pred["conf3d"].squeeze(1), conf_target, reduction="none"
    )
    out["loss_conf3d_mono"] = cfg.conf3d_weight * (bce * ctr).sum() / denom
    return out


def _loss_nuscenes(
    head, flat, targets, assigned, pos_img, pos_loc, ctr, speed_denom: float
) -> dict:
    """Attribute and speed losses (official ``NuscenesLoss``)."""
    cfg = head.train_cfg
    attr = gather_gt(targets, assigned, pos_img, pos_loc, "attributes").squeeze(1)
    speed = gather_gt(targets, assigned, pos_img, pos_loc, "speeds").squeeze(1)
    attr_logits = flat["attr_logits"][pos_img, pos_loc]  # (Pos, 3)
    pred_speed = flat["speed"][pos_img, pos_loc, 0]  # (Pos,)
    out = {}
    valid = attr.long() != NO_ATTRIBUTE
    if valid.any():
        # Official: ``(cross_entropy(...) * w).sum() / w.sum()`` with a *mean*-reduced
        # cross entropy, i.e. the plain mean over the valid locations.
        ce = F.cross_entropy(attr_logits[valid], attr[valid].long())
        out["loss_attr_mono"] = cfg.attr_weight * ce
    else:
        out["loss_attr_mono"] = attr_logits.sum() * 0.0
    valid = ~torch.isnan(speed.float())
    if valid.any():
        w = ctr[valid]
        # official NuscenesLoss: fvcore's (standard) smooth-L1 with beta 0.05
        target = speed[valid].to(pred_speed)
        err = smooth_l1(pred_speed[valid], target, cfg.smooth_l1_beta, "standard")
        out["loss_speed_mono"] = cfg.speed_weight * (err * w).sum() / speed_denom
    else:
        out["loss_speed_mono"] = pred_speed.sum() * 0.0
    return out
