"""Box coder of the BEVFormer detection head: regression codes and NMS-free decoding.

BEVFormer (Li et al., ECCV 2022, arXiv:2203.17270) regresses, per query, the 10-number code

    (cx, cy, log w, log l, cz, log h, sin YAW, cos YAW, vx, vy)

with centres in metres in the current lidar frame (the head maps its sigmoid outputs into
``pc_range``; despite the name nothing else is normalised) — official
``core/bbox/util.py`` (``normalize_bbox`` / ``denormalize_bbox``). The box vector it encodes is
the project's 9-number vector ``[X, Y, Z, W, L, H, YAW, VX, VY]`` (``docs/CONVENTIONS.md``).

Decoding (official ``core/bbox/coders/nms_free_coder.py``, ``NMSFreeCoder``): the top
``max_num`` of sigmoid(cls) over all (query, class) pairs, each pair giving one box with that
label; boxes whose centre lies outside ``post_center_range`` are dropped, and optionally those
under a score threshold.

**Centre z.** The official ``get_bboxes`` sets ``z = cz - h / 2`` before building mmdet3d's
``LiDARInstance3DBoxes``, whose stored z is the bottom centre. The project's box vector stores
the gravity centre (``docs/CONVENTIONS.md``), which is what ``cz`` already is, so the decoded
boxes keep ``Z = cz`` and nothing is subtracted.

Legend: B batch, Q queries, K classes (num_classes), M boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bevformer.registry import MODELS
from bevformer.structures.boxes import BOX_DIM, VX, VY, YAW, H, L, W, X, Y, Z
from bevformer.structures.grid import BEVGrid

__all__ = [
    "CODE_SIZE",
    "CX",
    "CY",
    "LOG_W",
    "LOG_L",
    "CZ",
    "LOG_H",
    "SIN",
    "COS",
    "CVX",
    "CVY",
    "NMSFreeCoder",
    "codes_from_deltas",
    "denormalize_bbox",
    "inverse_sigmoid",
    "normalize_bbox",
    "refine_reference",
]

# Indices of the regression code.
CX, CY, LOG_W, LOG_L, CZ, LOG_H, SIN, COS, CVX, CVY = range(10)
CODE_SIZE = 10


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [0, 1] and both x, 1 - x clamped to at least ``eps`` (mmdet
    ``inverse_sigmoid``)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_reference(deltas: Tensor, reference: Tensor) -> Tensor:
    """A reference point moved by a layer's regression output, in inverse-sigmoid space.

    ``deltas [..., 10]`` (code layout), ``reference [..., 3]`` normalised (x, y, z) ->
    ``sigmoid(deltas[CX, CY, CZ] + logit(reference))`` ``[..., 3]`` (official
    ``DetectionTransformerDecoder.forward`` and ``BEVFormerHead.forward``).
    """
    centre = deltas[..., [CX, CY, CZ]]
    return (centre + inverse_sigmoid(reference)).sigmoid()


def codes_from_deltas(deltas: Tensor, references: Tensor, grid: BEVGrid) -> Tensor:
    """Regression outputs ``[..., 10]`` predicted from normalised ``references [..., 3]`` ->
    codes with the centre (CX, CY, CZ) in lidar metres of ``grid``'s ``pc_range``; the other
    entries are the raw outputs (official ``BEVFormerHead.forward``)."""
    centre = grid.denormalize(refine_reference(deltas, references))
    entries = list(deltas.unbind(-1))
    entries[CX], entries[CY], entries[CZ] = centre.unbind(-1)
    return torch.stack(entries, dim=-1)  # no in-place indexing: also exports to ONNX


def normalize_bbox(boxes: Tensor) -> Tensor:
    """Box vectors ``[..., 9]`` -> regression codes ``[..., 10]`` (module docstring).

    Sizes must be positive (their logs are taken); NaN velocities stay NaN (the losses skip
    such targets).
    """
    if boxes.shape[-1] != BOX_DIM:
        raise ValueError(
            f"normalize_bbox expects box vectors [..., {BOX_DIM}] (x, y, z, w, l, h, yaw, vx, vy; "
            f"docs/CONVENTIONS.md), got shape {tuple(boxes.shape)}"
        )
    yaw = boxes[..., YAW]
    return torch.stack(
        [
            boxes[..., X],
            boxes[..., Y],
            boxes[..., W].log(),
            boxes[..., L].log(),
            boxes[..., Z],
            boxes[..., H].log(),
            yaw.sin(),
            yaw.cos(),
            boxes[..., VX],
            boxes[..., VY],
        ],
        dim=-1,
    )


def denormalize_bbox(codes: Tensor) -> Tensor:
    """Regression codes ``[..., 10]`` -> box vectors ``[..., 9]``; YAW = atan2(sin, cos)."""
    if codes.shape[-1] != CODE_SIZE:
        raise ValueError(
            f"denormalize_bbox expects codes [..., {CODE_SIZE}] (cx, cy, log w, log l, cz, log h, "
            f"sin, cos, vx, vy), got shape {tuple(codes.shape)}"
        )
    return torch.stack(
        [
            codes[..., CX],
            codes[..., CY],
            codes[..., CZ],
            codes[..., LOG_W].exp(),
            codes[..., LOG_L].exp(),
            codes[..., LOG_H].exp(),
            torch.atan2(codes[..., SIN], codes[..., COS]),
            codes[..., CVX],
            codes[..., CVY],
        ],
        dim=-1,
    )


@MODELS.register_module()
class NMSFreeCoder:
    """Top-k decoding of DETR-style outputs into lidar-frame box vectors (no NMS).

    ``max_num`` boxes at most per sample; ``post_center_range`` (x_min, y_min, z_min, x_max,
    y_max, z_max, metres) bounds the decoded centres. With ``score_threshold`` set, boxes must
    score above it; if none does, the threshold is lowered by factors of 0.9 until some box
    passes, and below 0.01 every box is kept (the official coder's fallback).
    """

    def __init__(
        self,
        num_classes: int = 10,
        max_num: int = 300,
        post_center_range: Sequence[float] | None = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
        score_threshold: float | None = None,
    ) -> None:
        if post_center_range is not None and len(post_center_range) != 6:
            raise ValueError(
                "post_center_range must be (x_min, y_min, z_min, x_max, y_max, z_max), got "
                f"{post_center_range}"
            )
        self.num_classes = num_classes
        self.max_num = max_num
        self.post_center_range = (
            None if post_center_range is None else tuple(float(v) for v in post_center_range)
        )
        self.score_threshold = score_threshold

    def _threshold_mask(self, scores: Tensor) -> Tensor:
        threshold = float(self.score_threshold)
        mask = scores > threshold
        while not bool(mask.any()):
            threshold *= 0.9
            if threshold < 0.01:
                return torch.ones_like(mask)
            mask = scores >= threshold
        return mask

    def decode_single(self, cls_scores: Tensor, bbox_preds: Tensor) -> dict[str, Tensor]:
        """One sample: logits ``[Q, K]`` and codes ``[Q, 10]`` -> boxes, scores, labels."""
        if cls_scores.shape[-1] != self.num_classes:
            raise ValueError(
                f"cls_scores has {cls_scores.shape[-1]} classes, the coder {self.num_classes}"
            )
        probs = cls_scores.sigmoid()
        k = min(self.max_num, probs.numel())
        scores, flat_index = probs.flatten().topk(k)  # over (query, class) pairs, Q*K
        labels = flat_index % self.num_classes
        query_index = torch.div(flat_index, self.num_classes, rounding_mode="floor")
        boxes = denormalize_bbox(bbox_preds[query_index])

        keep = torch.ones_like(scores, dtype=torch.bool)
        if self.post_center_range is not None:
            bounds = boxes.new_tensor(self.post_center_range)
            centres = boxes[:, X : Z + 1]
            keep &= (centres >= bounds[:3]).all(-1) & (centres <= bounds[3:]).all(-1)
        if self.score_threshold:
            keep &= self._threshold_mask(scores)
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def decode(self, cls_scores: Tensor, bbox_preds: Tensor) -> list[dict[str, Tensor]]:
        """A batch: logits ``[B, Q, K]`` and codes ``[B, Q, 10]`` -> one dict per sample."""
        if cls_scores.dim() != 3 or bbox_preds.dim() != 3:
            raise ValueError(
                "decode expects cls_scores [B, Q, K] and bbox_preds [B, Q, 10] (one decoder "
                f"layer), got {tuple(cls_scores.shape)} and {tuple(bbox_preds.shape)}"
            )
        return [self.decode_single(c, b) for c, b in zip(cls_scores, bbox_preds)]
