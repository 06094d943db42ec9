"""Set criterion of the BEVFormer detection head: Hungarian matching per query group, then
focal + smooth-L1 losses of every decoder layer.

BEVFormer (Li et al., ECCV 2022, arXiv:2203.17270) / BEVFormer v2 (Yang et al., CVPR 2023,
arXiv:2211.10439), official ``dense_heads/bevformer_head.py`` (``BEVFormerHead.loss``,
``BEVFormerHead_GroupDETR.loss``) on mmdet's ``DETRHead``:

- Each decoder layer's outputs are matched to the ground truth of each sample by
  :class:`~bevformer.models.assigner.HungarianAssigner3D` (focal + smooth-L1 cost).
- Group-DETR (Chen et al., ICCV 2023, arXiv:2207.13085): the queries form G groups of
  ``queries_per_group`` (learned, then hybrid) and each group is matched to the full GT set;
  the losses are averaged over the groups.
- Losses (:func:`~bevformer.models.losses.detection_losses`): sigmoid focal classification
  (alpha 0.25, gamma 2, weight 2.0) and smooth-L1 regression of the 10-number code weighted
  per entry by ``code_weights`` (velocity 0.2; weight 0.75), normalised by the number of
  matched queries. The last layer gives ``loss_cls`` / ``loss_bbox``, layer l < Ldec - 1 gives
  ``d{l}.loss_cls`` / ``d{l}.loss_bbox``.

Legend: Ldec decoder layers, B batch, Q queries (all groups), G groups, K classes, M GT boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bevformer.models.assigner import HungarianAssigner3D, hungarian_match
from bevformer.models.coder import CODE_SIZE, normalize_bbox
from bevformer.models.losses import detection_losses
from bevformer.registry import MODELS
from bevformer.structures.boxes import BOX_DIM

__all__ = ["SetCriterion3D"]


@MODELS.register_module()
class SetCriterion3D(nn.Module):
    """Group-aware Hungarian matching and the detection losses (module docstring).

    Defaults are the official ``bevformerv2`` configs: ``FocalLoss(loss_weight=2.0)``,
    ``SmoothL1Loss(loss_weight=0.75, beta=1.0)``, ``code_weights`` with 0.2 on the velocity,
    ``HungarianAssigner3D`` with ``FocalLossCost(weight=2.0)`` and
    ``SmoothL1Cost(weight=0.75)``.
    """

    def __init__(
        self,
        *,
        code_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2),
        loss_cls_weight: float = 2.0,
        loss_bbox_weight: float = 0.75,
        loss_bbox_beta: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_cost_weight: float = 2.0,
        reg_cost_weight: float = 0.75,
        reg_cost_beta: float = 1.0,
    ) -> None:
        super().__init__()
        if len(code_weights) != CODE_SIZE:
            raise ValueError(f"code_weights must have {CODE_SIZE} entries, got {code_weights}")
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_bbox_beta = loss_bbox_beta
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.register_buffer(
            "code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False
        )
        self.assigner = HungarianAssigner3D(
            cls_weight=cls_cost_weight,
            reg_weight=reg_cost_weight,
            alpha=focal_alpha,
            gamma=focal_gamma,
            reg_beta=reg_cost_beta,
        )

    def match(
        self,
        cls_scores: Tensor,
        bbox_preds: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        queries_per_group: int,
    ) -> tuple[Tensor, Tensor]:
        """Matches each group of one sample's queries (``[Q, K]`` logits, ``[Q, 10]`` codes) to
        all its GT boxes (``[M, 9]``, ``[M]``) -> (query indices, GT indices)."""
        G = cls_scores.shape[0] // queries_per_group
        cost = self.assigner.cost(bbox_preds, cls_scores, gt_boxes, gt_labels)  # [Q, M]
        cost = cost.cpu().reshape(G, queries_per_group, gt_boxes.shape[0])  # [G, Q/G, M]
        query_idx, gt_idx = [], []
        for g in range(G):
            rows, cols = hungarian_match(cost[g])
            query_idx.append(rows + g * queries_per_group)
            gt_idx.append(cols)
        device = cls_scores.device
        return torch.cat(query_idx).to(device), torch.cat(gt_idx).to(device)

    def _targets(
        self, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], B: int, K: int, like: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        if len(gt_boxes) != B or len(gt_labels) != B:
            raise ValueError(
                f"outputs have batch {B} but {len(gt_boxes)} gt_boxes / {len(gt_labels)} "
                "gt_labels entries; pass one (M, 9) tensor and one (M,) tensor per sample"
            )
        boxes, labels = [], []
        for b in range(B):
            box = torch.as_tensor(gt_boxes[b], device=like.device, dtype=like.dtype)
            box = box.reshape(-1, BOX_DIM)
            label = torch.as_tensor(gt_labels[b], device=like.device, dtype=torch.long).reshape(-1)
            if box.shape[0] != label.shape[0]:
                raise ValueError(f"sample {b}: {box.shape[0]} GT boxes but {label.shape[0]} labels")
            if label.numel() and (label.min() < 0 or label.max() >= K):
                raise ValueError(
                    f"sample {b}: GT labels must be in [0, {K}), got {label.tolist()}; filter "
                    "ignored classes out of the GT before the head"
                )
            boxes.append(box)
            labels.append(label)
        return boxes, labels

    def forward(
        self,
        outputs: dict[str, Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        queries_per_group: int,
    ) -> dict[str, Tensor]:
        """Losses of the head's ``outputs`` (``cls_scores [Ldec, B, Q, K]``, ``bbox_preds
        [Ldec, B, Q, 10]``) against ``gt_boxes[b]`` (M_b, 9) box vectors in the (BEV-augmented)
        lidar frame and ``gt_labels[b]`` (M_b,) class indices. ``queries_per_group``: the
        head's learned + hybrid queries per group (Q must be a multiple of it).

        Raises ``ValueError`` for a batch size, box/label count or label range that does not
        fit the outputs.
        """
        all_cls, all_bbox = outputs["cls_scores"], outputs["bbox_preds"]
        if all_cls.dtype in (torch.float16, torch.bfloat16):  # losses in fp32 under AMP
            all_cls, all_bbox = all_cls.float(), all_bbox.float()
        num_layers, B, Q, K = all_cls.shape
        if Q % queries_per_group != 0:
            raise ValueError(
                f"outputs have {Q} queries, not a multiple of num_query + num_hybrid_queries = "
                f"{queries_per_group}; pass the outputs of the head's forward"
            )
        G = Q // queries_per_group
        boxes, labels = self._targets(gt_boxes, gt_labels, B, K, all_bbox)
        codes = [normalize_bbox(box) for box in boxes]
        # matched queries per group and sample: min(queries per group, M_b)
        num_matched = sum(min(queries_per_group, int(label.numel())) for label in labels)

        per_layer = []
        for lid in range(num_layers):
            cls_scores, bbox_preds = all_cls[lid], all_bbox[lid]
            matches = [
                self.match(
                    cls_scores[b].detach(),
                    bbox_preds[b].detach(),
                    boxes[b],
                    labels[b],
                    queries_per_group,
                )
                for b in range(B)
            ]
            per_layer.append(
                detection_losses(
                    cls_scores,
                    bbox_preds,
                    matches,
                    codes,
                    labels,
                    self.code_weights,
                    num_matched,
                    num_groups=G,
                    cls_weight=self.loss_cls_weight,
                    bbox_weight=self.loss_bbox_weight,
                    alpha=self.focal_alpha,
                    gamma=self.focal_gamma,
                    beta=self.loss_bbox_beta,
                )
            )
        losses: dict[str, Tensor] = {}
        losses["loss_cls"], losses["loss_bbox"] = per_layer[-1]
        for lid, (loss_cls, loss_bbox) in enumerate(per_layer[:-1]):
            losses[f"d{lid}.loss_cls"] = loss_cls
            losses[f"d{lid}.loss_bbox"] = loss_bbox
        return losses
