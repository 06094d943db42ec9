"""Loss functions of the perspective head (FCOS2D / FCOS3D losses of DD3D).

Official: BEVFormer ``projects/mmdet3d_plugin/dd3d/modeling/{fcos2d.py, fcos3d.py,
disentangled_box3d_loss.py, nuscenes_dd3d.py}`` and ``dd3d/layers/iou_loss.py``.

- :func:`centerness_targets`: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``.
- :func:`ltrb_giou_loss`: ``1 - GIoU`` of two boxes given as distances (l, t, r, b) from the
  same location, with the IoU smoothed by +1 in numerator and denominator (DD3D ``IOULoss``).
- :func:`smooth_l1`: smooth-L1 with transition ``beta`` in two forms. ``"standard"`` is Fast
  R-CNN's (fvcore ``nn/smooth_l1_loss.py``, which the official speed loss in
  ``nuscenes_dd3d.py`` calls): ``0.5 x^2 / beta`` below ``beta``, ``|x| - beta / 2`` above.
  ``"official"`` is DD3D's own copy (``dd3d/layers/smooth_l1_loss.py``, which
  ``DisentangledBox3DLoss`` calls), whose quadratic branch lacks the division by ``beta``:
  ``0.5 x^2`` below ``beta``, ``|x| - beta / 2`` above (not continuous at ``beta``; for
  beta = 0.05 the gradient below 5 cm is 20 times smaller than the standard form's). Both are
  ``|x|`` for ``beta < 1e-5``.
- :func:`disentangled_corner_loss`: for each box part (quat, proj_ctr, depth, size) the GT
  box with only that part replaced by the prediction is compared corner-wise with the GT box
  (Simonelli et al., "Disentangling monocular 3D object detection", ICCV 2019), with the
  official smooth-L1 form by default. The official ``loss.clamp(max=20)`` result is discarded
  (a no-op), so no clamp is applied here either.

Shapes: P positive locations; corners (P, 8, 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bevformer.models.perspective.coder import box3d_corners, unproject

__all__ = [
    "BOX3D_PARTS",
    "SMOOTH_L1_FORMS",
    "centerness_targets",
    "check_smooth_l1_form",
    "disentangled_corner_loss",
    "ltrb_giou_loss",
    "smooth_l1",
]

BOX3D_PARTS = ("quat", "proj_ctr", "depth", "size")
SMOOTH_L1_FORMS = ("official", "standard")


def centerness_targets(ltrb: Tensor) -> Tensor:
    """FCOS centerness (P,) of regression targets (P, 4) l t r b (all positive)."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values)
    return ratio.sqrt()


def ltrb_giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per-location ``1 - GIoU`` (P,) of boxes (P, 4) given as l t r b distances."""
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter = (torch.minimum(pl, tl) + torch.minimum(pr, tr)) * (
        torch.minimum(pt, tt) + torch.minimum(pb, tb)
    )
    enclose = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (
        torch.maximum(pt, tt) + torch.maximum(pb, tb)
    )
    union = pred_area + target_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    giou = iou - (enclose - union) / enclose
    return 1.0 - giou


def check_smooth_l1_form(form: str) -> str:
    """``form`` if it is one of :data:`SMOOTH_L1_FORMS`, else ``ValueError``."""
    if form not in SMOOTH_L1_FORMS:
        raise ValueError(
            f"smooth-L1 form must be one of {SMOOTH_L1_FORMS} ('official': DD3D's "
            f"dd3d/layers/smooth_l1_loss.py, 0.5 x^2 below beta; 'standard': Fast R-CNN's "
            f"0.5 x^2 / beta), got {form!r}"
        )
    return form


def smooth_l1(pred: Tensor, target: Tensor, beta: float, form: str = "standard") -> Tensor:
    """Element-wise smooth-L1 of ``x = pred - target`` (any shape, same units as the inputs).

    ``form="standard"``: ``0.5 x^2 / beta`` where ``|x| < beta``, else ``|x| - beta / 2``
    (fvcore ``nn/smooth_l1_loss.py``). ``form="official"``: ``0.5 x^2`` where ``|x| < beta``,
    else ``|x| - beta / 2`` (BEVFormer ``dd3d/layers/smooth_l1_loss.py``). ``|x|`` for both when
    ``beta < 1e-5``. Raises ``ValueError`` for another form.
    """
    check_smooth_l1_form(form)
    diff = (pred - target).abs()
    if beta < 1e-5:
        return diff
    quadratic = 0.5 * diff * diff
    if form == "standard":
        quadratic = quadratic / beta
    return torch.where(diff < beta, quadratic, diff - 0.5 * beta)


def _corners(parts: dict[str, Tensor], inv_intrinsics: Tensor) -> Tensor:
    center = unproject(parts["proj_ctr"], inv_intrinsics) * parts["depth"].unsqueeze(1)
    return box3d_corners(parts["quat"], center, parts["size"])


def disentangled_corner_loss(
    pred: dict[str, Tensor],
    target: dict[str, Tensor],
    inv_intrinsics: Tensor,
    beta: float,
    form: str = "official",
) -> tuple[dict[str, Tensor], Tensor]:
    """Disentangled 8-corner losses of P boxes.

    ``pred`` and ``target`` hold the decoded parts ``quat`` (P, 4) egocentric, ``proj_ctr``
    (P, 2) pixels, ``depth`` (P,), ``size`` (P, 3); ``inv_intrinsics`` (P, 3, 3).
    Returns one (P,) loss per part (smooth-L1 of the given ``form``, in metres, averaged over the
    24 corner coordinates; official ``DisentangledBox3DLoss``: ``"official"``) and the
    detached entangled L1 distance (P,) of the full predicted box, the target of the 3D
    confidence.
    """
    target_corners = _corners(target, inv_intrinsics)  # (P, 8, 3)
    losses = {}
    for part in BOX3D_PARTS:
        mixed = dict(target)
        mixed[part] = pred[part]
        err = smooth_l1(_corners(mixed, inv_intrinsics), target_corners, beta, form)
        losses[part] = err.flatten(1).mean(dim=1)  # (P, 8, 3) -> (P, 24) -> (P,)
    full = (_corners(pred, inv_intrinsics) - target_corners).detach().abs()
    return losses, full.flatten(1).mean(dim=1)  # (P, 8, 3) -> (P, 24) -> (P,)
