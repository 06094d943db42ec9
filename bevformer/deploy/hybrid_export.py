"""The hybrid-query proposals with static shapes, for the ONNX export.

:func:`static_proposals` computes what :meth:`PerspectiveStage.forward
<bevformer.models.perspective.stage.PerspectiveStage.forward>` hands to the hybrid queries --
the perspective head's detections after its class-wise NMS
(:func:`~bevformer.models.perspective.inference.predict_boxes`, DD3D's inference) lifted to
the lidar frame (:func:`~bevformer.models.hybrid.lift_detections`) -- without a
data-dependent shape before the NMS and after it:

1. per level, the ``pre_nms_topk`` best (location, class) pairs of every image are taken by
   ``topk`` and marked valid where their score passes ``pre_nms_thresh`` (the eager code takes
   the pairs above the threshold first, then at most ``pre_nms_topk``: the same pairs);
2. only what the proposals use is decoded: the 2D box, the 3D score and the camera-frame
   centre (projected centre, depth);
3. the class-wise NMS of all images runs as one ``torchvision.ops.batched_nms`` (ONNX
   ``NonMaxSuppression``; invalid candidates score below every valid one, so they suppress
   nothing), its survivors become a mask, and the ``post_nms_topk`` best valid survivors of
   each image are taken by ``topk``;
4. per sample the centres of all cameras are moved to the lidar frame and the ``k`` best
   inside ``pc_range`` and above the hybrid queries' ``score_threshold`` are taken by ``topk``;
   slots without one are invalid with the defaults of :class:`~bevformer.models.hybrid.
   Proposals` (the hybrid queries use their fallback there).

The proposals equal the eager ones up to the order of equal scores. ``bda`` is not an input
(test time). Legend: B batch, N cameras, BN = B*N images, K classes, D candidates of an image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from bevformer.models.hybrid import REF_EPS, Proposals
from bevformer.models.perspective.config import PerspectiveTestCfg
from bevformer.models.perspective.inference import per_location, top_pairs
from bevformer.models.perspective.stage import PerspectiveStage
from bevformer.structures.grid import BEVGrid

__all__ = ["inverse_3x3", "static_proposals"]


def inverse_3x3(m: Tensor) -> Tensor:
    """``inv(m)`` of ``m [..., 3, 3]`` by the adjugate over the determinant (standard ONNX
    operators; ONNX has no matrix inverse)."""
    r0, r1, r2 = m[..., 0, :], m[..., 1, :], m[..., 2, :]
    adjugate_t = torch.stack(
        [torch.linalg.cross(r1, r2), torch.linalg.cross(r2, r0), torch.linalg.cross(r0, r1)], -2
    )  # rows of the cofactor matrix
    det = (r0 * adjugate_t[..., 0, :]).sum(-1)
    return adjugate_t.transpose(-1, -2) / det[..., None, None]


def _gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """``values [BN, P, C]`` at ``index [BN, D]`` -> ``[BN, D, C]``."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


def _labelled(maps: Tensor, loc_idx: Tensor, cls_idx: Tensor, channels: int) -> Tensor:
    """The labelled class's ``channels`` outputs of the candidates: ``maps [BN, ch*K, h, w]``
    (channel-major, K classes each), ``loc_idx``, ``cls_idx [BN, D]`` -> ``[BN, D, ch]``."""
    rows = _gather_rows(per_location(maps.float()), loc_idx)  # [BN, D, ch*K]
    rows = rows.unflatten(-1, (channels, -1))  # [BN, D, ch, K]
    return rows.gather(3, cls_idx[..., None, None].expand(-1, -1, channels, 1)).squeeze(3)


