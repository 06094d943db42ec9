"""Info files from a nuScenes-format dataroot: content checked against the devkit, and the
clear errors for bad input (missing table / image, unknown camera, wrong info version)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pyquaternion import Quaternion

from bevformer.data.infos import (
    CAMERA_NAMES,
    INFO_FORMAT,
    INFO_VERSION,
    NUSCENES_TABLES,
    check_tables,
    create_infos,
    load_infos,
    load_nuscenes,
)
from bevformer.structures.boxes import BOX_DIM, CLASSES, boxes_to_global
from bevformer.structures.frames import cam2lidar, lidar2img, project_points

VERSION = "v1.0-mini"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def infos_dir(synthetic_dataroot, tmp_path_factory):
    out = tmp_path_factory.mktemp("infos")
    written = create_infos(str(synthetic_dataroot), VERSION, out_dir=str(out), progress=False)
    assert set(written) == {"train", "val"}
    return out


@pytest.fixture(scope="module")
def nusc(synthetic_dataroot):
    return load_nuscenes(str(synthetic_dataroot), VERSION)


def _load(infos_dir, split):
    return load_infos(str(infos_dir / f"nuscenes_infos_temporal_{split}.json"))


def test_metadata_splits_and_order(infos_dir):
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    for split, devkit_split in (("train", "mini_train"), ("val", "mini_val")):
        meta, infos = _load(infos_dir, split)
        assert meta["dataset_version"] == VERSION and meta["split"] == split
        assert meta["classes"] == list(CLASSES) and meta["camera_names"] == list(CAMERA_NAMES)
        assert len(infos) > 0
        assert {i["scene_name"] for i in infos} <= set(splits[devkit_split])
        keys = [(i["scene_name"], i["timestamp"]) for i in infos]
        assert keys == sorted(keys)
        for prev, cur in zip(infos, infos[1:]):
            if prev["scene_token"] == cur["scene_token"]:
                assert cur["frame_idx"] == prev["frame_idx"] + 1
                assert cur["prev"] == prev["token"] and prev["next"] == cur["token"]
            else:
                assert cur["frame_idx"] == 0 and cur["prev"] == ""


def test_cameras_match_devkit(infos_dir, nusc, synthetic_dataroot):
    _, infos = _load(infos_dir, "val")
    info = infos[len(infos) // 2]
    lidar2ego, ego2global = np.asarray(info["lidar2ego"]), np.asarray(info["ego2global"])
    assert set(info["cams"]) == set(CAMERA_NAMES)
    for name, cam in info["cams"].items():
        sd = nusc.get("sample_data", cam["sample_data_token"])
        assert sd["channel"] == name and cam["data_path"] == sd["filename"]
        assert os.path.isfile(os.path.join(str(synthetic_dataroot), cam["data_path"]))
        expected = cam2lidar(
            np.asarray(cam["cam2ego"]), np.asarray(cam["ego2global"]), ego2global, lidar2ego
        )
        np.testing.assert_allclose(cam["cam2lidar"], expected, atol=1e-9)
        # the camera sits a few metres from the lidar, looking horizontally
        c2l = np.asarray(cam["cam2lidar"])
        assert np.linalg.norm(c2l[:3, 3]) < 5.0 and abs(c2l[2, 2]) < 0.2


def test_gt_boxes_match_annotations(infos_dir, nusc):
    _, infos = _load(infos_dir, "val")
    checked = 0
    for info in infos[:4]:
        boxes = np.asarray(info["gt_boxes"]).reshape(-1, BOX_DIM)
        n = len(boxes)
        assert n == len(info["gt_names"]) == len(info["instance_tokens"]) == len(info["valid_flag"])
        assert set(info["gt_names"]) <= set(CLASSES) | {"ignore"}
        sample = nusc.get("sample", info["token"])
        anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
        assert [a["instance_token"] for a in anns] == info["instance_tokens"]
        globals_ = boxes_to_global(boxes, info["lidar2ego"], info["ego2global"])
        for box, ann, vel_ok in zip(globals_, anns, info["gt_velocity_valid"]):
            np.testing.assert_allclose(box.center, ann["translation"], atol=1e-6)
            np.testing.assert_allclose(box.wlh, ann["size"], atol=1e-9)
            dyaw = box.orientation.yaw_pitch_roll[0] - Quaternion(ann["rotation"]).yaw_pitch_roll[0]
            assert abs((dyaw + np.pi) % (2 * np.pi) - np.pi) < 1e-3
            velo = nusc.box_velocity(ann["token"])[:2]
            assert vel_ok == bool(np.isfinite(velo).all())
            if vel_ok:
                np.testing.assert_allclose(
                    box.velocity[:2], velo, atol=0.02 * (1 + abs(velo).max())
                )
            checked += 1
    assert checked > 0


def test_mono_annotations_project_the_gt(infos_dir):
    _, infos = _load(infos_dir, "val")
    n_anns = 0
    for info in infos[:4]:
        boxes = np.asarray(info["gt_boxes"]).reshape(-1, BOX_DIM)
        index = {tok: i for i, tok in enumerate(info["instance_tokens"])}
        for name, anns in info["mono"].items():
            cam = info["cams"][name]
            l2i = lidar2img(np.asarray(cam["intrinsics"]), np.asarray(cam["cam2lidar"]))
            for ann in anns:
                x1, y1, x2, y2 = ann["box2d"]
                assert 0 <= x1 < x2 <= cam["width"] and 0 <= y1 < y2 <= cam["height"]
                assert ann["depth"] > 0 and ann["depth"] == ann["center_cam"][2]
                assert ann["label"] == (
                    CLASSES.index(ann["name"]) if ann["name"] in CLASSES else -1
                )
                assert abs(np.linalg.norm(ann["rotation_cam"]) - 1) < 1e-6
                speed = ann["speed"]
                assert np.isnan(speed) or speed >= 0
                # the projected lidar-frame GT centre is the annotation's projected centre
                uv, depth = project_points(l2i, boxes[index[ann["instance_token"]], None, :3])
                np.testing.assert_allclose(uv[0], ann["center2d"], atol=1e-3)
                np.testing.assert_allclose(depth[0], ann["depth"], atol=1e-6)
                n_anns += 1
    assert n_anns > 0


def test_mono_matches_devkit_camera_boxes(infos_dir, nusc):
    """The vectorised camera-frame boxes equal the devkit's ``get_sample_data(cam)`` boxes."""
    _, infos = _load(infos_dir, "val")
    compared = 0
    for info in infos[:2]:
        for name, anns in info["mono"].items():
            cam = info["cams"][name]
            _, boxes, intr = nusc.get_sample_data(cam["sample_data_token"])
            expected = {}
            for box in boxes:  # DD3D's 2D-box filter on the devkit boxes
                uv = intr @ box.corners()
                uv = uv[:2] / uv[2:]
                full = [uv[0].min(), uv[1].min(), uv[0].max(), uv[1].max()]
                cl = [max(0, full[0]), max(0, full[1]), min(cam["width"], full[2])]
                cl.append(min(cam["height"], full[3]))
                inter = max(0, cl[2] - cl[0]) * max(0, cl[3] - cl[1])
                area = (full[2] - full[0]) * (full[3] - full[1])
                if inter / area >= 0.2:  # IoU(clipped, full) = clipped area / full area
                    expected[nusc.get("sample_annotation", box.token)["instance_token"]] = box
            assert {a["instance_token"] for a in anns} == set(expected)
            for ann in anns:
                box = expected[ann["instance_token"]]
                np.testing.assert_allclose(ann["center_cam"], box.center, atol=1e-9)
                q = Quaternion(ann["rotation_cam"])
                assert abs(abs(np.dot(q.elements, box.orientation.elements)) - 1) < 1e-6
                compared += 1
    assert compared > 0


