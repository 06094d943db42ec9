"""Import the official BEVFormer / mmdetection3d-0.17 ``.pkl`` info files as JSON infos.

BEVFormer's ``tools/create_data.py`` writes ``nuscenes_infos_temporal_{train,val,test}.pkl``
(``tools/data_converter/nuscenes_converter.py``: ``create_nuscenes_infos``,
``_fill_trainval_infos``, ``obtain_sensor2top``); mmdetection3d 0.17 writes the same layout
without ``prev``, ``next``, ``scene_token``, ``frame_idx`` and ``can_bus``. The file is read
with :func:`backbones.safe_pickle.read_pickle` (no code from the file runs) and converted to
the info format of ``docs/CONVENTIONS.md`` ("Info files"), field by field:

- ``lidar2ego_{rotation,translation}``, ``ego2global_{rotation,translation}`` (quaternion
  wxyz, metres) -> the 4x4 ``lidar2ego``, ``ego2global``.
- ``cams[CAM]``: ``sensor2ego_*`` -> ``cam2ego``; ``ego2global_*`` -> the camera's own
  ``ego2global``; ``sensor2lidar_rotation`` ``R`` and ``sensor2lidar_translation`` ``T``
  (``p_lidar = p_cam @ R.T + T``) -> ``cam2lidar = [R T; 0 1]``; ``cam_intrinsic`` ->
  ``intrinsics``; ``data_path`` (``./data/nuscenes/samples/CAM_FRONT/x.jpg`` or absolute) ->
  ``samples/CAM_FRONT/x.jpg``, relative to the dataroot; ``sample_data_token``, ``timestamp``.
- ``gt_boxes [N, 7]`` = (centre, ``wlh``, ``-yaw_nus - pi/2``) in the lidar frame: the
  SECOND convention, which is the project's box vector, so they are its first 7 numbers.
- ``gt_velocity [N, 2]`` (lidar frame, NaN where the devkit cannot estimate it): checked, then
  written as the project defines it (below); NaN -> 0 with ``gt_velocity_valid`` False.
- ``gt_names``: mmdetection3d's ``NameMapping`` is the devkit's
  ``category_to_detection_name``; a category it leaves unmapped becomes ``"ignore"``.
- ``num_lidar_pts``, ``num_radar_pts``, ``valid_flag``, ``token``, ``prev``, ``next``,
  ``scene_token``, ``timestamp``, ``lidar_path`` (made relative): copied.
- ``frame_idx``: recomputed from the tables (the official counter follows the row order of
  ``sample.json``); ``can_bus`` and ``sweeps`` are dropped (camera-only BEVFormer v2 reads
  neither).

What the ``.pkl`` does not carry (``scene_name``, image ``width``/``height``,
``gt_attributes``, ``instance_tokens``, the per-camera ``mono`` annotations) comes from the
dataroot's nuScenes tables through :func:`bevformer.data.infos.build_sample_info`, and every
pose, calibration, path, box, count and flag of the ``.pkl`` is compared with what the tables
give (floats within :data:`ATOL`): a difference means that the file was made from another copy
or version of the dataset, and is an error naming the sample and the field.

Velocity: the official converter drops the vertical component of the global velocity before
rotating it into the lidar frame; ``create_infos`` rotates all three components. The import
checks ``gt_velocity`` with the official formula and writes the project's (the two differ by
``v_z`` times the tilt of the lidar, millimetres per second on real data), so that an imported
file equals the one ``create_infos`` writes for the same dataroot.

Order and split: infos are sorted by scene name then timestamp (as ``create_infos``; the
official order is that of ``sample.json``). The split is the one of ``SPLITS[version]`` whose
devkit scene list (``nuscenes.utils.splits.create_splits_scenes``) holds every scene of the
file; a split named by the file name (``..._val.pkl``) must agree with it.
"""

from __future__ import annotations

import os
import os.path as osp
import re
import warnings
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

from backbones.checkpoint import SkippedGlobal, read_pickle
from bevformer.data.infos import (
    SPLITS,
    build_sample_info,
    check_cameras,
    load_nuscenes,
    save_infos,
)
from bevformer.structures.boxes import BOX_DIM, CLASSES, YAW
from bevformer.structures.frames import invert, transform_from

__all__ = [
    "ATOL",
    "split_from_filename",
    "official_payload",
    "convert_official_info",
    "infos_from_official",
    "convert_official_file",
]

# Largest difference (metres, radians, m/s, pixels) allowed between the .pkl and the tables.
ATOL = 1e-6

