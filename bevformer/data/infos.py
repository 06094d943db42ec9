"""Temporal info files of a nuScenes-format dataroot: build, save and load.

An info file lists the keyframes of one split, sorted by scene then timestamp, with everything
the pipeline needs (camera paths, calibration, poses, lidar-frame GT boxes, per-camera mono
annotations). The JSON layout is defined in ``docs/CONVENTIONS.md`` ("Info files").

Facts followed from the reference code:
- mmdetection3d 0.17 ``tools/data_converter/nuscenes_converter.py``: GT boxes are the devkit's
  ``get_sample_data(lidar_token)`` boxes (lidar frame at the lidar timestamp), yaw
  ``-yaw_nus - pi/2``, velocity ``box_velocity`` rotated from global into the lidar frame;
  ``cam2lidar`` as ``obtain_sensor2top``; ``valid_flag = num_lidar_pts + num_radar_pts > 0``.
- DD3D's nuScenes loader (BEVFormer ``dd3d/datasets/nuscenes.py``): the 2D box of a camera
  annotation is the extent of the 8 projected corners clipped to the image, kept when the
  clipped box has IoU >= 0.2 with the unclipped one; ``speed = |box_velocity|`` (NaN unknown).

Velocities the devkit cannot estimate (an instance seen once) are NaN there; in ``gt_boxes``
and ``velocity_cam`` they are written as 0 (what BEVFormer's dataset feeds its loss) and
flagged False in ``gt_velocity_valid``; the mono ``speed`` stays NaN.
"""

from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Sequence
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from bevformer.structures.boxes import CLASSES, CORNER_SIGNS, boxes_from_nusc
from bevformer.structures.frames import apply, cam2lidar, invert, pose_matrix

__all__ = [
    "INFO_FORMAT",
    "INFO_VERSION",
    "CAMERA_NAMES",
    "NUSCENES_TABLES",
    "SPLITS",
    "check_tables",
    "load_nuscenes",
    "check_cameras",
    "build_sample_info",
    "build_infos",
    "save_infos",
    "load_infos",
    "check_info_metadata",
    "resolve_path",
    "create_infos",
    "merge_infos",
]

INFO_FORMAT = "bevformer-nuscenes-infos"
INFO_VERSION = 1

# mmdetection3d / BEVFormer camera order.
CAMERA_NAMES = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)

# The tables ``nuscenes.NuScenes`` loads.
NUSCENES_TABLES = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)

# info split -> devkit split (``nuscenes.utils.splits.create_splits_scenes``) per version.
SPLITS = {
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-test": {"test": "test"},
}

# DD3D keeps a projected box when IoU(clipped, unclipped) >= this.
MIN_BOX2D_IOU = 0.2


# ----------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------


def check_tables(dataroot: str, version: str) -> None:
    """Raise ``FileNotFoundError`` naming the first missing table (or map file) of
    ``dataroot/version``, which ``nuscenes.NuScenes`` would report obscurely."""
    table_dir = osp.join(dataroot, version)
    if not osp.isdir(table_dir):
        found = (
            sorted(d for d in os.listdir(dataroot) if d.startswith("v1.0"))
            if osp.isdir(dataroot)
            else []
        )
        raise FileNotFoundError(
            f"nuScenes table folder {table_dir} does not exist (versions found in {dataroot}: "
            f"{found or 'none'}); pass the dataroot that contains {version}/ and the right "
            "--version"
        )
    for table in NUSCENES_TABLES:
        path = osp.join(table_dir, f"{table}.json")
        if not osp.isfile(path):
            raise FileNotFoundError(
                f"nuScenes table {path} is missing; a {version} dataroot needs all of "
                f"{', '.join(t + '.json' for t in NUSCENES_TABLES)} (re-extract or regenerate it)"
            )
    # NuScenes() also opens every map mask listed in map.json.
    with open(osp.join(table_dir, "map.json")) as f:
        maps = json.load(f)
    for record in maps:
        path = osp.join(dataroot, record.get("filename", ""))
        if not osp.isfile(path):
            raise FileNotFoundError(
                f"map file {path} listed in {version}/map.json does not exist; copy the maps/ "
                "folder into the dataroot"
            )