def _candidates(stage: PerspectiveStage, outputs: dict, inv_k: Tensor) -> dict[str, Tensor]:
    """Steps 1-2 of the module docstring on the head's ``outputs`` (all BN images) ->
    ``boxes2d [BN, D, 4]``, ``scores [BN, D]`` (3D), ``labels [BN, D]``, ``centers [BN, D, 3]``
    (camera frame), ``valid [BN, D]``."""
    head = stage.mono_head
    cfg = PerspectiveTestCfg.from_cfg(head.test_cfg)
    per_level = []
    for lvl, locations in enumerate(outputs["locations"]):
        top, loc_idx, cls_idx = top_pairs(
            outputs["cls_logits"][lvl].float(), outputs["centerness"][lvl].float(), cfg.pre_nms_topk
        )  # [BN, D_l] each
        loc = locations.float()[loc_idx]  # [BN, D_l, 2] pixels
        ltrb = _gather_rows(per_location(outputs["box2d"][lvl].float()), loc_idx)

        proj_ctr = loc + _labelled(outputs["proj_ctr"][lvl], loc_idx, cls_idx, 2)  # [BN, D_l, 2]
        k_inv = inv_k[:, None]  # [BN, 1, 3, 3] over the candidates
        pixel = torch.stack([k_inv[..., 0, 0], k_inv[..., 1, 1]], -1).norm(dim=-1)  # [BN, 1]
        depth = _labelled(outputs["depth"][lvl], loc_idx, cls_idx, 1).squeeze(-1)
        depth = (depth / (pixel * head.depth_factor)).clamp(head.min_depth, head.max_depth)
        homog = torch.cat([proj_ctr, torch.ones_like(proj_ctr[..., :1])], -1)  # [BN, D_l, 3]
        rays = (k_inv @ homog.unsqueeze(-1)).squeeze(-1)
        conf3d = _labelled(outputs["conf3d"][lvl], loc_idx, cls_idx, 1).squeeze(-1).sigmoid()
        per_level.append(
            {
                "boxes2d": torch.cat([loc - ltrb[..., :2], loc + ltrb[..., 2:]], -1),
                "scores": top.sqrt() * conf3d,
                "labels": cls_idx,
                "centers": rays * depth.unsqueeze(-1),
                "valid": top > cfg.pre_nms_thresh,
            }
        )
    return {key: torch.cat([d[key] for d in per_level], 1) for key in per_level[0]}


def _nms_survivors(cand: dict[str, Tensor], cfg: PerspectiveTestCfg, num_classes: int):
    """Step 3: the valid candidates that survive the class-wise NMS among the valid ones of
    their image, at most ``post_nms_topk`` per image -> (index ``[BN, P]`` into D, valid
    ``[BN, P]``)."""
    boxes, valid = cand["boxes2d"], cand["valid"]
    BN, D = valid.shape
    # invalid candidates score below every valid one: they cannot suppress a valid box
    scores = torch.where(valid, cand["scores"], cand["scores"].new_full((), -1.0))
    image = torch.arange(BN, device=boxes.device)[:, None]
    groups = image * num_classes + cand["labels"]  # one NMS group per (image, class)
    keep = batched_nms(boxes.flatten(0, 1), scores.flatten(), groups.flatten(), cfg.nms_thresh)
    # the survivors (a list of any length) as a mask [BN, D]
    marks = scores.new_zeros(BN * D).scatter(0, keep, torch.ones_like(keep, dtype=scores.dtype))
    kept = (marks > 0).view(BN, D) & valid
    ranked = torch.where(kept, scores, scores.new_full((), float("-inf")))
    best, index = ranked.topk(min(cfg.post_nms_topk, D), dim=1)  # [BN, P]
    return index, best > float("-inf")