# The first 7 numbers of the box vector, as the official ``gt_boxes`` holds them.
_OFFICIAL_BOX_DIM = YAW + 1

# ``convert_official_info`` gt key -> info key
_GT_FIELDS = {
    "names": "gt_names",
    "num_lidar_pts": "num_lidar_pts",
    "num_radar_pts": "num_radar_pts",
    "valid_flag": "valid_flag",
}

_LAYOUT = "{'infos': [...], 'metadata': {'version': ...}}"


# ----------------------------------------------------------------------------------------
# Reading the official fields
# ----------------------------------------------------------------------------------------


def split_from_filename(path: str | os.PathLike) -> str | None:
    """``train`` / ``val`` / ``test`` from an official info file name
    (``nuscenes_infos_temporal_val.pkl``, ``nuscenes_infos_train.pkl``), else ``None``."""
    match = re.search(r"(?:^|_)(train|val|test)\.pkl$", PurePath(path).name)
    return match.group(1) if match else None


def _not_loaded(value: Any) -> bool:
    return isinstance(value, SkippedGlobal)


def official_payload(payload: Any, source: str = "official infos") -> tuple[list[dict], str]:
    """``(infos, version)`` of an official info payload after checking its layout.

    Raises ``ValueError`` when ``payload`` is not ``{'infos': [dict, ...], 'metadata':
    {'version': str}}``, naming what was found (an object the safe reader did not load is
    named by its global, e.g. ``posix.system``).
    """
    if _not_loaded(payload):
        raise ValueError(
            f"{source}: the file holds {payload!r}, a Python object the safe reader did not load "
            f"(see the warning), not the {_LAYOUT} dict of an official info file; convert the "
            ".pkl that BEVFormer's tools/create_data.py wrote"
        )
    if not isinstance(payload, Mapping) or "infos" not in payload or "metadata" not in payload:
        found = sorted(map(str, payload)) if isinstance(payload, Mapping) else type(payload)
        raise ValueError(
            f"{source}: expected an official info file {_LAYOUT}, found {found}; convert a "
            "nuscenes_infos_temporal_{train,val,test}.pkl of BEVFormer's tools/create_data.py"
        )
    infos, metadata = payload["infos"], payload["metadata"]
    if not isinstance(infos, (list, tuple)) or not all(isinstance(i, Mapping) for i in infos):
        bad = (
            infos
            if not isinstance(infos, (list, tuple))
            else next(i for i in infos if not isinstance(i, Mapping))
        )
        raise ValueError(
            f"{source}: 'infos' must be a list of per-sample dicts, found {bad!r}; the file is "
            "damaged or not an official info file"
        )
    version = metadata.get("version") if isinstance(metadata, Mapping) else None
    if not isinstance(version, str):
        raise ValueError(
            f"{source}: 'metadata' must record the nuScenes version ({{'version': "
            f"'v1.0-trainval'}}), found {metadata!r}; the file is damaged or not an official "
            "info file"
        )
    return list(infos), version


def _get(record: Mapping, key: str, where: str) -> Any:
    if key not in record:
        raise ValueError(
            f"{where}: field {key!r} is missing (found {sorted(map(str, record))}); an official "
            "info has it: convert a .pkl written by BEVFormer's or mmdetection3d's create_data"
        )
    value = record[key]
    if _not_loaded(value):
        raise ValueError(
            f"{where}: field {key!r} holds {value!r}, a Python object the safe reader did not "
            "load (see the warning); this is not an info file written by BEVFormer's "
            "tools/create_data.py"
        )
    return value


def _array(record: Mapping, key: str, where: str, shape: tuple[int, ...]) -> np.ndarray:
    """Field ``key`` as float64 of ``shape`` (``-1``: any length)."""
    value = _get(record, key, where)
    try:
        out = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: field {key!r} is not numeric ({value!r})") from err
    if out.size == 0 and len(shape) > 1 and -1 not in shape[1:]:
        out = out.reshape(0, *shape[1:])  # an empty list stands for N = 0
    if out.ndim != len(shape) or any(s not in (-1, n) for s, n in zip(shape, out.shape)):
        want = "x".join("N" if s == -1 else str(s) for s in shape)
        raise ValueError(f"{where}: field {key!r} should be {want}, found shape {out.shape}")
    return out


def _strings(record: Mapping, key: str, where: str) -> list[str]:
    return [str(v) for v in np.asarray(_get(record, key, where)).reshape(-1).tolist()]