def test_cli_writes_prefixed_files(synthetic_dataroot, tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "tools" / "create_data.py"),
        "--dataroot",
        str(synthetic_dataroot),
        "--version",
        VERSION,
        "--out-dir",
        str(tmp_path),
        "--prefix",
        "mini",
        "--cameras",
        "CAM_FRONT",
        "CAM_BACK",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    meta, infos = load_infos(str(tmp_path / "mini_infos_temporal_val.json"))
    assert meta["camera_names"] == ["CAM_FRONT", "CAM_BACK"]
    assert set(infos[0]["cams"]) == {"CAM_FRONT", "CAM_BACK"} == set(infos[0]["mono"])
    assert (tmp_path / "mini_infos_temporal_train.json").is_file()


# ---- bad input --------------------------------------------------------------------------


def _linked_copy(src: Path, dst: Path) -> Path:
    """A copy of a dataroot whose files are symlinks (cheap to damage)."""
    shutil.copytree(src, dst, copy_function=os.symlink)
    return dst


def test_missing_table_is_named(synthetic_dataroot, tmp_path):
    root = _linked_copy(Path(synthetic_dataroot), tmp_path / "root")
    os.remove(root / VERSION / "sample_annotation.json")
    with pytest.raises(FileNotFoundError, match=r"sample_annotation\.json"):
        create_infos(str(root), VERSION, out_dir=str(tmp_path), progress=False)
    with pytest.raises(FileNotFoundError, match=r"v1\.0-trainval.*v1\.0-mini"):
        check_tables(str(root), "v1.0-trainval")
    assert len(NUSCENES_TABLES) == 13


def test_missing_image_is_named(synthetic_dataroot, tmp_path):
    root = _linked_copy(Path(synthetic_dataroot), tmp_path / "root")
    victim = sorted((root / "samples" / "CAM_BACK_LEFT").iterdir())[0]
    os.remove(victim)
    with pytest.raises(FileNotFoundError, match=victim.name):
        create_infos(str(root), VERSION, out_dir=str(tmp_path), progress=False)


def test_unknown_camera_is_named(synthetic_dataroot, tmp_path):
    with pytest.raises(ValueError, match=r"CAM_TOP.*CAM_BACK"):
        create_infos(
            str(synthetic_dataroot),
            VERSION,
            out_dir=str(tmp_path),
            cameras=["CAM_FRONT", "CAM_TOP"],
            progress=False,
        )


