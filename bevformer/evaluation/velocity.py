"""Predicted against true velocity of matched boxes: what a model learned about motion.

:func:`matched_velocities` pairs each evaluable ground-truth box (valid, of a detection class
with a velocity: not barrier or traffic cone) with the highest-scoring prediction of its class
within ``max_distance`` metres (centre, xy, global frame, as the devkit's 2 m threshold)
that no other box took, greedily by prediction score, as ``DetectionEval`` matches; and
returns both velocities. :func:`velocity_summary` turns them into the numbers that say whether
a model uses time: mean velocity error, mean true and predicted speed, and the share of moving
boxes (true speed above 1 m/s) predicted as nearly static (below 0.5 m/s).
:func:`differenced_results` replaces a submission's velocities by the displacement of its own
boxes since the previous keyframe: how much motion the model's localisation alone carries.

Velocities are in the global frame (m/s, xy), as in a submission; the ground truth's
lidar-frame ``gt_boxes`` velocities are rotated there with ``ego2global @ lidar2ego``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bevformer.evaluation.references import evaluable, gt_boxes, lidar2global
from bevformer.structures.boxes import VX, VY, X, Z
from bevformer.structures.frames import apply

__all__ = ["differenced_results", "matched_velocities", "velocity_summary"]

# classes whose velocity the devkit does not score
STATIC_CLASSES = ("barrier", "traffic_cone")


def _ground_truth(info: Mapping[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, global xy centres ``[M, 2]`` and global xy velocities ``[M, 2]`` of the boxes
    whose velocity the devkit scores."""
    boxes = gt_boxes(info)
    to_global = lidar2global(info)
    centres = apply(to_global, boxes[:, X : Z + 1])  # [M, 3] global
    velocity = np.zeros((len(boxes), 3))
    velocity[:, :2] = boxes[:, VX : VY + 1]
    velocity = velocity @ to_global[:3, :3].T  # [M, 3] lidar -> global (rotation only)
    keep = evaluable(info, exclude=STATIC_CLASSES)
    names = [info["gt_names"][i] for i in keep]
    return names, centres[keep, :2], velocity[keep, :2]


def matched_velocities(
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    infos: Sequence[Mapping[str, Any]],
    max_distance: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``results``: a submission's ``results`` (token -> nuScenes boxes: ``translation``,
    ``velocity``, ``detection_name``, ``detection_score``, global frame); ``infos``: the
    split's keyframes. Returns (true, predicted) velocities ``[K, 2]`` of the K matched boxes
    (module docstring)."""
    true, predicted = [], []
    for info in infos:
        names, centres, velocity = _ground_truth(info)
        taken = np.zeros(len(names), dtype=bool)
        boxes = sorted(results.get(info["token"], []), key=lambda b: -b["detection_score"])
        for box in boxes:
            xy = np.asarray(box["translation"][:2], dtype=np.float64)
            best, best_distance = -1, max_distance
            for i, name in enumerate(names):
                if taken[i] or name != box["detection_name"]:
                    continue
                distance = float(np.hypot(*(centres[i] - xy)))
                if distance < best_distance:
                    best, best_distance = i, distance
            if best >= 0:
                taken[best] = True
                true.append(velocity[best])
                predicted.append(np.asarray(box["velocity"][:2], dtype=np.float64))
    empty = np.zeros((0, 2))
    return (np.array(true) if true else empty), (np.array(predicted) if predicted else empty)


def velocity_summary(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """``matched``, ``mean_error`` (m/s), ``mean_true_speed``, ``mean_predicted_speed``,
    ``moving_predicted_static`` (share of boxes moving faster than 1 m/s predicted slower than
    0.5 m/s) and ``speed_correlation`` (Pearson, true vs predicted speed)."""
    speed_true = np.linalg.norm(true, axis=1)
    speed_pred = np.linalg.norm(predicted, axis=1)
    moving = speed_true > 1.0
    static_share = float((speed_pred[moving] < 0.5).mean()) if moving.any() else 0.0
    out = {
        "matched": float(len(true)),
        "mean_error": float(np.linalg.norm(true - predicted, axis=1).mean()) if len(true) else 0.0,
        "mean_true_speed": float(speed_true.mean()) if len(true) else 0.0,
        "mean_predicted_speed": float(speed_pred.mean()) if len(true) else 0.0,
        "moving_predicted_static": static_share,
        "speed_correlation": 0.0,
    }
    if len(true) > 1 and speed_true.std() > 0 and speed_pred.std() > 0:
        out["speed_correlation"] = float(np.corrcoef(speed_true, speed_pred)[0, 1])
    return out


def differenced_results(
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    infos: Sequence[Mapping[str, Any]],
    max_speed: float = 16.0,
    min_score: float = 0.3,
) -> dict[str, list[dict[str, Any]]]:
    """A copy of ``results`` (token -> nuScenes boxes, global frame) whose velocities are the
    displacement of each box since the previous keyframe divided by the time between them.

    For each box of a keyframe whose previous keyframe (``info["prev"]``) is in ``results``,
    the nearest box of the same class there (xy, global frame, so the ego motion is removed)
    with a score of at least ``min_score`` and within ``max_speed`` (m/s) times the gap is its
    past position, each past box taken once, greedily by score. Boxes without one (the first
    keyframe of a scene, new objects) keep their own velocity. Velocities in m/s, global xy.
    Raises ``ValueError`` when a keyframe is not later than its previous one.
    """
    by_token = {info["token"]: info for info in infos}
    out: dict[str, list[dict[str, Any]]] = {}
    for token, boxes in results.items():
        info = by_token.get(token)
        prev_token = info.get("prev") if info is not None else None
        copied = [dict(box) for box in boxes]
        out[token] = copied
        if not prev_token or prev_token not in results or prev_token not in by_token:
            continue
        dt = (int(info["timestamp"]) - int(by_token[prev_token]["timestamp"])) * 1e-6
        if dt <= 0:
            raise ValueError(
                f"keyframe {token} is not later than its previous keyframe {prev_token}; "
                "the info file is broken"
            )
        before = [b for b in results[prev_token] if b["detection_score"] >= min_score]
        before_xy = np.array([b["translation"][:2] for b in before], dtype=np.float64)  # [P, 2]
        before_names = np.array([b["detection_name"] for b in before])  # [P]
        taken = np.zeros(len(before), dtype=bool)
        for box in sorted(copied, key=lambda b: -b["detection_score"]):
            if not len(before):
                break
            xy = np.asarray(box["translation"][:2], dtype=np.float64)
            distance = np.hypot(*(before_xy - xy).T)
            distance[taken | (before_names != box["detection_name"])] = np.inf
            best = int(np.argmin(distance))
            if distance[best] <= max_speed * dt:
                taken[best] = True
                box["velocity"] = [float(v) for v in (xy - before_xy[best]) / dt]
    return out
