"""The nuScenes table records of the synthetic dataset (schema of the nuScenes devkit:
``nuscenes/nuscenes.py`` and the nuScenes schema documentation).

Tokens are 32-hex hashes of the seed and the record's identity, so the same seed writes the
same tables whatever the number of worker processes.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .catalog import (
    ATTRIBUTES,
    CAMERA_NAMES,
    CATEGORIES,
    CLASS_INFO,
    CLASSES,
    LIDAR_NAME,
    VISIBILITY,
)
from .rig import Rig, yaw_to_quat
from .world import SceneWorld

__all__ = [
    "annotation_records",
    "rounded",
    "scene_records",
    "static_tables",
    "token",
]

ANNOTATION_RADIUS = 60.0  # objects within this xy distance of the ego are annotated


def token(seed: int, *parts: object) -> str:
    """32-hex token, a hash of the seed and the record's identity (stable across runs)."""
    text = "/".join([str(seed), *(str(p) for p in parts)])
    return hashlib.md5(text.encode()).hexdigest()


def rounded(values, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]


def static_tables(seed: int) -> dict[str, list]:
    """category, attribute, visibility and sensor: the same for every scene."""
    return {
        "category": [
            {"token": token(seed, "category", n), "name": n, "description": d, "index": i}
            for n, d, i in CATEGORIES
        ],
        "attribute": [
            {"token": token(seed, "attribute", n), "name": n, "description": d}
            for n, d in ATTRIBUTES
        ],
        "visibility": [
            {"token": tok, "level": level, "description": desc}
            for tok, level, desc, _ in VISIBILITY
        ],
        "sensor": [
            {
                "token": token(seed, "sensor", ch),
                "channel": ch,
                "modality": "lidar" if ch == LIDAR_NAME else "camera",
            }
            for ch in (*CAMERA_NAMES, LIDAR_NAME)
        ],
    }


def scene_records(
    seed: int,
    name: str,
    logfile: str,
    location: str,
    timestamps: list[int],
    rig: Rig,
) -> dict[str, list]:
    """log, scene, sample (one per keyframe timestamp) and calibrated_sensor records."""
    log_token = token(seed, "log", name)
    scene_token = token(seed, "scene", name)
    samples = [token(seed, "sample", name, k) for k in range(len(timestamps))]
    log = {
        "token": log_token,
        "logfile": logfile,
        "vehicle": logfile[:4],
        "date_captured": logfile[5:15],
        "location": location,
    }
    scene = {
        "token": scene_token,
        "log_token": log_token,
        "nbr_samples": len(samples),
        "first_sample_token": samples[0],
        "last_sample_token": samples[-1],
        "name": name,
        "description": "Synthetic scene: curved multi-lane road, parked and moving traffic, "
        "pedestrians, barriers and cones.",
    }
    sample = [
        {
            "token": tok,
            "timestamp": timestamps[k],
            "prev": samples[k - 1] if k > 0 else "",
            "next": samples[k + 1] if k + 1 < len(samples) else "",
            "scene_token": scene_token,
        }
        for k, tok in enumerate(samples)
    ]
    calibrated = [
        {
            "token": token(seed, "calibrated_sensor", name, calib.channel),
            "sensor_token": token(seed, "sensor", calib.channel),
            "translation": rounded(calib.translation),
            "rotation": rounded(calib.rotation, 8),
            "camera_intrinsic": []
            if calib.intrinsic is None
            else [rounded(row) for row in calib.intrinsic],
        }
        for calib in (rig.lidar, *rig.cameras)
    ]
    return {"log": [log], "scene": [scene], "sample": sample, "calibrated_sensor": calibrated}


def _attribute(world: SceneWorld, i: int, speed: float) -> str:
    kind = CLASS_INFO[CLASSES[world.cls[i]]].kind
    if kind == "vehicle":
        if world.parked[i]:
            return "vehicle.parked"
        return "vehicle.moving" if speed > 0.5 else "vehicle.stopped"
    if kind == "cycle":
        return "cycle.without_rider" if world.parked[i] else "cycle.with_rider"
    if kind == "pedestrian":
        return "pedestrian.moving" if speed > 0.3 else "pedestrian.standing"
    return ""


def _visibility_token(fraction: float) -> str:
    chosen = VISIBILITY[0][0]
    for tok, _, _, lower in VISIBILITY:
        if fraction >= lower:
            chosen = tok
    return chosen


def annotation_records(
    seed: int,
    name: str,
    world: SceneWorld,
    times: list[float],
    visible_px: np.ndarray,
    silhouette_px: np.ndarray,
    lidar_pts: np.ndarray,
) -> dict[str, list]:
    """instance and sample_annotation records for the keyframes at ``times`` (seconds).

    ``visible_px``, ``silhouette_px``, ``lidar_pts``: (K keyframes, M objects) counts over the
    six cameras (visible pixels, silhouette pixels) and the lidar (returns on the box)."""
    attribute_tokens = {a: token(seed, "attribute", a) for a, _ in ATTRIBUTES}
    category_tokens = {c: token(seed, "category", c) for c, _, _ in CATEGORIES}
    chains: dict[int, list[str]] = {}
    annotations: list[dict] = []
    for k, t in enumerate(times):
        state = world.state(t)
        ego, _ = world.ego_pose(t)
        dist = np.linalg.norm(state.center[:, :2] - ego[:2], axis=1)
        for i in np.nonzero(dist <= ANNOTATION_RADIUS)[0].tolist():
            attr = _attribute(world, i, float(np.linalg.norm(state.velocity[i, :2])))
            silhouette = silhouette_px[k, i]
            fraction = visible_px[k, i] / silhouette if silhouette > 0 else 0.0
            tok = token(seed, "sample_annotation", name, i, k)
            length, width, height = state.lwh[i]
            annotations.append(
                {
                    "token": tok,
                    "sample_token": token(seed, "sample", name, k),
                    "instance_token": token(seed, "instance", name, i),
                    "visibility_token": _visibility_token(fraction),
                    "attribute_tokens": [attribute_tokens[attr]] if attr else [],
                    "translation": rounded(state.center[i]),
                    "size": rounded([width, length, height], 4),
                    "rotation": rounded(yaw_to_quat(state.yaw[i]), 8),
                    "num_lidar_pts": int(lidar_pts[k, i]),
                    "num_radar_pts": 0,
                }
            )
            chains.setdefault(i, []).append(tok)
    links: dict[str, tuple[str, str]] = {}
    instances = []
    for i, toks in chains.items():
        for j, tok in enumerate(toks):
            links[tok] = (toks[j - 1] if j > 0 else "", toks[j + 1] if j + 1 < len(toks) else "")
        instances.append(
            {
                "token": token(seed, "instance", name, i),
                "category_token": category_tokens[CLASS_INFO[CLASSES[world.cls[i]]].category],
                "nbr_annotations": len(toks),
                "first_annotation_token": toks[0],
                "last_annotation_token": toks[-1],
            }
        )
    for rec in annotations:
        rec["prev"], rec["next"] = links[rec["token"]]
    return {"instance": instances, "sample_annotation": annotations}