def test_wrong_info_version_is_an_error(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": INFO_FORMAT, "version": 0, "metadata": {}, "infos": []}))
    with pytest.raises(ValueError, match=rf"old\.json.*version {INFO_VERSION}.*version 0"):
        load_infos(str(path))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"infos": []}))
    with pytest.raises(ValueError, match=r"other\.json.*found format None"):
        load_infos(str(other))
    pickled = tmp_path / "infos.pkl"
    pickled.write_bytes(b"\x80\x04\x95\x00")
    with pytest.raises(ValueError, match=r"infos\.pkl is not a JSON info file"):
        load_infos(str(pickled))
    with pytest.raises(FileNotFoundError, match="create_data"):
        load_infos(str(tmp_path / "absent.json"))


# ---- merged info files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_dataroot(synthetic_kwargs, tmp_path_factory):
    """A second synthetic dataroot drawn with another seed (other worlds, other tokens), with
    its info files beside its tables."""
    from bevformer.data.synthetic import generate

    root = tmp_path_factory.mktemp("second") / "nuscenes"
    generate(root, progress=False, **{**synthetic_kwargs, "seed": 1, "samples_per_scene": 3})
    create_infos(str(root), VERSION, progress=False)
    return root


def test_merged_infos_read_each_image_from_its_own_dataroot(
    synthetic_dataroot, infos_dir, second_dataroot, tmp_path
):
    from bevformer.data.dataset import NuScenesTemporalDataset

    first = infos_dir / "nuscenes_infos_temporal_train.json"
    second = second_dataroot / "nuscenes_infos_temporal_train.json"
    out = tmp_path / "merged" / "train_merged.json"
    cmd = [sys.executable, str(REPO / "tools" / "merge_infos.py"), str(first), str(second)]
    cmd += ["--roots", str(synthetic_dataroot), str(second_dataroot), "--out", str(out)]
    run = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "7 keyframes (4 from" in run.stdout

    meta, merged = load_infos(str(out))
    assert (meta["dataset_version"], meta["split"]) == (VERSION, "train")
    assert [m["samples"] for m in meta["merged_from"]] == [4, 3]
    lidar = [os.path.join(out.parent, info["lidar_path"]) for info in merged]
    assert all(path.startswith(str(out.parent / "..")) and os.path.isfile(path) for path in lidar)
    merged_ds = NuScenesTemporalDataset(str(out), str(out.parent), frames=(-1, 0))
    parts = [
        NuScenesTemporalDataset(str(first), str(synthetic_dataroot), frames=(-1, 0)),
        NuScenesTemporalDataset(str(second), str(second_dataroot), frames=(-1, 0)),
    ]
    token = lambda ds, i: ds.infos[ds.indices[i]]["token"]  # noqa: E731
    own = {token(part, i): (part, i) for part in parts for i in range(len(part))}
    assert len(merged_ds) == len(own) == sum(len(part) for part in parts) > len(parts[0])
    scene_starts = 0
    for k in range(len(merged_ds)):
        part, i = own[token(merged_ds, k)]
        got, want = merged_ds.image_paths(k), part.image_paths(i)
        assert os.path.relpath(got[1][0], out.parent).startswith("..")
        for got_row, want_row in zip(got, want):
            assert all(os.path.samefile(g, w) for g, w in zip(got_row, want_row))
        # the past slot stays within the keyframe's own scene: a scene start has no past
        valid = merged_ds.frame_sources(merged_ds.indices[k])[1]
        assert valid == part.frame_sources(part.indices[i])[1]
        scene_starts += valid == [False, True]
    assert scene_starts == 2


def test_merging_what_cannot_be_merged_is_refused(
    synthetic_dataroot, infos_dir, second_dataroot, tmp_path
):
    from bevformer.data.infos import merge_infos

    train = (str(infos_dir / "nuscenes_infos_temporal_train.json"), str(synthetic_dataroot))
    val = (str(second_dataroot / "nuscenes_infos_temporal_val.json"), str(second_dataroot))
    with pytest.raises(ValueError, match=r"holds split 'val' but .* holds 'train'"):
        merge_infos([train, val], str(tmp_path))
    with pytest.raises(ValueError, match=r"token \w+ occurs in both"):
        merge_infos([train, train], str(tmp_path))
    with pytest.raises(ValueError, match="at least two"):
        merge_infos([train], str(tmp_path))
    root = _linked_copy(Path(second_dataroot), tmp_path / "damaged")
    _, infos = load_infos(str(second_dataroot / "nuscenes_infos_temporal_train.json"))
    victim = root / infos[-1]["cams"]["CAM_FRONT"]["data_path"]
    os.remove(victim)
    damaged = (str(second_dataroot / "nuscenes_infos_temporal_train.json"), str(root))
    with pytest.raises(FileNotFoundError, match=re.escape(victim.name)):
        merge_infos([train, damaged], str(tmp_path))