def _pose(record: Mapping, prefix: str, where: str) -> np.ndarray:
    rotation = _array(record, f"{prefix}_rotation", where, (4,))
    translation = _array(record, f"{prefix}_translation", where, (3,))
    return transform_from(rotation, translation)


def _relative_path(path: Any, where: str, key: str) -> str:
    """``samples/CHANNEL/file`` (or ``sweeps/...``) out of an official data path."""
    parts = PurePath(str(path)).parts
    if len(parts) < 3 or parts[-3] not in ("samples", "sweeps"):
        raise ValueError(
            f"{where}: {key} {path!r} does not end in samples/<CHANNEL>/<file> or "
            "sweeps/<CHANNEL>/<file> as a nuScenes data path does"
        )
    return "/".join(parts[-3:])


def convert_official_info(official: Mapping[str, Any], where: str = "info") -> dict[str, Any]:
    """One official per-sample info in this project's frames and units (numpy arrays).

    Returns ``token``, ``timestamp``, ``lidar_path`` (relative), ``lidar2ego`` and
    ``ego2global`` (4x4), ``cams`` (``{CAM: {data_path, sample_data_token, timestamp,
    intrinsics (3x3), cam2ego, ego2global, cam2lidar (4x4)}}``), the optional ``prev``,
    ``next``, ``scene_token``, ``frame_idx`` when present, and, when the info has ground truth,
    ``gt``: ``{boxes [N, 7], velocity [N, 2] (NaN kept), names, num_lidar_pts, num_radar_pts,
    valid_flag}``. Raises ``ValueError`` naming ``where`` and the field that is missing,
    not loaded or of the wrong shape. Nothing is compared with a dataroot here.
    """
    out: dict[str, Any] = {
        "token": str(_get(official, "token", where)),
        "timestamp": int(_get(official, "timestamp", where)),
        "lidar_path": _relative_path(_get(official, "lidar_path", where), where, "lidar_path"),
        "lidar2ego": _pose(official, "lidar2ego", where),
        "ego2global": _pose(official, "ego2global", where),
    }
    for key in ("prev", "next", "scene_token"):
        if key in official:
            out[key] = str(_get(official, key, where))
    if "frame_idx" in official:
        out["frame_idx"] = int(_get(official, "frame_idx", where))

    cams = _get(official, "cams", where)
    if not isinstance(cams, Mapping) or not cams:
        raise ValueError(f"{where}: 'cams' should map camera names to dicts, found {cams!r}")
    out["cams"] = {}
    for name, cam in cams.items():
        at = f"{where} camera {name}"
        if not isinstance(cam, Mapping):
            raise ValueError(f"{at}: expected a dict of camera fields, found {cam!r}")
        cam2lidar = np.eye(4)
        cam2lidar[:3, :3] = _array(cam, "sensor2lidar_rotation", at, (3, 3))
        cam2lidar[:3, 3] = _array(cam, "sensor2lidar_translation", at, (3,))
        out["cams"][str(name)] = {
            "data_path": _relative_path(_get(cam, "data_path", at), at, "data_path"),
            "sample_data_token": str(_get(cam, "sample_data_token", at)),
            "timestamp": int(_get(cam, "timestamp", at)),
            "intrinsics": _array(cam, "cam_intrinsic", at, (3, 3)),
            "cam2ego": _pose(cam, "sensor2ego", at),
            "ego2global": _pose(cam, "ego2global", at),
            "cam2lidar": cam2lidar,
        }

    if "gt_boxes" in official:
        boxes = _array(official, "gt_boxes", where, (-1, _OFFICIAL_BOX_DIM))
        n = len(boxes)
        gt = {
            "boxes": boxes,
            "velocity": _array(official, "gt_velocity", where, (n, 2)),
            "names": [
                name if name in CLASSES else "ignore"
                for name in _strings(official, "gt_names", where)
            ],
            "num_lidar_pts": [int(v) for v in _array(official, "num_lidar_pts", where, (n,))],
            "num_radar_pts": [int(v) for v in _array(official, "num_radar_pts", where, (n,))],
            "valid_flag": [bool(v) for v in _array(official, "valid_flag", where, (n,))],
        }
        if len(gt["names"]) != n:
            raise ValueError(f"{where}: {len(gt['names'])} gt_names for {n} gt_boxes")
        out["gt"] = gt
    return out


# ----------------------------------------------------------------------------------------
# Checking against the tables
# ----------------------------------------------------------------------------------------


