"""Set-prediction losses of the BEVFormer detection head (one decoder layer at a time).

What mmdet's ``DETRHead.loss_single`` computes with the ``bevformerv2`` configs (official
``dense_heads/bevformer_head.py`` + ``projects/configs/bevformerv2/*.py``):

- classification: sigmoid focal loss (Lin et al., arXiv:1708.02002; alpha 0.25, gamma 2) over
  every (query, class) pair, one-hot targets, unmatched queries all-zero (background), summed
  and divided by the number of matched queries, times 2.0;
- regression: smooth L1 (beta 1) between the predicted code and the GT code
  (:func:`~bevformer.models.coder.normalize_bbox`) of each matched query, weighted per entry by
  ``code_weights`` (1 x 8, 0.2 for the velocities), summed and divided by the number of matched
  queries, times 0.75. All seven official ``bevformerv2`` configs use ``SmoothL1Loss(beta=1.0,
  loss_weight=0.75)``; ``beta=0`` gives the L1 loss of the BEVFormer v1 configs. GT rows with a
  non-finite code entry (e.g. an unknown velocity) are left out of the regression loss entirely
  (the official ``isnotnan``).

Both normalisers are the number of matched queries in the batch, averaged over the processes
when ``torch.distributed`` is initialised (mmdet ``reduce_mean``) and clamped to at least 1.
Unlike the official head the losses are not passed through ``nan_to_num``: a non-finite loss
must surface (the detector raises, naming the term).

Legend: B batch, Q queries, K classes, D code entries (10), P matched pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

__all__ = ["check_finite_losses", "detection_losses", "reduce_mean"]


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of ``value`` over the processes of the default group (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.clone()
    dist.all_reduce(value.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return value


def detection_losses(
    cls_scores: Tensor,
    bbox_preds: Tensor,
    matches: Sequence[tuple[Tensor, Tensor]],
    gt_codes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    code_weights: Tensor,
    num_matched: float,
    num_groups: int = 1,
    cls_weight: float = 2.0,
    bbox_weight: float = 0.75,
    alpha: float = 0.25,
    gamma: float = 2.0,
    beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Focal classification and weighted smooth-L1 regression losses of one decoder layer.

    ``cls_scores [B, Q, K]`` logits; ``bbox_preds [B, Q, D]`` codes; ``matches[b]`` = (query
    indices, GT indices) of sample b; ``gt_codes[b] [M_b, D]`` and ``gt_labels[b] [M_b]``.
    ``num_matched`` is the normaliser of both losses: the number of matched queries of one
    group, before the distributed mean and the clamp to 1. With group-DETR the ``Q`` queries
    are ``num_groups`` groups each matched to the full GT set, and the losses are the mean over
    the groups of each group's loss, as the official ``BEVFormerHead_GroupDETR.loss`` (every
    group has the same normaliser, so this is the sum over all groups divided by
    ``num_groups`` times the normaliser). Returns (loss_cls, loss_bbox) scalars.
    """
    normaliser = cls_scores.new_tensor(float(num_matched))
    normaliser = reduce_mean(normaliser).clamp(min=1.0) * num_groups

    # one-hot targets [B, Q, K]: unmatched queries are all zero (background)
    targets = torch.zeros_like(cls_scores)
    pred_rows, target_rows = [], []
    for b, (query_idx, gt_idx) in enumerate(matches):
        targets[b, query_idx, gt_labels[b][gt_idx]] = 1.0
        pred_rows.append(bbox_preds[b, query_idx])
        target_rows.append(gt_codes[b][gt_idx].to(bbox_preds.dtype))
    focal = sigmoid_focal_loss(cls_scores, targets, alpha=alpha, gamma=gamma, reduction="sum")
    loss_cls = focal / normaliser * cls_weight

    pred = torch.cat(pred_rows) if pred_rows else bbox_preds.new_zeros(0, bbox_preds.shape[-1])
    target = torch.cat(target_rows) if target_rows else pred.detach().clone()
    finite = torch.isfinite(target).all(-1)  # [P]
    pred, target = pred[finite], target[finite]
    weights = code_weights.to(pred.dtype)[: pred.shape[-1]]
    per_entry = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)  # [P, D]
    loss_bbox = (per_entry * weights).sum() / normaliser * bbox_weight
    return loss_cls, loss_bbox


def check_finite_losses(losses: dict[str, Tensor]) -> None:
    """Raises ``FloatingPointError`` naming the first loss term that is NaN or infinite."""
    for name, value in losses.items():
        if isinstance(value, Tensor) and not bool(torch.isfinite(value).all()):
            others = {k: float(v.detach().float().mean()) for k, v in losses.items() if k != name}
            raise FloatingPointError(
                f"loss term '{name}' is not finite ({value.detach().cpu().tolist()}); other "
                f"terms: {others}. Lower the learning rate, check the inputs of this term, or "
                "train in fp32 to find where it diverges"
            )
