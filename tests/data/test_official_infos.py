"""Importing the official BEVFormer ``.pkl`` info files (``bevformer/data/official_infos.py``).

The ``.pkl`` files are written here from the synthetic dataroot's tables with the formulas of
BEVFormer's ``tools/data_converter/nuscenes_converter.py`` (``_fill_trainval_infos``,
``obtain_sensor2top``), through the devkit only and independently of the project's infos code,
then imported and compared with what ``create_infos`` writes for the same dataroot. Also: a
pickle that would run code, a pickle of another dataset copy, a truncated pickle.
"""

import copy
import math
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from pyquaternion import Quaternion

from backbones.checkpoint import CheckpointReadError
from bevformer.data.infos import create_infos, load_infos, load_nuscenes
from bevformer.data.official_infos import (
    convert_official_file,
    convert_official_info,
    infos_from_official,
    split_from_filename,
)

VERSION = "v1.0-mini"
REPO = Path(__file__).resolve().parents[2]
OFFICIAL_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
# mmdetection3d 0.17 NuScenesDataset.NameMapping (category -> detection name)
NAME_MAPPING = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}


# ---- the official writer (test side) ----------------------------------------------------


def _rotation(quaternion) -> np.ndarray:
    return Quaternion(quaternion).rotation_matrix


def _sensor_to_top(nusc, sd_token, lidar_calib, lidar_pose, sensor_type, root):
    """One ``cams[CAM]`` / ``sweeps`` entry: sensor -> ego(t_s) -> global -> ego(t) -> lidar,
    written with row vectors as the official converter does (``points @ R.T + T``)."""
    sd = nusc.get("sample_data", sd_token)
    calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    s2e, e2g_s = _rotation(calib["rotation"]), _rotation(pose["rotation"])
    l2e, e2g = _rotation(lidar_calib["rotation"]), _rotation(lidar_pose["rotation"])
    to_lidar = np.linalg.inv(e2g).T @ np.linalg.inv(l2e).T  # global row vectors -> lidar
    rot = s2e.T @ e2g_s.T @ to_lidar
    trans = (np.array(calib["translation"]) @ e2g_s.T + np.array(pose["translation"])) @ to_lidar
    trans -= np.array(lidar_pose["translation"]) @ to_lidar
    trans -= np.array(lidar_calib["translation"]) @ np.linalg.inv(l2e).T
    return {
        "data_path": root + sd["filename"],
        "type": sensor_type,
        "sample_data_token": sd["token"],
        "sensor2ego_translation": calib["translation"],
        "sensor2ego_rotation": calib["rotation"],
        "ego2global_translation": pose["translation"],
        "ego2global_rotation": pose["rotation"],
        "timestamp": sd["timestamp"],
        "sensor2lidar_rotation": rot.T,
        "sensor2lidar_translation": trans,
    }


def _official_info(nusc, sample, frame_idx, root):
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    calib = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
    _, boxes, _ = nusc.get_sample_data(lidar_sd["token"])
    info = {
        "lidar_path": root + lidar_sd["filename"],
        "token": sample["token"],
        "prev": sample["prev"],
        "next": sample["next"],
        "can_bus": np.zeros(18),
        "frame_idx": frame_idx,
        "sweeps": [],
        "cams": {},
        "scene_token": sample["scene_token"],
        "lidar2ego_translation": calib["translation"],
        "lidar2ego_rotation": calib["rotation"],
        "ego2global_translation": pose["translation"],
        "ego2global_rotation": pose["rotation"],
        "timestamp": sample["timestamp"],
    }
    for cam in OFFICIAL_CAMERAS:
        entry = _sensor_to_top(nusc, sample["data"][cam], calib, pose, cam, root)
        cam_calib = nusc.get(
            "calibrated_sensor",
            nusc.get("sample_data", sample["data"][cam])["calibrated_sensor_token"],
        )
        entry["cam_intrinsic"] = np.array(cam_calib["camera_intrinsic"])
        info["cams"][cam] = entry
    sd = lidar_sd
    while len(info["sweeps"]) < 10 and sd["prev"]:
        info["sweeps"].append(_sensor_to_top(nusc, sd["prev"], calib, pose, "lidar", root))
        sd = nusc.get("sample_data", sd["prev"])

    anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
    locs = np.array([b.center for b in boxes]).reshape(-1, 3)
    dims = np.array([b.wlh for b in boxes]).reshape(-1, 3)
    rots = np.array([b.orientation.yaw_pitch_roll[0] for b in boxes]).reshape(-1, 1)
    global2lidar = np.linalg.inv(_rotation(calib["rotation"])) @ np.linalg.inv(
        _rotation(pose["rotation"])
    )
    velocity = np.array(
        [(global2lidar @ [*nusc.box_velocity(t)[:2], 0.0])[:2] for t in sample["anns"]]
    ).reshape(-1, 2)
    info["gt_boxes"] = np.concatenate([locs, dims, -rots - np.pi / 2], axis=1)
    info["gt_names"] = np.array([NAME_MAPPING.get(b.name, b.name) for b in boxes])
    info["gt_velocity"] = velocity
    info["num_lidar_pts"] = np.array([a["num_lidar_pts"] for a in anns])
    info["num_radar_pts"] = np.array([a["num_radar_pts"] for a in anns])
    info["valid_flag"] = np.array(
        [a["num_lidar_pts"] + a["num_radar_pts"] > 0 for a in anns], dtype=bool
    )
    return info


