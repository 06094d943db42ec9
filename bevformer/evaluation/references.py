"""Reference submissions made from the ground truth: the floors a detector's metrics are read
against.

Each reference puts every evaluable ground-truth box (valid, of a detection class) at its
true place with its true attribute, and changes only the velocity. The scores are drawn
uniformly from [0.5, 1) (seeded): the devkit averages each TP error over the recall curve
from 10 % recall on, so with equal scores the order of the ties would decide which boxes count;
random scores make every box count alike, as the varied scores of a detector do.

- ``gt``: the annotated velocity (the devkit's ``box_velocity``: centre difference of the
  instance's neighbouring annotations) -- NDS close to 1, a check of the pipeline;
- ``zero-velocity``: velocity 0 -- mAVE is then the mean speed of the matched boxes, the
  error of a detector that places every box perfectly and has learned nothing about motion
  (the *zero-velocity floor*);
- ``previous-frame``: the displacement of the same instance since the previous keyframe over
  the time between them (a constant-velocity guess from two frames, what a perfect detector
  with a perfect association to the previous keyframe could give), 0 where the instance is new
  or the keyframe has no previous one. With ``position_noise`` sigma > 0 every keyframe's
  centres are first moved by N(0, sigma^2) along its lidar x and y (seeded; one draw per box
  and keyframe, used both when the keyframe is the current one and when it is the previous
  one), only for the difference: the boxes stay where they are. That is the velocity a
  detector placing each box with that error in every frame gets from the 0.5 s difference
  (the per-axis error of the difference is sqrt(2) sigma / dt, 2.8 sigma m/s at 0.5 s); the
  placement precision a two-frame velocity needs is read off it.

Velocities are in the sample's lidar frame (``docs/CONVENTIONS.md``): the two centres are
moved to the global frame with their keyframes' ``ego2global @ lidar2ego``, differenced, and the
global velocity is rotated into the current lidar frame (as the info files' ``gt_boxes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bevformer.evaluation.results import to_nusc_boxes
from bevformer.structures.boxes import BOX_DIM, CLASSES, VX, VY, X, Z
from bevformer.structures.frames import apply, invert

__all__ = [
    "REFERENCES",
    "displaced_centres",
    "evaluable",
    "gt_boxes",
    "lidar2global",
    "previous_frame_velocity",
    "reference_results",
]

REFERENCES = ("gt", "zero-velocity", "previous-frame")


def lidar2global(info: Mapping[str, Any]) -> np.ndarray:
    """``[4, 4]`` float64 ``ego2global @ lidar2ego`` of a keyframe (info entry)."""
    return np.asarray(info["ego2global"], dtype=np.float64) @ np.asarray(
        info["lidar2ego"], dtype=np.float64
    )


def gt_boxes(info: Mapping[str, Any]) -> np.ndarray:
    """``[M, BOX_DIM]`` float64 copy of a keyframe's (info entry's) ``gt_boxes`` (lidar frame)."""
    return np.array(info["gt_boxes"], dtype=np.float64).reshape(-1, BOX_DIM)


def evaluable(info: Mapping[str, Any], exclude: Sequence[str] = ()) -> list[int]:
    """Indices of a keyframe's ground-truth boxes that the devkit scores: valid and of a
    detection class (not one of ``exclude``)."""
    return [
        i
        for i, (name, valid) in enumerate(zip(info["gt_names"], info["valid_flag"], strict=True))
        if valid and name in CLASSES and name not in exclude
    ]


def previous_frame_velocity(info: Mapping[str, Any], prev: Mapping[str, Any] | None) -> np.ndarray:
    """``[M, 2]`` lidar-frame velocities (m/s) of ``info``'s boxes from their instance's
    displacement since the keyframe ``prev`` (0 for an instance ``prev`` does not have, and
    for every box when ``prev`` is None)."""
    boxes = gt_boxes(info)
    out = np.zeros((len(boxes), 2))
    if prev is None:
        return out
    dt = (int(info["timestamp"]) - int(prev["timestamp"])) * 1e-6  # microseconds -> s
    if dt <= 0:
        raise ValueError(
            f"keyframe {info['token']} is not later than its previous keyframe {prev['token']} "
            f"(timestamps {info['timestamp']}, {prev['timestamp']}); the info file is broken"
        )
    before = gt_boxes(prev)
    row_of = {token: i for i, token in enumerate(prev["instance_tokens"])}
    pairs = [(i, row_of[t]) for i, t in enumerate(info["instance_tokens"]) if t in row_of]
    if not pairs:
        return out
    now_rows, prev_rows = (list(rows) for rows in zip(*pairs, strict=True))
    cur2global = lidar2global(info)
    now = apply(cur2global, boxes[now_rows, X : Z + 1])  # [K, 3] global
    then = apply(lidar2global(prev), before[prev_rows, X : Z + 1])  # [K, 3] global
    # global velocity [K, 3] -> current lidar frame (rotation only), xy
    out[now_rows] = ((now - then) / dt @ invert(cur2global)[:3, :3].T)[:, :2]
    return out


def displaced_centres(
    infos: Sequence[Mapping[str, Any]], sigma: float, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``{token: info}`` copies of ``infos`` whose ``gt_boxes`` centres are moved by N(0,
    ``sigma``^2) metres along the lidar x and y axes (one seeded draw per box; z and every other
    field unchanged): what a detector with that placement error would see of each keyframe.
    Raises ``ValueError`` for a negative ``sigma``."""
    if not sigma >= 0:
        raise ValueError(f"position noise must be >= 0 metres, got {sigma}")
    rng = np.random.default_rng(seed)
    out = {}
    for info in infos:
        boxes = gt_boxes(info)
        boxes[:, X : X + 2] += rng.normal(0.0, sigma, (len(boxes), 2))
        out[info["token"]] = {**info, "gt_boxes": boxes}
    return out