def _check_close(found, expected, where: str, field: str, hint: str, angle: bool = False):
    found = np.asarray(found, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if found.shape != expected.shape:
        raise ValueError(
            f"{where}: {field} has shape {found.shape} in the .pkl but {expected.shape} in the "
            f"tables; {hint}"
        )
    diff = found - expected
    if angle:
        diff = (diff + np.pi) % (2 * np.pi) - np.pi
    both_nan = np.isnan(found) & np.isnan(expected)
    bad = ~(np.abs(diff) <= ATOL) & ~both_nan
    if bad.any():
        worst = np.nanmax(np.where(bad, np.abs(diff), -np.inf))
        raise ValueError(
            f"{where}: {field} differs from the tables (largest difference {worst:.3g}, "
            f"tolerance {ATOL:g}; NaN where one side has none counts); {hint}"
        )


def _check_equal(found, expected, where: str, field: str, hint: str) -> None:
    if found != expected:
        raise ValueError(
            f"{where}: {field} is {found!r} in the .pkl but {expected!r} in the tables; {hint}"
        )


def _official_velocity(nusc, sample: dict, lidar2ego: np.ndarray, ego2global: np.ndarray):
    """``[N, 2]`` as ``_fill_trainval_infos`` computes it: the global ``(vx, vy, 0)`` rotated
    into the lidar frame (NaN kept), in ``sample["anns"]`` order."""
    global2lidar = invert(ego2global @ lidar2ego)[:3, :3]
    velo = [nusc.box_velocity(token)[:2] for token in sample["anns"]]
    velo = np.array([[vx, vy, 0.0] for vx, vy in velo]).reshape(-1, 3)
    return (velo @ global2lidar.T)[:, :2]


def _check_against_tables(nusc, sample, conv, info, where: str, hint: str) -> None:
    """Every field the .pkl carries against ``info`` (``build_sample_info``'s)."""
    for key in ("prev", "next", "scene_token", "timestamp", "lidar_path"):
        if key in conv:
            _check_equal(conv[key], info[key], where, key, hint)
    for key in ("lidar2ego", "ego2global"):
        _check_close(conv[key], info[key], where, key, hint)
    for name, cam in conv["cams"].items():
        table = info["cams"][name]
        for key in ("data_path", "sample_data_token", "timestamp"):
            _check_equal(cam[key], table[key], where, f"cams.{name}.{key}", hint)
        for key in ("intrinsics", "cam2ego", "ego2global", "cam2lidar"):
            _check_close(cam[key], table[key], where, f"cams.{name}.{key}", hint)

    boxes = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, BOX_DIM)
    gt = conv.get("gt")
    if gt is None:
        if len(boxes):
            raise ValueError(
                f"{where}: the .pkl has no gt_boxes but the tables annotate {len(boxes)} "
                "objects (a test-mode .pkl of an annotated version?); "
                f"{hint}"
            )
        return
    _check_close(gt["boxes"][:, :YAW], boxes[:, :YAW], where, "gt_boxes (x, y, z, w, l, h)", hint)
    _check_close(gt["boxes"][:, YAW], boxes[:, YAW], where, "gt_boxes (yaw)", hint, angle=True)
    velo = _official_velocity(
        nusc, sample, np.asarray(info["lidar2ego"]), np.asarray(info["ego2global"])
    )
    _check_close(gt["velocity"], velo, where, "gt_velocity", hint)
    valid = np.isfinite(gt["velocity"]).all(1).tolist()
    _check_equal(valid, info["gt_velocity_valid"], where, "gt_velocity (NaN where unknown)", hint)
    for key, table_key in _GT_FIELDS.items():
        _check_equal(gt[key], info[table_key], where, table_key, hint)


def _merge(conv: dict, info: dict) -> None:
    """Write the .pkl's floats over the checked table values (equal within ``ATOL``)."""
    info["lidar2ego"] = conv["lidar2ego"].tolist()
    info["ego2global"] = conv["ego2global"].tolist()
    for name, cam in conv["cams"].items():
        for key in ("intrinsics", "cam2ego", "ego2global", "cam2lidar"):
            info["cams"][name][key] = cam[key].tolist()
    if "gt" in conv and len(conv["gt"]["boxes"]):
        boxes = np.asarray(info["gt_boxes"], dtype=np.float64)
        boxes[:, :_OFFICIAL_BOX_DIM] = conv["gt"]["boxes"]  # VX, VY stay the tables'
        info["gt_boxes"] = boxes.tolist()


