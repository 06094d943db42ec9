"""One-to-one (Hungarian) matching of queries to ground-truth boxes for the detection head.

DETR (Carion et al., ECCV 2020, arXiv:2005.12872) set-prediction matching as BEVFormer uses it
(official ``core/bbox/assigners/hungarian_assigner_3d.py``, ``HungarianAssigner3D``, with the
``bevformerv2`` configs' costs):

    cost[q, m] = focal_cost(cls[q], label[m]) * 2.0 + smooth_l1(code[q, :8], code(gt[m])[:8]) * 0.75

- focal cost (mmdet ``FocalLossCost``, alpha 0.25, gamma 2, eps 1e-12), with p = sigmoid(logit):
  ``alpha (1-p)^gamma (-log(p+eps)) - (1-alpha) p^gamma (-log(1-p+eps))`` at the GT class;
- regression cost (official ``match_cost.py``, ``SmoothL1Cost``, beta 1) summed over the first 8
  code entries (centre, log size, sin/cos of yaw; no velocity). All seven official
  ``bevformerv2`` configs use SmoothL1Cost 0.75; ``reg_beta=0`` gives the L1 cost
  (``BBox3DL1Cost``) of the BEVFormer v1 configs.

The matching is solved on the CPU with scipy's ``linear_sum_assignment``; unmatched queries
are background. A NaN or infinite cost (e.g. a GT box with a zero size, or a diverged
prediction) is an error.

Legend: Q queries, M ground-truth boxes, K classes, D code entries.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from bevformer.models.coder import normalize_bbox

__all__ = ["HungarianAssigner3D", "focal_cost", "hungarian_match", "smooth_l1_cost"]


def focal_cost(
    cls_logits: Tensor,
    gt_labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    eps: float = 1e-12,
) -> Tensor:
    """Focal classification cost ``[Q, M]`` of logits ``[Q, K]`` for labels ``[M]`` (unweighted)."""
    p = cls_logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return pos[:, gt_labels] - neg[:, gt_labels]


def smooth_l1_cost(pred: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Smooth-L1 distance ``[Q, M]`` between rows of ``pred [Q, D]`` and ``target [M, D]``.

    Summed over D; ``beta=0`` is the plain L1 distance.
    """
    diff = (pred[:, None, :] - target[None, :, :]).abs()  # [Q, M, D]
    if beta > 0:
        diff = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return diff.sum(-1)


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one matching of a ``[Q, M]`` cost: (query indices, GT indices).

    Returns ``min(Q, M)`` pairs sorted by query index, as int64 tensors on ``cost``'s device.
    """
    if cost.dim() != 2:
        raise ValueError(f"cost must be [Q, M], got shape {tuple(cost.shape)}")
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty.clone()
    matrix = cost.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(matrix).all()):
        bad = (~torch.isfinite(matrix)).nonzero()[0].tolist()
        raise ValueError(
            f"Hungarian matching got a non-finite cost ({matrix[bad[0], bad[1]].item()} at query "
            f"{bad[0]}, GT {bad[1]}; {int((~torch.isfinite(matrix)).sum())} entries). Check that "
            "the GT boxes have positive finite sizes and finite centres/yaw, and that the "
            "predictions have not diverged (lower the learning rate)"
        )
    rows, cols = linear_sum_assignment(matrix.numpy())
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=cost.device)
    cols_t = torch.as_tensor(cols, dtype=torch.long, device=cost.device)
    return rows_t, cols_t


class HungarianAssigner3D:
    """Matches the queries of one sample to its GT boxes (module docstring for the cost).

    ``assign`` takes the head's regression codes ``[Q, 10]`` (centres in metres), logits
    ``[Q, K]``, GT box vectors ``[M, 9]`` (lidar frame, ``docs/CONVENTIONS.md``) and labels
    ``[M]``, and returns the matched (query indices, GT indices).
    """

    def __init__(
        self,
        cls_weight: float = 2.0,
        reg_weight: float = 0.75,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reg_beta: float = 1.0,
        num_reg_codes: int = 8,
    ) -> None:
        self.cls_weight = cls_weight
        self.reg_weight = reg_weight
        self.alpha = alpha
        self.gamma = gamma
        self.reg_beta = reg_beta
        self.num_reg_codes = num_reg_codes

    def cost(
        self, bbox_pred: Tensor, cls_logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor
    ) -> Tensor:
        """Weighted matching cost ``[Q, M]`` (no gradient)."""
        with torch.no_grad():
            d = self.num_reg_codes
            gt_codes = normalize_bbox(gt_boxes.to(bbox_pred.dtype))
            cls = focal_cost(cls_logits, gt_labels, self.alpha, self.gamma)
            reg = smooth_l1_cost(bbox_pred[:, :d], gt_codes[:, :d], self.reg_beta)
            return cls * self.cls_weight + reg * self.reg_weight

    def assign(
        self, bbox_pred: Tensor, cls_logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(query indices, GT indices) of the minimum-cost matching; empty without GT."""
        if gt_boxes.shape[0] != gt_labels.shape[0]:
            raise ValueError(
                f"gt_boxes has {gt_boxes.shape[0]} boxes but gt_labels {gt_labels.shape[0]} labels"
            )
        return hungarian_match(self.cost(bbox_pred, cls_logits, gt_boxes, gt_labels))