def load_nuscenes(dataroot: str, version: str, verbose: bool = False):
    """``nuscenes.NuScenes`` after checking that every table file exists."""
    from nuscenes import NuScenes

    check_tables(dataroot, version)
    return NuScenes(version=version, dataroot=dataroot, verbose=verbose)


def check_cameras(nusc, cameras: Sequence[str]) -> tuple[str, ...]:
    """Validate camera names against the dataroot's camera sensors; returns them as a tuple."""
    valid = sorted(s["channel"] for s in nusc.sensor if s["modality"] == "camera")
    unknown = [c for c in cameras if c not in valid]
    if unknown:
        raise ValueError(
            f"unknown camera name(s) {unknown}; the cameras of this dataroot are {valid}"
        )
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"camera names must be unique, got {list(cameras)}")
    return tuple(cameras)


# ----------------------------------------------------------------------------------------
# Per-sample info
# ----------------------------------------------------------------------------------------


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes (DD3D ``_compute_iou``)."""
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    if ix1 >= ix2 or iy1 >= iy2:
        return 0.0
    inter = (ix2 - ix1) * (iy2 - iy1)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


def _detection_name(category: str) -> str:
    from nuscenes.eval.detection.utils import category_to_detection_name

    return category_to_detection_name(category) or "ignore"


def _attribute_name(nusc, ann: dict) -> str:
    tokens = ann["attribute_tokens"]
    return nusc.get("attribute", tokens[0])["name"] if tokens else ""


def _mono_annotations(
    nusc,
    anns: list[dict],
    ann_rotations: np.ndarray,
    velocities: dict[str, np.ndarray],
    cam_sd: dict,
    global2cam: np.ndarray,
    global2cam_quat: Quaternion,
    intrinsics: np.ndarray,
) -> list[dict]:
    """Perspective annotations of one camera image (DD3D-style, see module docstring).

    The devkit's ``get_sample_data(cam_token)`` boxes (camera frame, ``BoxVisibility.ANY``:
    all corners >= 0.1 m in front, one corner inside the image and >= 1 m away), computed
    for all annotations at once. Shapes: M annotations, ``ann_rotations [M, 3, 3]`` (global).
    """
    if not anns:
        return []
    width, height = cam_sd["width"], cam_sd["height"]
    centres = apply(global2cam, np.array([a["translation"] for a in anns]))  # [M, 3]
    wlh = np.array([a["size"] for a in anns])  # [M, 3]
    rot = global2cam[:3, :3] @ ann_rotations  # [M, 3, 3]
    half = wlh[:, [1, 0, 2]] / 2  # (l, w, h) / 2
    local = CORNER_SIGNS[None] * half[:, None, :]  # [M, 8, 3]
    corners = np.einsum("mij,mkj->mki", rot, local) + centres[:, None, :]  # [M, 8, 3]
    depth = corners[..., 2]  # [M, 8]
    uv = corners @ intrinsics.T
    uv = uv[..., :2] / uv[..., 2:3]  # [M, 8, 2]
    visible = (uv[..., 0] > 0) & (uv[..., 0] < width) & (uv[..., 1] > 0) & (uv[..., 1] < height)
    keep = (visible & (depth > 1)).any(1) & (depth > 0.1).all(1)

    out = []
    for i in np.flatnonzero(keep):
        full = [uv[i, :, 0].min(), uv[i, :, 1].min(), uv[i, :, 0].max(), uv[i, :, 1].max()]
        clipped = [max(0.0, full[0]), max(0.0, full[1]), min(width, full[2]), min(height, full[3])]
        if _iou(full, clipped) < MIN_BOX2D_IOU:
            continue
        ann = anns[i]
        name = _detection_name(ann["category_name"])
        velo_global = velocities[ann["token"]]
        center2d = intrinsics @ centres[i]
        out.append(
            {
                "instance_token": ann["instance_token"],
                "name": name,
                "label": CLASSES.index(name) if name in CLASSES else -1,
                "box2d": [float(v) for v in clipped],
                "center2d": (center2d[:2] / center2d[2]).tolist(),
                "depth": float(centres[i, 2]),
                "center_cam": centres[i].tolist(),
                "size_wlh": wlh[i].tolist(),
                "rotation_cam": (global2cam_quat * Quaternion(ann["rotation"])).elements.tolist(),
                "velocity_cam": (global2cam[:3, :3] @ np.nan_to_num(velo_global)).tolist(),
                "attribute": _attribute_name(nusc, ann),
                "speed": float(np.linalg.norm(velo_global)),
                "num_pts": int(ann["num_lidar_pts"] + ann["num_radar_pts"]),
            }
        )
    return out


def build_sample_info(
    nusc, sample: dict, cameras: Sequence[str], scene_name: str, frame_idx: int
) -> dict[str, Any]:
    """The info dict of one keyframe (``docs/CONVENTIONS.md`` "Info files")."""
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    lidar2ego = pose_matrix(nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"]))
    ego2global = pose_matrix(nusc.get("ego_pose", lidar_sd["ego_pose_token"]))

    # GT in the lidar frame at the lidar timestamp; sample["anns"] order.
    _, lidar_boxes, _ = nusc.get_sample_data(lidar_sd["token"])
    anns = [nusc.get("sample_annotation", box.token) for box in lidar_boxes]
    velocities = {ann["token"]: nusc.box_velocity(ann["token"]) for ann in anns}
    global2lidar_rot = invert(ego2global @ lidar2ego)[:3, :3]
    velo_lidar = np.array(
        [(global2lidar_rot @ np.nan_to_num(velocities[a["token"]]))[:2] for a in anns]
    ).reshape(-1, 2)
    velo_valid = [bool(np.isfinite(velocities[a["token"]][:2]).all()) for a in anns]
    gt_boxes = boxes_from_nusc(lidar_boxes, velocities=velo_lidar)
    num_lidar = [int(a["num_lidar_pts"]) for a in anns]
    num_radar = [int(a["num_radar_pts"]) for a in anns]
    ann_rotations = np.array([Quaternion(a["rotation"]).rotation_matrix for a in anns])

    cams, mono = {}, {}
    for cam in cameras:
        if cam not in sample["data"]:
            raise KeyError(
                f"sample {sample['token']} of scene {scene_name} has no {cam} image "
                f"(it has {sorted(sample['data'])}); choose cameras every sample has"
            )
        sd = nusc.get("sample_data", sample["data"][cam])
        path = osp.join(nusc.dataroot, sd["filename"])
        if not osp.isfile(path):
            raise FileNotFoundError(
                f"camera image {path} ({cam} of sample {sample['token']}, listed in "
                f"{nusc.version}/sample_data.json) does not exist; the dataroot is incomplete"
            )
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        cam2ego = pose_matrix(calib)
        cam_ego2global = pose_matrix(pose)
        intrinsics = np.asarray(calib["camera_intrinsic"], dtype=np.float64)
        cams[cam] = {
            "data_path": sd["filename"],
            "sample_data_token": sd["token"],
            "timestamp": sd["timestamp"],
            "intrinsics": intrinsics.tolist(),
            "cam2ego": cam2ego.tolist(),
            "ego2global": cam_ego2global.tolist(),
            "cam2lidar": cam2lidar(cam2ego, cam_ego2global, ego2global, lidar2ego).tolist(),
            "width": sd["width"],
            "height": sd["height"],
        }
        mono[cam] = _mono_annotations(
            nusc,
            anns,
            ann_rotations.reshape(-1, 3, 3),
            velocities,
            sd,
            global2cam=invert(cam_ego2global @ cam2ego),
            # composed as the devkit moves boxes: inv(cs) * inv(pose) * q
            global2cam_quat=(Quaternion(pose["rotation"]) * Quaternion(calib["rotation"])).inverse,
            intrinsics=intrinsics,
        )

    return {
        "token": sample["token"],
        "scene_token": sample["scene_token"],
        "scene_name": scene_name,
        "frame_idx": frame_idx,
        "timestamp": sample["timestamp"],
        "prev": sample["prev"],
        "next": sample["next"],
        "lidar_path": lidar_sd["filename"],
        "lidar2ego": lidar2ego.tolist(),
        "ego2global": ego2global.tolist(),
        "cams": cams,
        "gt_boxes": gt_boxes.tolist(),
        "gt_names": [_detection_name(a["category_name"]) for a in anns],
        "gt_attributes": [_attribute_name(nusc, a) for a in anns],
        "gt_velocity_valid": velo_valid,
        "num_lidar_pts": num_lidar,
        "num_radar_pts": num_radar,
        "valid_flag": [lid + rad > 0 for lid, rad in zip(num_lidar, num_radar)],
        "instance_tokens": [a["instance_token"] for a in anns],
        "mono": mono,
    }


def build_infos(
    nusc, scene_names: Sequence[str], cameras: Sequence[str] = CAMERA_NAMES, progress: bool = True
) -> list[dict[str, Any]]:
    """Infos of every keyframe of the given scenes present in ``nusc``, sorted by scene name
    then timestamp (scenes of the list that the dataroot lacks are skipped)."""
    from tqdm import tqdm

    wanted = set(scene_names)
    scenes = sorted((s for s in nusc.scene if s["name"] in wanted), key=lambda s: s["name"])
    samples = []
    for scene in scenes:
        scene_samples = sorted(_scene_samples(nusc, scene), key=lambda s: s["timestamp"])
        samples.extend((scene["name"], idx, s) for idx, s in enumerate(scene_samples))
    return [
        build_sample_info(nusc, sample, cameras, scene_name, idx)
        for scene_name, idx, sample in tqdm(samples, desc="infos", disable=not progress)
    ]


def _scene_samples(nusc, scene: dict) -> list[dict]:
    out, token = [], scene["first_sample_token"]
    while token:
        sample = nusc.get("sample", token)
        out.append(sample)
        token = sample["next"]
    return out


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------


def save_infos(path: str, metadata: dict[str, Any], infos: list[dict[str, Any]]) -> None:
    """Write an info file (JSON; unknown speeds are written as ``NaN``)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    payload = {
        "format": INFO_FORMAT,
        "version": INFO_VERSION,
        "metadata": metadata,
        "infos": infos,
    }
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def load_infos(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read an info file -> ``(metadata, infos)`` after checking its format and version.

    Matrices stay nested lists (``np.asarray`` them where needed).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f"info file {path} does not exist; create it with tools/create_data.py"
        )
    try:
        with open(path) as f:
            payload = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is not a JSON info file ({err}); pickled BEVFormer / mmdetection3d infos "
            "are not read directly: convert one with tools/create_data.py --dataroot DIR "
            "--from-pkl FILE, or create the infos with tools/create_data.py"
        ) from err
    found_format = payload.get("format") if isinstance(payload, dict) else None
    found_version = payload.get("version") if isinstance(payload, dict) else None
    if found_format != INFO_FORMAT or found_version != INFO_VERSION:
        raise ValueError(
            f"{path}: expected info format {INFO_FORMAT!r} version {INFO_VERSION}, found format "
            f"{found_format!r} version {found_version!r}; regenerate it with "
            "tools/create_data.py"
        )
    return payload["metadata"], payload["infos"]


