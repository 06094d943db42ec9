"""What the temporal fusion of a two-frame model sees and reads, measured on its own batches.

:func:`bev_mode_gap` compares, cell by cell, the three BEVs that meet in training: the past
frame's, encoded as the official ``obtain_history_bev`` does (eval mode, no gradients), and the
current frame's in eval mode and in train mode (dropout on). The fusion learns from the
difference between the past and the train-mode current BEV; at test time it sees the
difference to the eval-mode one. Where the train/eval gap of the current BEV (``mode``) is
as large as the temporal difference (``time``, past vs eval-mode current), the motion of an
object is buried in dropout noise during training.

:func:`past_gradient_share` asks which of the two BEVs the outputs depend on: of the gradient
of the top-k queries' predicted speed, the share that reaches the past BEV (against the
current BEV), next to the same share for their class scores as a control. A fusion that reads
motion gives speed a different share than class.

Both take a collated batch of a two-frame fusion config (a past slot, then the current one,
e.g. frames (-1, 0); ``frame_valid`` true for both slots of every sample) and leave the
model's training flag as they found it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bevformer.models.blocks import evaluating
from bevformer.models.coder import CVX, CVY
from bevformer.structures.boxes import VX, VY

__all__ = ["bev_mode_gap", "past_gradient_share"]


def _two_frames(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """-> (img ``[B, 2, N, 3, H, W]``, lidar2img ``[B, 2, N, 4, 4]``); ``ValueError`` unless
    the model fuses a past frame with the current one and every sample has its past frame."""
    if len(model.frames) != 2 or model.current_slot != 1 or model.bev.fusion is None:
        raise ValueError(
            f"needs a two-frame fusion config (a past frame, then the current one: e.g. "
            f"..._t2-hybrid_12ep.py with frames (-1, 0)); this "
            f"model has frames {tuple(model.frames)}, fusion {type(model.bev.fusion).__name__}"
        )
    valid = batch.get("frame_valid")
    if valid is None or not bool(torch.as_tensor(valid)[:, 0].all()):
        raise ValueError("every sample of the batch needs its past frame (frame_valid[:, 0])")
    return batch["img"], batch["lidar2img"]


def _relative(a: Tensor, b: Tensor) -> Tensor:
    """Per-cell ``|a - b| / |b|`` of ``[B, Q, C]`` BEVs -> ``[B, Q]``."""
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-12)


def bev_mode_gap(
    model: nn.Module,
    batch: Mapping[str, Any],
    moving_speed: float = 2.0,
    static_speed: float = 0.2,
) -> dict[str, Tensor]:
    """Relative per-cell differences (module docstring) on one batch with ground truth.

    Returns 1-D tensors ``mode_all``, ``time_all`` over every cell, and ``mode_moving``,
    ``time_moving`` / ``mode_static``, ``time_static`` over the cells that hold the centre of
    a box faster than ``moving_speed`` / slower than ``static_speed`` (m/s, lidar frame).
    ``mode``: |current(train) - current(eval)| / |current(eval)|; ``time``: |past - current
    (eval)| / |current(eval)|. The train-mode pass draws dropout from torch's global generator.
    """
    img, lidar2img = _two_frames(model, batch)
    cur = model.current_slot
    with evaluating(model):
        past = model.frame_bev(img, lidar2img, cur - 1)
        current = model.frame_bev(img, lidar2img, cur)
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            current_train = model.frame_bev(img, lidar2img, cur)
    finally:
        model.train(was_training)
    mode, time = _relative(current_train, current), _relative(past, current)
    grid = model.grid
    out = {"mode_all": mode.flatten(), "time_all": time.flatten()}
    picked: dict[str, list[Tensor]] = {k: [] for k in ("moving", "static")}
    for b, boxes in enumerate(batch["gt_boxes"]):
        token, inside = grid.cell_tokens(boxes[:, :2].to(current))  # [M], [M]
        speed = boxes[:, VX : VY + 1].to(current).norm(dim=-1)
        picked["moving"].append(token[inside & (speed > moving_speed)] + b * grid.num_cells)
        picked["static"].append(token[inside & (speed < static_speed)] + b * grid.num_cells)
    for name, tokens in picked.items():
        index = torch.cat(tokens)
        out[f"mode_{name}"], out[f"time_{name}"] = mode.flatten()[index], time.flatten()[index]
    return out


def past_gradient_share(
    model: nn.Module, batch: Mapping[str, Any], top_k: int = 30
) -> dict[str, float]:
    """Share of the gradient reaching the past BEV, ``|g_past| / (|g_past| + |g_current|)``,
    for the sum of the predicted speeds (``"velocity"``) and of the best class scores
    (``"class"``) of each sample's ``top_k`` queries (last decoder layer, first group), summed
    over the batch's samples. The model runs in eval mode, as at test time."""
    img, lidar2img = _two_frames(model, batch)
    cur = model.current_slot
    with evaluating(model):
        past = model.frame_bev(img, lidar2img, cur - 1)
        current = model.frame_bev(img, lidar2img, cur)
        feats = model.extract_feat(img[:, cur], None, augment=False)
    past, current = past.requires_grad_(), current.requires_grad_()
    grid = model.grid
    was_training = model.training
    model.eval()
    try:
        fused = model.bev.fusion([grid.tokens_to_map(past), grid.tokens_to_map(current)])
        outputs, _ = model.decode_queries(
            fused, feats, batch.get("intrinsics"), batch.get("cam2lidar"), None, img
        )
    finally:
        model.train(was_training)
    per_group = model.pts_bbox_head.queries_per_group
    cls = outputs["cls_scores"][-1, :, :per_group]  # [B, Qg, K]
    box = outputs["bbox_preds"][-1, :, :per_group]  # [B, Qg, 10]
    top = cls.sigmoid().amax(-1).topk(min(top_k, per_group), dim=-1).indices  # [B, k]
    rows = torch.arange(cls.shape[0])[:, None]
    targets = {
        "velocity": box[rows, top, CVX : CVY + 1].norm(dim=-1).sum(),
        "class": cls[rows, top].amax(-1).sum(),
    }
    shares = {}
    for name, target in targets.items():
        grads = torch.autograd.grad(target, (past, current), retain_graph=True, allow_unused=True)
        p, c = (0.0 if g is None else g.norm().item() for g in grads)  # None: not read at all
        shares[name] = p / max(p + c, 1e-30)
    return shares