# ----------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------


def _scene_frame_indices(nusc, scene: dict) -> dict[str, int]:
    """sample token -> index in its scene's timestamp-sorted keyframes (as ``build_infos``)."""
    samples, token = [], scene["first_sample_token"]
    while token:
        sample = nusc.get("sample", token)
        samples.append(sample)
        token = sample["next"]
    ordered = sorted(samples, key=lambda s: s["timestamp"])
    return {s["token"]: idx for idx, s in enumerate(ordered)}


def _find_split(version: str, scene_names: set[str], named: str | None, source: str) -> str:
    from nuscenes.utils.splits import create_splits_scenes

    scene_splits = create_splits_scenes()
    matching = [
        split
        for split, devkit_split in SPLITS[version].items()
        if scene_names <= set(scene_splits[devkit_split])
    ]
    if not scene_names:
        if named is None:
            raise ValueError(
                f"{source} has no samples and its name does not say its split; name it "
                "..._infos_temporal_{train,val,test}.pkl or pass the split"
            )
        return named
    if not matching:
        per_split = {
            split: sorted(scene_names & set(scene_splits[devkit]))
            for split, devkit in SPLITS[version].items()
        }
        raise ValueError(
            f"{source}: its scenes do not all belong to one split of {version} "
            f"(scenes per split: {per_split}; not in any: "
            f"{sorted(scene_names - {s for v in per_split.values() for s in v})}); an official "
            "info file holds exactly one split"
        )
    found = matching[0]
    if named is not None and named != found:
        raise ValueError(
            f"{source}: the file name says split {named!r} but its scenes are {version} "
            f"{found!r} scenes (devkit split {SPLITS[version][found]!r}); rename the file or "
            "check that it is the file you mean"
        )
    return found