def resolve_path(data_root: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` joined to ``data_root`` at run time (mmengine's ``data_root`` convention); an
    absolute ``path`` stays as it is."""
    path = os.fspath(path)
    return path if osp.isabs(path) else osp.join(os.fspath(data_root), path)


# metadata key -> what the key holds, for the messages of ``check_info_metadata``
_CHECKED_METADATA = {
    "dataset_version": "nuScenes version",
    "split": "split",
    "devkit_split": "devkit split",
}


def check_info_metadata(
    path: str,
    metadata: dict[str, Any],
    *,
    version: str | None = None,
    split: str | None = None,
    devkit_split: str | None = None,
) -> None:
    """Refuse an info file made from another nuScenes version or split than expected.

    ``version`` is compared with ``metadata["dataset_version"]`` (``v1.0-trainval``), ``split``
    with ``metadata["split"]`` (``train`` / ``val`` / ``test``, the same for every version) and
    ``devkit_split`` with ``metadata["devkit_split"]`` (the devkit's name of the split,
    ``mini_val`` / ``val``: what ``DetectionEval``'s ``eval_set`` must be). ``None`` skips a
    check. Raises ``ValueError`` naming both values and what to change; an info file that
    lacks a checked field is refused with the advice to re-run ``tools/create_data.py``.
    """
    expected = {"dataset_version": version, "split": split, "devkit_split": devkit_split}
    for key, want in expected.items():
        if want is None:
            continue
        what = _CHECKED_METADATA[key]
        if key not in metadata:
            raise ValueError(
                f"{path} does not record its {what} (metadata key {key!r}); it was written by "
                "an older tools/create_data.py: re-run tools/create_data.py on its dataroot"
            )
        found = metadata[key]
        if found == want:
            continue
        if key == "dataset_version":
            mini = (
                " val_evaluator.eval_set=mini_val test_evaluator.eval_set=mini_val"
                if found == "v1.0-mini"
                else ""
            )
            todo = (
                f"set the config's top-level version = {found!r} (--cfg-options "
                f"version={found}{mini}) if that is the data you mean, or create the {want} "
                f"infos with: python tools/create_data.py --dataroot DATAROOT --version {want}"
            )
        elif key == "split":
            todo = (
                f"point info_file at the {want!r} info file "
                f"(..._infos_temporal_{want}.json), or change expected_split"
            )
        else:
            todo = (
                f"set the evaluators' eval_set = {found!r} (--cfg-options "
                f"val_evaluator.eval_set={found} test_evaluator.eval_set={found}) if that is "
                f"the split you mean, or point ann_file at the info file of {want!r}"
            )
        raise ValueError(f"{path} holds {what} {found!r} but the config expects {want!r}: {todo}")


def create_infos(
    dataroot: str,
    version: str,
    out_dir: str | None = None,
    prefix: str = "nuscenes",
    cameras: Sequence[str] = CAMERA_NAMES,
    progress: bool = True,
) -> dict[str, str]:
    """Write ``{prefix}_infos_temporal_{split}.json`` for each split of ``version``.

    Splits come from ``nuscenes.utils.splits.create_splits_scenes`` (``SPLITS``). The
    metadata records ``dataset_version`` (``version``), ``split`` (``train`` / ``val`` /
    ``test``) and ``devkit_split`` (``mini_train``, ``val``, ...), which datasets and the
    metric check (:func:`check_info_metadata`), and the ``dataroot`` it was made from (for
    information only: image paths are relative and readers join them to their own
    ``data_root``). Returns ``{split: path}``.
    """
    from nuscenes.utils.splits import create_splits_scenes

    if version not in SPLITS:
        raise ValueError(f"unknown nuScenes version {version!r}; expected one of {list(SPLITS)}")
    nusc = load_nuscenes(dataroot, version, verbose=False)
    cameras = check_cameras(nusc, cameras)
    scene_splits = create_splits_scenes()
    out_dir = dataroot if out_dir is None else out_dir
    written = {}
    for split, devkit_split in SPLITS[version].items():
        infos = build_infos(nusc, scene_splits[devkit_split], cameras, progress=progress)
        metadata = {
            "dataset_version": version,
            "split": split,
            "devkit_split": devkit_split,
            "dataroot": osp.normpath(dataroot),
            "classes": list(CLASSES),
            "camera_names": list(cameras),
        }
        path = osp.join(out_dir, f"{prefix}_infos_temporal_{split}.json")
        save_infos(path, metadata, infos)
        written[split] = path
    return written


# metadata keys that must agree between the info files ``merge_infos`` concatenates
_MERGE_AGREE = ("dataset_version", "split", "devkit_split", "classes", "camera_names")


def merge_infos(
    sources: Sequence[tuple[str, str]], data_root: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Concatenate the info files of several dataroots into one whose paths are relative to
    ``data_root``, to train on more scenes than one dataroot holds (for instance two
    synthetic datasets drawn with different seeds).

    ``sources`` are ``(info_file, its data_root)`` pairs. Every camera ``data_path`` and the
    ``lidar_path`` are rewritten relative to ``data_root`` (``..`` where needed), so a
    dataset given ``data_root`` reads each image from where its own dataroot holds it.
    Returns ``(metadata, infos)`` for :func:`save_infos`: the first file's metadata with
    ``dataroot`` set to ``data_root`` and ``merged_from`` listing each source (info file,
    dataroot, keyframe count); the infos in source order.

    Raises ``ValueError`` when fewer than two sources are given, when the files disagree on
    the nuScenes version, split, devkit split, classes or cameras (the infos of different
    splits must not be mixed), or when a sample or scene token occurs in two of them (the same
    dataset twice, or two synthetic datasets drawn with the same seed); ``FileNotFoundError``
    naming the first camera image that does not exist (point clouds are rebased unchecked:
    a camera-only model never reads them).
    """
    if len(sources) < 2:
        raise ValueError(f"merge_infos needs at least two info files, got {len(sources)}")
    merged_meta: dict[str, Any] | None = None
    merged: list[dict[str, Any]] = []
    owner: dict[str, str] = {}  # sample / scene token -> the info file that holds it
    merged_from = []
    for info_file, root in sources:
        meta, infos = load_infos(info_file)
        if merged_meta is None:
            merged_meta = dict(meta)
        for key in _MERGE_AGREE:
            if meta.get(key) != merged_meta.get(key):
                raise ValueError(
                    f"{info_file} holds {key} {meta.get(key)!r} but {sources[0][0]} holds "
                    f"{merged_meta.get(key)!r}: only info files of the same nuScenes version, "
                    "split, classes and cameras can be merged"
                )
        scenes = {info["scene_token"] for info in infos}
        for tok in [info["token"] for info in infos] + sorted(scenes):
            if tok in owner:
                raise ValueError(
                    f"token {tok} occurs in both {owner[tok]} and {info_file}: merge distinct "
                    "datasets (synthetic ones drawn with different --seed)"
                )
            owner[tok] = info_file
        for info in infos:
            merged.append(_rebased(info, root, data_root))
        merged_from.append(
            {
                "info_file": osp.normpath(info_file),
                "dataroot": osp.normpath(root),
                "samples": len(infos),
            }
        )
    merged_meta["dataroot"] = osp.normpath(data_root)
    merged_meta["merged_from"] = merged_from
    return merged_meta, merged


def _rebased(info: dict[str, Any], root: str, data_root: str) -> dict[str, Any]:
    """A copy of one keyframe's info with its file paths moved from ``root`` to ``data_root``
    (relative stays relative); each camera image must exist."""

    def move(path: str, check: bool = True) -> str:
        full = resolve_path(root, path)
        if check and not osp.isfile(full):
            raise FileNotFoundError(
                f"{full} (sample {info['token']}) does not exist: the info file does not match "
                f"its dataroot {root}"
            )
        return full if osp.isabs(path) else osp.relpath(full, data_root)

    out = dict(info)
    out["lidar_path"] = move(info["lidar_path"], check=False)
    out["cams"] = {
        cam: {**rec, "data_path": move(rec["data_path"])} for cam, rec in info["cams"].items()
    }
    return out