def _official_payloads(nusc, root):
    """``{split: payload}`` in ``nusc.sample`` order with the official frame counter."""
    from nuscenes.utils.splits import create_splits_scenes

    val_scenes = set(create_splits_scenes()["mini_val"])
    out = {"train": [], "val": []}
    frame_idx = 0
    for sample in nusc.sample:
        info = _official_info(nusc, sample, frame_idx, root)
        frame_idx = 0 if sample["next"] == "" else frame_idx + 1
        scene = nusc.get("scene", sample["scene_token"])["name"]
        out["val" if scene in val_scenes else "train"].append(info)
    return {
        split: {"infos": infos, "metadata": {"version": VERSION}} for split, infos in out.items()
    }


def _dump(payload, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(payload, f)
    return path


@pytest.fixture(scope="module")
def nusc(synthetic_dataroot):
    return load_nuscenes(str(synthetic_dataroot), VERSION)


@pytest.fixture(scope="module")
def payloads(nusc, tmp_path_factory):
    """Train written with ``./data/nuscenes/`` paths, val with absolute paths of another disk."""
    train = _official_payloads(nusc, "./data/nuscenes/")["train"]
    elsewhere = str(tmp_path_factory.mktemp("elsewhere") / "nuscenes") + "/"
    val = _official_payloads(nusc, elsewhere)["val"]
    return {"train": train, "val": val}


@pytest.fixture(scope="module")
def pkl_dir(payloads, tmp_path_factory):
    out = tmp_path_factory.mktemp("official")
    for split, payload in payloads.items():
        _dump(payload, out / f"nuscenes_infos_temporal_{split}.pkl")
    return out


@pytest.fixture(scope="module")
def table_infos(synthetic_dataroot, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    return create_infos(str(synthetic_dataroot), VERSION, out_dir=str(out), progress=False)


def _assert_same(found, expected, where="infos"):
    """Same structure; floats within 1e-6 (NaN equals NaN)."""
    if isinstance(expected, dict):
        assert isinstance(found, dict) and sorted(found) == sorted(expected), where
        for key in expected:
            _assert_same(found[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(found, list) and len(found) == len(expected), where
        for i, (a, b) in enumerate(zip(found, expected)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(found, bool):
        assert isinstance(found, (int, float)), where
        assert (math.isnan(found) and math.isnan(expected)) or abs(found - expected) <= 1e-6, (
            f"{where}: {found} vs {expected}"
        )
    else:
        assert type(found) is type(expected) and found == expected, (
            f"{where}: {found!r} vs {expected!r}"
        )


# ---- the import equals create_infos -------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_import_equals_create_infos(split, synthetic_dataroot, pkl_dir, table_infos, tmp_path):
    pkl = pkl_dir / f"nuscenes_infos_temporal_{split}.pkl"
    before = pkl.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped by the reader, no frame renumbering
        path, metadata, infos = convert_official_file(
            pkl, synthetic_dataroot, out_dir=tmp_path, progress=False
        )
    assert Path(path) == tmp_path / f"nuscenes_infos_temporal_{split}.json"
    assert pkl.read_bytes() == before
    found_meta, found = load_infos(path)
    expected_meta, expected = load_infos(table_infos[split])
    assert found_meta.pop("converted_from") == pkl.name
    assert found_meta == expected_meta
    assert found_meta["split"] == split and found_meta["devkit_split"] == f"mini_{split}"
    assert [i["token"] for i in found] == [i["token"] for i in expected]
    assert len(found) == 4 and sum(len(i["gt_boxes"]) for i in found) > 0
    # unknown velocities (NaN in the .pkl) are exercised in both splits
    assert not all(flag for info in found for flag in info["gt_velocity_valid"])
    _assert_same(found, expected)


def test_mmdet3d_layout_and_other_order(nusc, payloads, synthetic_dataroot, table_infos):
    """mmdetection3d 0.17 infos (no prev/next/scene_token/frame_idx/can_bus), shuffled."""
    payload = copy.deepcopy(payloads["val"])
    for info in payload["infos"]:
        for key in ("prev", "next", "scene_token", "frame_idx", "can_bus"):
            del info[key]
    payload["infos"].reverse()
    metadata, infos = infos_from_official(payload, synthetic_dataroot, VERSION)
    assert metadata["split"] == "val"
    _, expected = load_infos(table_infos["val"])
    _assert_same(infos, expected)


def test_official_fields_in_project_frames(payloads):
    official = payloads["val"]["infos"][1]
    conv = convert_official_info(official)
    cam = official["cams"]["CAM_FRONT"]
    points_cam = np.array([[1.0, -2.0, 10.0], [0.5, 0.2, 3.0]])
    points_lidar = points_cam @ cam["sensor2lidar_rotation"].T + cam["sensor2lidar_translation"]
    cam2lidar = conv["cams"]["CAM_FRONT"]["cam2lidar"]
    np.testing.assert_allclose(points_cam @ cam2lidar[:3, :3].T + cam2lidar[:3, 3], points_lidar)
    assert conv["lidar_path"].startswith("samples/LIDAR_TOP/")
    assert conv["cams"]["CAM_FRONT"]["data_path"].startswith("samples/CAM_FRONT/")
    np.testing.assert_array_equal(conv["gt"]["boxes"], official["gt_boxes"])
    assert set(conv["gt"]["names"]) <= {*NAME_MAPPING.values(), "ignore"}
    unmapped = dict(official, gt_names=np.array(["animal", *official["gt_names"][1:]]))
    names = convert_official_info(unmapped)["gt"]["names"]
    assert names[0] == "ignore" and names[1:] == conv["gt"]["names"][1:]
    assert split_from_filename("a/nuscenes_infos_temporal_val.pkl") == "val"
    assert split_from_filename("nuscenes_infos_train.pkl") == "train"
    assert split_from_filename("infos.pkl") is None


def test_cli_from_pkl(synthetic_dataroot, pkl_dir, tmp_path):
    cmd = [sys.executable, str(REPO / "tools" / "create_data.py"), "--dataroot"]
    cmd += [str(synthetic_dataroot), "--out-dir", str(tmp_path), "--prefix", "mini"]
    for split in ("train", "val"):
        cmd += ["--from-pkl", str(pkl_dir / f"nuscenes_infos_temporal_{split}.pkl")]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    for split in ("train", "val"):
        meta, infos = load_infos(str(tmp_path / f"mini_infos_temporal_{split}.json"))
        boxes = sum(len(i["gt_boxes"]) for i in infos)
        assert meta["split"] == split and len(infos) == 4
        assert re.search(rf"{split}: 4 samples, {boxes} boxes, 6 cameras", done.stdout)


# ---- bad input ----------------------------------------------------------------------------


class _RunsCode:
    """Pickles as a call of ``os.system`` (what a malicious info file would hold)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


SYSTEM_GLOBAL = re.escape(f"{os.system.__module__}.system")


def test_code_in_pickle_does_not_run(payloads, synthetic_dataroot, tmp_path):
    marker = tmp_path / "ran"
    evil = _dump(_RunsCode(marker), tmp_path / "nuscenes_infos_temporal_val.pkl")
    with pytest.warns(UserWarning, match=SYSTEM_GLOBAL):
        with pytest.raises(ValueError, match=rf"{SYSTEM_GLOBAL}.*not the .*official info file"):
            convert_official_file(evil, synthetic_dataroot, out_dir=tmp_path, progress=False)
    # inside a field the import reads: refused, naming the field
    payload = copy.deepcopy(payloads["val"])
    payload["infos"][0]["cams"]["CAM_BACK"]["cam_intrinsic"] = _RunsCode(marker)
    _dump(payload, evil)
    with pytest.warns(UserWarning, match=SYSTEM_GLOBAL):
        with pytest.raises(ValueError, match=r"CAM_BACK: field 'cam_intrinsic' holds"):
            convert_official_file(evil, synthetic_dataroot, out_dir=tmp_path, progress=False)
    # inside a field the import drops: imported, with the warning
    payload = copy.deepcopy(payloads["val"])
    payload["infos"][0]["can_bus"] = _RunsCode(marker)
    _dump(payload, evil)
    with pytest.warns(UserWarning, match=SYSTEM_GLOBAL):
        path, _, infos = convert_official_file(
            evil, synthetic_dataroot, out_dir=tmp_path, progress=False
        )
    assert len(infos) == 4 and Path(path).is_file()
    assert not marker.exists()


def test_pkl_of_another_dataroot_names_sample_and_field(payloads, synthetic_dataroot):
    payload = copy.deepcopy(payloads["val"])
    info = payload["infos"][2]
    info["ego2global_translation"] = [v + 0.01 for v in info["ego2global_translation"]]
    with pytest.raises(ValueError, match=rf"sample {info['token']}: ego2global differs"):
        infos_from_official(payload, synthetic_dataroot, VERSION)
    payload = copy.deepcopy(payloads["val"])
    info = payload["infos"][1]
    info["gt_boxes"][0, 3] += 1e-3
    with pytest.raises(ValueError, match=rf"sample {info['token']}: gt_boxes \(x, y, z, w"):
        infos_from_official(payload, synthetic_dataroot, VERSION)
    payload = copy.deepcopy(payloads["val"])
    payload["infos"][0]["token"] = "f" * 32
    with pytest.raises(ValueError, match=r"sample f{32} is not in .*sample\.json"):
        infos_from_official(payload, synthetic_dataroot, VERSION)


def test_official_frame_counter_is_replaced(payloads, synthetic_dataroot, table_infos):
    payload = copy.deepcopy(payloads["val"])
    payload["infos"][1]["frame_idx"] = 7
    with pytest.warns(UserWarning, match=r"frame_idx of 1 sample\(s\) differs"):
        _, infos = infos_from_official(payload, synthetic_dataroot, VERSION)
    _, expected = load_infos(table_infos["val"])
    assert [i["frame_idx"] for i in infos] == [i["frame_idx"] for i in expected] == [0, 1, 2, 3]


def test_truncated_pickle(pkl_dir, synthetic_dataroot, tmp_path):
    data = (pkl_dir / "nuscenes_infos_temporal_val.pkl").read_bytes()
    cut = tmp_path / "nuscenes_infos_temporal_val.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match=r"not a pickle file \(or truncated\)"):
        convert_official_file(cut, synthetic_dataroot, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "nuscenes_infos_temporal_val.json").exists()
    with pytest.raises(FileNotFoundError, match=r"official info file .*absent\.pkl does not"):
        convert_official_file(tmp_path / "absent.pkl", synthetic_dataroot, progress=False)


def test_version_split_and_layout_errors(payloads, synthetic_dataroot, tmp_path):
    other = copy.deepcopy(payloads["val"])
    other["metadata"]["version"] = "v1.0-trainval"
    with pytest.raises(ValueError, match=r"made from nuScenes 'v1\.0-trainval'.*--version"):
        infos_from_official(other, synthetic_dataroot, VERSION)
    misnamed = _dump(payloads["train"], tmp_path / "nuscenes_infos_temporal_val.pkl")
    with pytest.raises(ValueError, match=r"file name says split 'val' but .* 'train' scenes"):
        convert_official_file(misnamed, synthetic_dataroot, out_dir=tmp_path, progress=False)
    named_like_output = _dump(payloads["val"], tmp_path / "nuscenes_infos_temporal_val.json")
    before = named_like_output.read_bytes()
    with pytest.raises(ValueError, match=r"would overwrite their input"):
        convert_official_file(named_like_output, synthetic_dataroot, out_dir=tmp_path)
    assert named_like_output.read_bytes() == before
    mixed = {"infos": payloads["train"]["infos"] + payloads["val"]["infos"], "metadata": {}}
    mixed["metadata"]["version"] = VERSION
    with pytest.raises(ValueError, match=r"do not all belong to one split"):
        infos_from_official(mixed, synthetic_dataroot, VERSION)
    with pytest.raises(ValueError, match=r"expected an official info file"):
        infos_from_official({"state_dict": {}}, synthetic_dataroot, VERSION)
    with pytest.raises(ValueError, match=r"infos\[0\]: field 'cams' is missing"):
        infos_from_official(
            {
                "infos": [
                    {
                        "token": "t",
                        "timestamp": 0,
                        "lidar_path": "samples/L/x",
                        "lidar2ego_rotation": [1, 0, 0, 0],
                        "lidar2ego_translation": [0, 0, 0],
                        "ego2global_rotation": [1, 0, 0, 0],
                        "ego2global_translation": [0, 0, 0],
                    }
                ],
                "metadata": {"version": VERSION},
            },
            synthetic_dataroot,
            VERSION,
        )


def test_missing_tables_and_images(payloads, synthetic_dataroot, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"v1\.0-mini does not exist"):
        infos_from_official(payloads["val"], tmp_path, VERSION)
    root = tmp_path / "root"
    shutil.copytree(synthetic_dataroot, root, copy_function=os.symlink)
    victim = payloads["val"]["infos"][3]["cams"]["CAM_BACK_LEFT"]["data_path"]
    victim = "samples/CAM_BACK_LEFT/" + Path(victim).name
    os.remove(root / victim)
    with pytest.raises(FileNotFoundError, match=rf"camera image {re.escape(victim)} is not under"):
        infos_from_official(payloads["val"], root, VERSION)