def reference_results(
    infos: Sequence[Mapping[str, Any]], kind: str, seed: int = 0, position_noise: float = 0.0
) -> dict[str, list[dict[str, Any]]]:
    """Submission entries (``write_submission``'s input) of reference ``kind`` (one of
    :data:`REFERENCES`, module docstring) for every keyframe of ``infos`` (one split; the
    previous keyframe is looked up by the ``prev`` token among them); ``seed`` of the scores
    and of the centre noise; ``position_noise``: sigma (m) of the centres the
    ``previous-frame`` velocity is differenced from. Raises ``ValueError`` for an unknown
    ``kind`` and for position noise on another reference."""
    if kind not in REFERENCES:
        raise ValueError(f"unknown reference {kind!r}; choose from {list(REFERENCES)}")
    if position_noise and kind != "previous-frame":
        raise ValueError(
            f"position noise applies to the previous-frame reference only, not to {kind!r}"
        )
    by_token = {info["token"]: info for info in infos}
    if position_noise:  # the previous-frame reference (checked above)
        by_token = displaced_centres(infos, position_noise, seed=seed + 1)
    rng = np.random.default_rng(seed)
    results = {}
    for info in infos:
        boxes = gt_boxes(info)
        if kind == "zero-velocity":
            boxes[:, VX : VY + 1] = 0.0
        elif kind == "previous-frame":
            boxes[:, VX : VY + 1] = previous_frame_velocity(
                by_token[info["token"]], by_token.get(info.get("prev"))
            )
        keep = evaluable(info)
        labels = np.array([CLASSES.index(info["gt_names"][i]) for i in keep], dtype=np.int64)
        attributes = [info["gt_attributes"][i] for i in keep]
        scores = rng.uniform(0.5, 1.0, len(keep))
        results[info["token"]] = to_nusc_boxes(
            boxes[keep], scores, labels, info, attributes=attributes
        )
    return results
