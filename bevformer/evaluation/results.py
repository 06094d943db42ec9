"""Lidar-frame detections -> the nuScenes detection submission JSON.

A submission is ``{"meta": {...}, "results": {sample_token: [entry, ...]}}`` with one entry
per box (https://www.nuscenes.org/object-detection, "Results format"): ``sample_token``,
``translation`` / ``size`` (wlh) / ``rotation`` (quaternion wxyz) in the global frame,
``velocity`` (global vx, vy), ``detection_name``, ``detection_score``, ``attribute_name``.

Boxes are the box vector of ``docs/CONVENTIONS.md`` in the lidar frame of the sample; they go to
the global frame with the sample's ``lidar2ego`` and ``ego2global`` as mmdetection3d 0.17's
``output_to_nusc_box`` + ``lidar_nusc_box_to_global`` do. Without predicted attributes the
attribute is chosen from the class and speed as mmdetection3d's ``NuScenesDataset._format_bbox``
(``DefaultAttribute``; moving above 0.2 m/s).
"""

from __future__ import annotations

import json
import os
import os.path as osp
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bevformer.structures.boxes import BOX_DIM, CLASSES, boxes_to_global

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "MOVING_SPEED",
    "MAX_BOXES_PER_SAMPLE",
    "MIN_SIZE",
    "default_attribute",
    "to_nusc_boxes",
    "write_submission",
]

# mmdetection3d NuScenesDataset.DefaultAttribute (the attribute of a slow box).
DEFAULT_ATTRIBUTES = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.moving",
    "trailer": "vehicle.parked",
    "barrier": "",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
}
MOVING_SPEED = 0.2  # m/s
MAX_BOXES_PER_SAMPLE = 500  # detection_cvpr_2019 ``max_boxes_per_sample``
MIN_SIZE = 1e-3  # metres; the devkit requires every size > 0

_VEHICLES = ("car", "truck", "construction_vehicle", "bus", "trailer")


def default_attribute(name: str, speed: float) -> str:
    """Attribute of a detection without a predicted one (mmdetection3d ``_format_bbox``)."""
    if speed > MOVING_SPEED:
        if name in _VEHICLES:
            return "vehicle.moving"
        if name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
        return DEFAULT_ATTRIBUTES[name]
    if name == "pedestrian":
        return "pedestrian.standing"
    if name == "bus":
        return "vehicle.stopped"
    return DEFAULT_ATTRIBUTES[name]


def to_nusc_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    info: Mapping[str, Any],
    classes: Sequence[str] = CLASSES,
    attributes: Sequence[str] | None = None,
    class_range: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Submission entries of one sample.

    Args:
        boxes: ``[M, 9]`` box vectors in the sample's lidar frame.
        scores: ``[M]`` detection scores.
        labels: ``[M]`` class indices into ``classes``.
        info: the sample's info (``token``, ``lidar2ego``, ``ego2global``).
        classes: detection names indexed by label (the 10 nuScenes classes).
        attributes: ``[M]`` attribute names; ``None`` (or ``None`` items) picks
            :func:`default_attribute` from the class and speed.
        class_range: optional ``{class: metres}``; boxes farther from the ego (xy) are dropped,
            as mmdetection3d does with the eval config's ``class_range`` (the devkit filters
            them anyway).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(
            f"boxes, scores and labels must have the same length, got {len(boxes)}, "
            f"{len(scores)}, {len(labels)}"
        )
    if attributes is not None and len(attributes) != len(boxes):
        raise ValueError(f"attributes must have {len(boxes)} items, got {len(attributes)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(
            f"labels must index the {len(classes)} classes, found {labels.min()}..{labels.max()}"
        )
    boxes, scores, labels, attributes = _sanitize(boxes, scores, labels, attributes, info)
    lidar2ego = np.asarray(info["lidar2ego"], dtype=np.float64)
    ego2global = np.asarray(info["ego2global"], dtype=np.float64)
    ego_xy = ego2global[:2, 3]
    entries = []
    for i, box in enumerate(boxes_to_global(boxes, lidar2ego, ego2global)):
        name = classes[labels[i]]
        if class_range is not None:
            if np.linalg.norm(box.center[:2] - ego_xy) > class_range[name]:
                continue
        velocity = box.velocity[:2]
        attr = attributes[i] if attributes is not None else None
        if attr is None:
            attr = default_attribute(name, float(np.linalg.norm(velocity)))
        entries.append(
            {
                "sample_token": info["token"],
                "translation": box.center.tolist(),
                "size": box.wlh.tolist(),
                "rotation": box.orientation.elements.tolist(),
                "velocity": velocity.tolist(),
                "detection_name": name,
                "detection_score": float(scores[i]),
                "attribute_name": attr,
            }
        )
    return entries