def static_proposals(
    stage: PerspectiveStage,
    feats: Sequence[Tensor],
    intrinsics: Tensor,
    cam2lidar: Tensor,
    grid: BEVGrid,
    image_size: tuple[int, int],
) -> tuple[Proposals, dict]:
    """The hybrid queries' :class:`~bevformer.models.hybrid.Proposals` of the current frame
    with static shapes (module docstring).

    ``feats`` L x [B, N, C, h, w] (the neck maps the stage reads), ``intrinsics [B, N, 3, 3]``
    and ``cam2lidar [B, N, 4, 4]`` of the test images, ``grid`` the model's BEV grid,
    ``image_size`` the padded (H, W). Returns the proposals ``[B, k, ...]`` and the head's
    outputs.
    """
    hybrid = stage.hybrid
    if hybrid is None:
        raise ValueError("this perspective stage has no hybrid queries (perspective.hybrid)")
    B, N = cam2lidar.shape[:2]
    k = hybrid.num_queries
    outputs = stage.run_head(feats)
    K_flat = intrinsics.flatten(0, 1).float()  # [BN, 3, 3]
    # the eager inverse outside the export (the same numbers as the eager path)
    inv_k = inverse_3x3(K_flat) if torch.onnx.is_in_onnx_export() else torch.linalg.inv(K_flat)
    cand = _candidates(stage, outputs, inv_k)
    H, W = image_size
    bounds = cand["boxes2d"].new_tensor([W, H, W, H])
    cand["boxes2d"] = torch.minimum(cand["boxes2d"].clamp(min=0), bounds)  # DD3D's clipping
    cfg = PerspectiveTestCfg.from_cfg(stage.mono_head.test_cfg)
    num_classes = outputs["cls_logits"][0].shape[1]
    index, kept = _nms_survivors(cand, cfg, num_classes)  # [BN, P]
    P = index.shape[1]
    centers = _gather_rows(cand["centers"], index)  # [BN, P, 3] camera frame
    boxes2d = _gather_rows(cand["boxes2d"], index)
    scores = cand["scores"].gather(1, index)
    labels = cand["labels"].gather(1, index)
    # step 4: camera -> lidar per image, then the k best of each sample over its N cameras
    to_lidar = cam2lidar.flatten(0, 1).float()[:, None]  # [BN, 1, 4, 4]
    lidar = (to_lidar[..., :3, :3] @ centers.unsqueeze(-1)).squeeze(-1) + to_lidar[..., :3, 3]
    lo = lidar.new_tensor(grid.pc_range[:3])
    hi = lidar.new_tensor(grid.pc_range[3:])
    ok = kept & ((lidar >= lo) & (lidar <= hi)).all(-1) & (scores > hybrid.score_threshold)
    cameras = torch.arange(N, device=lidar.device).repeat(B)[:, None].expand(B * N, P)

    def per_sample(t: Tensor) -> Tensor:  # [BN, P, ...] -> [B, N*P, ...]
        return t.reshape(B, N * P, *t.shape[2:])

    ranked = torch.where(per_sample(ok), per_sample(scores), scores.new_full((), float("-inf")))
    if N * P < k:  # fewer candidates than slots: pad with invalid ones
        ranked = torch.cat([ranked, ranked.new_full((B, k - N * P), float("-inf"))], 1)
    best, pick = ranked.topk(k, dim=1)  # [B, k]
    valid = best > float("-inf")
    pick = pick.clamp(max=N * P - 1)  # padded slots are invalid: any row will do

    def take(t: Tensor) -> Tensor:
        t = per_sample(t)
        if t.dim() == 2:
            return t.gather(1, pick)
        return t.gather(1, pick.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

    picked, box = take(lidar), take(boxes2d)
    slot = valid[..., None]
    proposals = Proposals(
        centers=torch.where(slot, picked, picked.new_zeros(())),
        reference=torch.where(
            slot, grid.normalize(picked).clamp(REF_EPS, 1 - REF_EPS), picked.new_full((), 0.5)
        ),
        labels=torch.where(valid, take(labels), labels.new_full((), -1)),
        scores=torch.where(valid, take(scores), scores.new_zeros(())),
        cameras=torch.where(valid, take(cameras), cameras.new_zeros(())),
        pixels=torch.where(slot, 0.5 * (box[..., :2] + box[..., 2:]), box.new_zeros(())),
        valid=valid,
    )
    return proposals, outputs