def infos_from_official(
    payload: Any,
    dataroot: str | os.PathLike,
    version: str,
    split: str | None = None,
    *,
    source: str = "official infos",
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Official info payload -> ``(metadata, infos)`` of this project's info format.

    ``payload`` is what :func:`backbones.safe_pickle.read_pickle` returns for an official
    ``.pkl``; ``dataroot`` must hold the nuScenes tables of ``version`` (``<dataroot>/<version>/``,
    the tables the file was made from) and the camera images. ``split`` (``train`` / ``val`` /
    ``test``), when given, must agree with the scenes of the file (module docstring); the
    metadata then carries ``dataset_version``, ``split``, ``devkit_split``, ``dataroot``,
    ``classes`` and ``camera_names`` as ``create_infos`` writes them. ``source`` names the file
    in messages.

    Raises ``ValueError`` for a payload of the wrong layout, a version or split other than
    expected, a sample token the tables lack, or a field that differs from the tables (naming
    the sample and the field); ``FileNotFoundError`` for missing tables or camera images.
    """
    official, found_version = official_payload(payload, source)
    if version not in SPLITS:
        raise ValueError(f"unknown nuScenes version {version!r}; expected one of {list(SPLITS)}")
    if found_version != version:
        raise ValueError(
            f"{source} was made from nuScenes {found_version!r} (metadata version) but "
            f"{version!r} was asked for; pass --version {found_version} with the dataroot that "
            f"holds {found_version}/"
        )
    if split is not None and split not in SPLITS[version]:
        raise ValueError(
            f"split {split!r} does not exist in {version}; expected one of {list(SPLITS[version])}"
        )
    dataroot = os.fspath(dataroot)
    hint = (
        f"{source} was written from another copy or version of the dataset than "
        f"{osp.join(dataroot, version)}: convert it with the dataroot it was made from, or "
        "create the infos from this dataroot with tools/create_data.py --dataroot DIR --version V"
    )
    converted = [convert_official_info(o, f"{source} infos[{i}]") for i, o in enumerate(official)]

    tokens = [c["token"] for c in converted]
    if len(set(tokens)) != len(tokens):
        dup = next(t for t in tokens if tokens.count(t) > 1)
        raise ValueError(f"{source}: sample {dup} is listed more than once; the file is damaged")
    cameras = tuple(converted[0]["cams"]) if converted else ()
    for i, conv in enumerate(converted):
        if tuple(conv["cams"]) != cameras:
            raise ValueError(
                f"{source} infos[{i}] (sample {conv['token']}) has cameras {list(conv['cams'])} "
                f"but infos[0] has {list(cameras)}; every sample must have the same cameras"
            )

    nusc = load_nuscenes(dataroot, version, verbose=False)
    if cameras:
        check_cameras(nusc, cameras)
    samples, scenes = [], {}
    for conv in converted:
        try:
            sample = nusc.get("sample", conv["token"])
        except KeyError:
            raise ValueError(
                f"{source}: sample {conv['token']} is not in {osp.join(dataroot, version)}/"
                f"sample.json; {hint}"
            ) from None
        samples.append(sample)
        if sample["scene_token"] not in scenes:
            scenes[sample["scene_token"]] = nusc.get("scene", sample["scene_token"])
    split = _find_split(version, {s["name"] for s in scenes.values()}, split, source)
    frame_idx: dict[str, int] = {}
    for scene in scenes.values():
        frame_idx.update(_scene_frame_indices(nusc, scene))

    from tqdm import tqdm

    infos, renumbered = [], 0
    for conv, sample in tqdm(
        list(zip(converted, samples)), desc="import infos", disable=not progress
    ):
        where = f"sample {conv['token']}"
        for cam in conv["cams"].values():
            path = osp.join(dataroot, cam["data_path"])
            if not osp.isfile(path):
                raise FileNotFoundError(
                    f"{where}: camera image {cam['data_path']} is not under the dataroot ({path} "
                    "does not exist); pass the dataroot that holds the samples/ of this .pkl"
                )
        scene = scenes[sample["scene_token"]]
        info = build_sample_info(nusc, sample, cameras, scene["name"], frame_idx[conv["token"]])
        _check_against_tables(nusc, sample, conv, info, where, hint)
        _merge(conv, info)
        renumbered += "frame_idx" in conv and conv["frame_idx"] != info["frame_idx"]
        infos.append(info)
    if renumbered:
        warnings.warn(
            f"{source}: frame_idx of {renumbered} sample(s) differs from their index in the "
            "scene; the scene index is used (the official counter follows sample.json's row "
            "order)",
            stacklevel=2,
        )
    infos.sort(key=lambda i: (i["scene_name"], i["timestamp"]))
    metadata = {
        "dataset_version": version,
        "split": split,
        "devkit_split": SPLITS[version][split],
        "dataroot": osp.normpath(dataroot),
        "classes": list(CLASSES),
        "camera_names": list(cameras),
    }
    return metadata, infos


def convert_official_file(
    pkl_path: str | os.PathLike,
    dataroot: str | os.PathLike,
    version: str | None = None,
    out_dir: str | os.PathLike | None = None,
    prefix: str = "nuscenes",
    progress: bool = True,
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """Convert one official ``.pkl`` and write ``{prefix}_infos_temporal_{split}.json``.

    ``version`` defaults to the file's own (``metadata["version"]``); the split comes from the
    file's scenes and, when it says one, its name (``nuscenes_infos_temporal_val.pkl``). The
    output goes into ``out_dir`` (default: ``dataroot``, where ``tools/create_data.py`` writes)
    and its metadata also records ``converted_from`` (the ``.pkl``'s file name). Returns
    ``(path, metadata, infos)``. Raises ``FileNotFoundError`` for a missing file,
    :class:`backbones.checkpoint.CheckpointReadError` for a file that is not a (complete)
    pickle, ``ValueError`` as :func:`infos_from_official` and when the output would replace
    the input.
    """
    pkl_path = os.fspath(pkl_path)
    if not osp.isfile(pkl_path):
        raise FileNotFoundError(
            f"official info file {pkl_path} does not exist; pass the "
            "nuscenes_infos_temporal_{train,val,test}.pkl that BEVFormer's tools/create_data.py "
            "wrote"
        )
    payload = read_pickle(pkl_path)
    source = osp.basename(pkl_path)
    if version is None:
        _, version = official_payload(payload, source)
    metadata, infos = infos_from_official(
        payload,
        dataroot,
        version,
        split_from_filename(pkl_path),
        source=source,
        progress=progress,
    )
    metadata["converted_from"] = source
    out_dir = os.fspath(dataroot if out_dir is None else out_dir)
    out = osp.join(out_dir, f"{prefix}_infos_temporal_{metadata['split']}.json")
    if osp.abspath(out) == osp.abspath(pkl_path) or (
        osp.exists(out) and osp.samefile(out, pkl_path)
    ):
        raise ValueError(
            f"the converted infos would overwrite their input {pkl_path}; choose another "
            "--out-dir or --prefix"
        )
    save_infos(out, metadata, infos)
    return out, metadata, infos