def _sanitize(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    attributes: Sequence[str] | None,
    info: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[str] | None]:
    """Boxes the nuScenes devkit accepts, with one warning naming the sample and the fields.

    A box with a non-finite centre, size, yaw or score is dropped (the devkit fails on it at the
    end of the evaluation); a size that is not positive (``exp`` of an underflowed log-size, in
    fp16 too) is clamped to :data:`MIN_SIZE`; a non-finite velocity becomes 0 (unknown).
    """
    boxes = boxes.copy()
    fields = {"center": boxes[:, 0:3], "size": boxes[:, 3:6], "yaw": boxes[:, 6:7]}
    bad = {name: ~np.isfinite(v).all(axis=1) for name, v in fields.items()}
    bad["score"] = ~np.isfinite(scores)
    drop = np.logical_or.reduce(list(bad.values())) if len(boxes) else np.zeros(0, bool)
    notes = (
        [
            f"dropped {int(drop.sum())} boxes with non-finite "
            + ", ".join(f"{name} ({int(m.sum())})" for name, m in bad.items() if m.any())
        ]
        if drop.any()
        else []
    )
    keep = ~drop
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if attributes is not None:
        attributes = [a for a, k in zip(attributes, keep, strict=True) if k]
    small = boxes[:, 3:6] < MIN_SIZE
    if small.any():
        notes.append(f"clamped {int(small.any(axis=1).sum())} sizes below {MIN_SIZE} m")
        boxes[:, 3:6] = np.maximum(boxes[:, 3:6], MIN_SIZE)
    unknown = ~np.isfinite(boxes[:, 7:])
    if unknown.any():
        notes.append(f"set {int(unknown.any(axis=1).sum())} non-finite velocities to 0")
        boxes[:, 7:] = np.where(unknown, 0.0, boxes[:, 7:])
    if notes:
        warnings.warn(
            f"sample {info.get('token', '?')}: " + "; ".join(notes) + " (the model's outputs "
            "are not all finite: check for divergence or fp16 overflow)",
            stacklevel=3,
        )
    return boxes, scores, labels, attributes


def _preview(tokens: set[str], n: int = 5) -> str:
    items = sorted(tokens)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def write_submission(
    results_by_token: Mapping[str, list[dict[str, Any]]],
    path: str,
    meta: Mapping[str, Any] | None = None,
    expected_tokens: Sequence[str] | None = None,
) -> str:
    """Write ``{"meta": ..., "results": ...}`` to ``path`` and return ``path``.

    ``meta`` updates the camera-only default (``use_camera`` True, the rest False). With
    ``expected_tokens`` (the split's samples) every one must be present, with an empty list
    where nothing was detected, and no other token may appear: ``DetectionEval`` requires it.
    """
    tokens = set(results_by_token)
    if expected_tokens is not None:
        expected = set(expected_tokens)
        missing, extra = expected - tokens, tokens - expected
        if missing:
            raise ValueError(
                f"submission lacks {len(missing)} of the split's {len(expected)} samples: "
                f"{_preview(missing)}; give every sample an entry (an empty list when nothing "
                "was detected)"
            )
        if extra:
            raise ValueError(
                f"submission has {len(extra)} samples that are not in the split: "
                f"{_preview(extra)}; evaluate with the info file of the split you predicted"
            )
    if results_by_token and not any(results_by_token.values()):
        raise ValueError(
            f"the model produced no finite boxes for any of the {len(results_by_token)} "
            "samples: diverged? (check the training log for NaN losses, or the score "
            "threshold / post_center_range of the config)"
        )
    for token, entries in results_by_token.items():
        if len(entries) > MAX_BOXES_PER_SAMPLE:
            raise ValueError(
                f"sample {token} has {len(entries)} boxes; the nuScenes evaluation accepts at "
                f"most {MAX_BOXES_PER_SAMPLE}: keep the top-scoring ones"
            )
    full_meta = {
        "use_camera": True,
        "use_lidar": False,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    full_meta.update(meta or {})
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": full_meta, "results": dict(results_by_token)}, f)
    return path
