"""The synthetic nuScenes-format dataset: the devkit loads and scores it, the tables are
consistent, the rendered pixels agree with the devkit's own box projection, the lidar is
honest, and generation is deterministic."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.geometry_utils import BoxVisibility, points_in_box, view_points
from nuscenes.utils.splits import mini_val
from pyquaternion import Quaternion
from shapely.geometry import Polygon

from bevformer.data.synthetic import CLASS_HUE_DEG, CLASSES, generate, load_rig, scene_names
from bevformer.data.synthetic.generate import KEYFRAME_PERIOD_US, _plan
from bevformer.data.synthetic.tables import token

VERSION = "v1.0-mini"
CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
FIELDS = {
    "scene": {
        "token",
        "log_token",
        "nbr_samples",
        "first_sample_token",
        "last_sample_token",
        "name",
        "description",
    },
    "sample": {"token", "timestamp", "prev", "next", "scene_token"},
    "sample_data": {
        "token",
        "sample_token",
        "ego_pose_token",
        "calibrated_sensor_token",
        "timestamp",
        "fileformat",
        "is_key_frame",
        "height",
        "width",
        "filename",
        "prev",
        "next",
    },
    "sample_annotation": {
        "token",
        "sample_token",
        "instance_token",
        "visibility_token",
        "attribute_tokens",
        "translation",
        "size",
        "rotation",
        "prev",
        "next",
        "num_lidar_pts",
        "num_radar_pts",
    },
    "instance": {
        "token",
        "category_token",
        "nbr_annotations",
        "first_annotation_token",
        "last_annotation_token",
    },
    "category": {"token", "name", "description"},
    "attribute": {"token", "name", "description"},
    "visibility": {"token", "level", "description"},
    "sensor": {"token", "channel", "modality"},
    "calibrated_sensor": {"token", "sensor_token", "translation", "rotation", "camera_intrinsic"},
    "ego_pose": {"token", "timestamp", "rotation", "translation"},
    "log": {"token", "logfile", "vehicle", "date_captured", "location"},
    "map": {"token", "log_tokens", "category", "filename"},
}
# the tiny dataset of the synthetic_dataroot fixture (tests/data/conftest.py)
SYNTHETIC_KWARGS = dict(scenes=2, samples_per_scene=4, image_size=(400, 225), seed=0, workers=1)
N_SCENES = SYNTHETIC_KWARGS["scenes"]
N_SAMPLES = SYNTHETIC_KWARGS["samples_per_scene"]
WIDTH, HEIGHT = SYNTHETIC_KWARGS["image_size"]


@pytest.fixture(scope="module")
def nusc(synthetic_dataroot: Path) -> NuScenes:
    return NuScenes(version=VERSION, dataroot=str(synthetic_dataroot), verbose=False)


def _tables(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / VERSION).glob("*.json"))}


def test_fixture_is_the_documented_dataset(synthetic_kwargs):
    assert synthetic_kwargs == SYNTHETIC_KWARGS


def test_devkit_loads_counts(nusc):
    assert [s["name"] for s in nusc.scene] == scene_names(N_SCENES)
    assert len(nusc.sample) == N_SCENES * N_SAMPLES
    assert len(nusc.sample_data) == N_SCENES * N_SAMPLES * 7
    for sample in nusc.sample:
        assert set(sample["data"]) == {*CAMERAS, "LIDAR_TOP"}
        assert len(sample["anns"]) >= 10
    names = {nusc.get("category", i["category_token"])["name"] for i in nusc.instance}
    assert {
        "vehicle.car",
        "human.pedestrian.adult",
        "movable_object.barrier",
        "movable_object.trafficcone",
    } <= names
    assert len(nusc.attribute) == 8 and len(nusc.visibility) == 4


def test_tables_have_fields(synthetic_dataroot):
    for table, fields in FIELDS.items():
        rows = json.loads((synthetic_dataroot / VERSION / f"{table}.json").read_text())
        assert rows, table
        for row in rows:
            assert fields <= set(row), (table, fields - set(row))
    maps = json.loads((synthetic_dataroot / VERSION / "map.json").read_text())
    for rec in maps:
        mask = cv2.imread(str(synthetic_dataroot / rec["filename"]), cv2.IMREAD_UNCHANGED)
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255} and mask.max() == 255


def test_chains_are_consistent(nusc):
    for scene in nusc.scene:
        tok, seen = scene["first_sample_token"], []
        while tok:
            sample = nusc.get("sample", tok)
            assert sample["scene_token"] == scene["token"]
            if seen:
                assert sample["prev"] == seen[-1]
                prev_ts = nusc.get("sample", seen[-1])["timestamp"]
                assert sample["timestamp"] - prev_ts == KEYFRAME_PERIOD_US
            seen.append(tok)
            tok = sample["next"]
        assert seen[-1] == scene["last_sample_token"] and len(seen) == scene["nbr_samples"]
    for sd in nusc.sample_data:
        if sd["next"]:
            nxt = nusc.get("sample_data", sd["next"])
            assert nxt["prev"] == sd["token"] and nxt["channel"] == sd["channel"]
            assert nxt["timestamp"] > sd["timestamp"]
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        assert pose["timestamp"] == sd["timestamp"]
        # cameras fire within 10 ms of their keyframe (lidar) time
        sample = nusc.get("sample", sd["sample_token"])
        assert abs(sd["timestamp"] - sample["timestamp"]) <= 10_000
    for inst in nusc.instance:
        tok, count = inst["first_annotation_token"], 0
        while tok:
            ann = nusc.get("sample_annotation", tok)
            assert ann["instance_token"] == inst["token"]
            if ann["next"]:
                assert nusc.get("sample_annotation", ann["next"])["prev"] == tok
            last, tok, count = tok, ann["next"], count + 1
        assert last == inst["last_annotation_token"] and count == inst["nbr_annotations"]


def test_box_velocity_matches_truth(nusc):
    worlds, _ = _plan(scene_names(N_SCENES), N_SAMPLES, SYNTHETIC_KWARGS["seed"])
    moving = nusc.field2token("attribute", "name", "vehicle.moving")[0]
    checked = 0
    for scene_idx, (name, world) in enumerate(zip(scene_names(N_SCENES), worlds)):
        index = {
            token(SYNTHETIC_KWARGS["seed"], "instance", name, i): i for i in range(len(world.cls))
        }
        scene = nusc.scene[scene_idx]
        first_ts = nusc.get("sample", scene["first_sample_token"])["timestamp"]
        for ann in nusc.sample_annotation:
            if moving not in ann["attribute_tokens"] or not (ann["prev"] and ann["next"]):
                continue
            if ann["instance_token"] not in index:
                continue
            t = (nusc.get("sample", ann["sample_token"])["timestamp"] - first_ts) / 1e6
            truth = world.state(t).velocity[index[ann["instance_token"]]]
            estimate = nusc.box_velocity(ann["token"])
            assert np.linalg.norm(truth[:2]) > 0.5
            np.testing.assert_allclose(estimate[:2], truth[:2], atol=0.25)
            assert abs(estimate[2]) < 1e-6
            checked += 1
    assert checked >= 5


def _hue_distance(hue: np.ndarray, target: float) -> np.ndarray:
    d = np.abs(hue - target) % 360.0
    return np.minimum(d, 360.0 - d)


def test_rendered_pixels_inside_projected_boxes_have_class_colour(nusc, synthetic_dataroot):
    """Independent oracle: the devkit's boxes in each camera, projected with view_points."""
    fractions = []
    for sample in nusc.sample:
        for cam in CAMERAS:
            token = sample["data"][cam]
            path, boxes, K = nusc.get_sample_data(token, box_vis_level=BoxVisibility.ALL)
            _, everything, _ = nusc.get_sample_data(token, box_vis_level=BoxVisibility.NONE)
            img = cv2.imread(path)
            assert img.shape == (HEIGHT, WIDTH, 3)
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL).astype(np.float64)
            hue, sat, val = hsv[..., 0] * 360 / 256, hsv[..., 1] / 255, hsv[..., 2] / 255
            occluders = []  # (nearest depth, 2D bounding rect) of every box in front
            for box in everything:
                corners = box.corners()
                if corners[2].max() <= 0.1:
                    continue
                if corners[2].min() <= 0.1:
                    rect = (-(10**6), -(10**6), 3 * 10**6, 3 * 10**6)  # crosses the image plane
                else:
                    uv = view_points(corners, K, normalize=True)[:2].T
                    rect = cv2.boundingRect(uv.astype(np.float32))
                occluders.append((box.token, corners[2].min(), rect))
            for box in boxes:
                cls = category_to_detection_name(box.name)
                uv = view_points(box.corners(), K, normalize=True)[:2].T
                hull = cv2.convexHull(uv.astype(np.float32))
                mask = np.zeros((HEIGHT, WIDTH), np.uint8)
                cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
                # skip boxes that a nearer box may cover, and tiny ones
                rect = cv2.boundingRect(hull)
                far = box.corners()[2].max()
                occluded = any(
                    tok != box.token and near < far and _overlap(rect, other)
                    for tok, near, other in occluders
                )
                if occluded or mask.sum() < 60:
                    continue
                inside = mask.astype(bool)
                colourful = (sat[inside] > 0.2) & (val[inside] > 0.12)
                dist = [_hue_distance(hue[inside], h) < 16 for h in CLASS_HUE_DEG]
                own = float(np.mean(dist[CLASSES.index(cls)] & colourful))
                others = max(
                    float(np.mean(d & colourful))
                    for i, d in enumerate(dist)
                    if i != CLASSES.index(cls)
                )
                assert own > others, (cls, own, others)
                fractions.append(own)
    assert len(fractions) >= 10
    assert np.mean(fractions) > 0.75 and np.min(fractions) > 0.4, (
        np.mean(fractions),
        np.min(fractions),
    )


def _render_one_box(cls: str, yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """One box 10 m ahead of a camera 1.5 m above the ground looking along global +x, lit
    from straight above (every vertical face gets the same light). Returns the HSV value
    channel (H, W) in [0, 1] and the box's pixel mask."""
    from bevformer.data.synthetic.catalog import CLASS_INFO
    from bevformer.data.synthetic.raster import render_camera

    K = np.array([[100.0, 0.0, 100.0], [0.0, 100.0, 60.0], [0.0, 0.0, 1.0]])
    cam2global = np.eye(4)
    # camera x (right) = global -y, camera y (down) = global -z, camera z (ahead) = global +x
    cam2global[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]
    cam2global[:3, 3] = [0.0, 0.0, 1.5]
    mips = tuple(np.full((64 >> k, 64 >> k, 3), 90, np.uint8) for k in range(4))
    info = CLASS_INFO[cls]
    lwh = np.array([[info.wlh[1], info.wlh[0], info.wlh[2]]])
    img, ids, _ = render_camera(
        120, 200, K, cam2global, mips, 2.0, np.array([-64.0, -64.0]),
        np.array([[10.0, 0.0, lwh[0, 2] / 2]]), np.array([yaw]), lwh,
        np.array([CLASSES.index(cls)]), np.array(CLASS_HUE_DEG), np.array([0.5]),
        np.array([0.0, 0.0, 1.0]),
    )  # fmt: skip
    return img.max(axis=2) / 255.0, ids == 0


@pytest.mark.parametrize(
    "cls", ["car", "truck", "bus", "trailer", "motorcycle", "bicycle", "pedestrian"]
)
def test_front_and_back_look_different(cls):
    """A camera must be able to tell which way an object points, as on real vehicles: the
    face seen head-on (yaw pi, pointing at the camera) is lighter than the tail (yaw 0), and
    seen from the side, the end the object points to is the lighter one."""
    front, front_mask = _render_one_box(cls, np.pi)
    back, back_mask = _render_one_box(cls, 0.0)
    assert front_mask.sum() > 100 and back_mask.sum() > 100
    assert front[front_mask].mean() > 1.3 * back[back_mask].mean(), cls
    for yaw, lighter in ((np.pi / 2, "left"), (-np.pi / 2, "right")):  # +y is image left
        value, mask = _render_one_box(cls, yaw)
        cols = np.flatnonzero(mask.any(axis=0))
        span = max(1, len(cols) // 10)
        left = value[:, cols[:span]][mask[:, cols[:span]]].mean()
        right = value[:, cols[-span:]][mask[:, cols[-span:]]].mean()
        assert (left > 1.2 * right) if lighter == "left" else (right > 1.2 * left), (
            cls,
            yaw,
            left,
            right,
        )


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_lidar_points_are_honest(nusc):
    for sample in nusc.sample[:3]:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pts = np.fromfile(nusc.get_sample_data_path(sd["token"]), dtype=np.float32)
        pts = pts.reshape(-1, 5)
        assert len(pts) > 10_000
        assert set(np.unique(pts[:, 4]).astype(int)) <= set(range(32))
        _, boxes, _ = nusc.get_sample_data(sd["token"])  # boxes in the lidar frame
        ranges = np.linalg.norm(pts[:, :3], axis=1)
        assert ranges.max() <= 70.5
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            inside = points_in_box(box, pts[:, :3].T.astype(np.float64), wlh_factor=1.02)
            assert abs(int(inside.sum()) - ann["num_lidar_pts"]) <= max(2, 0.05 * inside.sum())
            assert ann["num_radar_pts"] == 0

        # A box near the lidar, fully visible to the cameras and with a clear line of sight
        # from the lidar to its centre must have points. (The cameras sit elsewhere on the
        # ego than the lidar: a car in the next lane can hide from the lidar a box that a
        # camera still sees whole.)
        def line_of_sight(box, boxes=boxes) -> bool:
            ray = np.linspace(0.0, 1.0, 200)[None, :] * box.center[:, None]
            return not any(
                points_in_box(other, ray).any() for other in boxes if other.token != box.token
            )

        near = [
            nusc.get("sample_annotation", b.token)["num_lidar_pts"] > 0
            for b in boxes
            if np.linalg.norm(b.center[:2]) < 20
            and nusc.get("sample_annotation", b.token)["visibility_token"] == "4"
            and line_of_sight(b)
        ]
        assert near and all(near)


def test_objects_do_not_overlap(nusc):
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        ego_yaw = Quaternion(pose["rotation"]).yaw_pitch_roll[0]
        ego = _footprint(pose["translation"], (1.9, 5.0), ego_yaw, shift=1.4)
        polys = []
        for tok in sample["anns"]:
            ann = nusc.get("sample_annotation", tok)
            yaw = Quaternion(ann["rotation"]).yaw_pitch_roll[0]
            polys.append(_footprint(ann["translation"], ann["size"][:2], yaw))
            assert polys[-1].intersection(ego).area < 1e-6
        for i in range(len(polys)):
            for j in range(i + 1, len(polys)):
                assert polys[i].intersection(polys[j]).area < 1e-3


def _footprint(center, wl, yaw, shift=0.0) -> Polygon:
    w, length = wl
    c, s = np.cos(yaw), np.sin(yaw)
    pts = []
    for dx, dy in ((1, 1), (1, -1), (-1, -1), (-1, 1)):
        lx, ly = dx * length / 2 + shift, dy * w / 2
        pts.append((center[0] + c * lx - s * ly, center[1] + s * lx + c * ly))
    return Polygon(pts)


def test_image_size_scales_intrinsics(nusc):
    ref, small = load_rig(), load_rig((800, 300))
    for a, b in zip(ref.cameras, small.cameras):
        np.testing.assert_allclose(b.intrinsic[0], a.intrinsic[0] * [0.5, 1, 0.5])
        np.testing.assert_allclose(b.intrinsic[1], a.intrinsic[1] * [1, 1 / 3, 1 / 3])
        assert b.translation == a.translation and b.rotation == a.rotation
    front = load_rig().cameras[0].intrinsic
    for sd in nusc.sample_data:
        if sd["channel"] == "CAM_FRONT":
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            K = np.array(cs["camera_intrinsic"])
            np.testing.assert_allclose(K[0], front[0] * [WIDTH / 1600, 1, WIDTH / 1600], atol=1e-5)
            np.testing.assert_allclose(K[1], front[1] * [1, HEIGHT / 900, HEIGHT / 900], atol=1e-5)
            assert (sd["width"], sd["height"]) == (WIDTH, HEIGHT)


def test_mini_val_split_has_samples_and_scores(nusc, tmp_path):
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    val = [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in mini_val]
    assert val
    results = {}
    for sample in val:
        boxes = []
        for tok in sample["anns"]:
            ann = nusc.get("sample_annotation", tok)
            if ann["num_lidar_pts"] == 0:
                continue  # the evaluation drops such ground truth; a prediction would be an FP
            attrs = [nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
            velocity = np.nan_to_num(nusc.box_velocity(tok)[:2])
            boxes.append(
                {
                    "sample_token": sample["token"],
                    "translation": ann["translation"],
                    "size": ann["size"],
                    "rotation": ann["rotation"],
                    "velocity": velocity.tolist(),
                    "detection_name": category_to_detection_name(ann["category_name"]),
                    "detection_score": 0.9,
                    "attribute_name": attrs[0] if attrs else "",
                }
            )
        results[sample["token"]] = boxes
    path = tmp_path / "results.json"
    meta = {
        "use_camera": True,
        "use_lidar": False,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    path.write_text(json.dumps({"meta": meta, "results": results}))
    evaluator = DetectionEval(
        nusc,
        config_factory("detection_cvpr_2019"),
        str(path),
        eval_set="mini_val",
        output_dir=str(tmp_path),
        verbose=False,
    )
    metrics, _ = evaluator.evaluate()
    # classes without ground truth in this tiny split score AP 0, so check the present ones
    present = {box.detection_name for box in evaluator.gt_boxes.all}
    assert len(present) >= 5
    for name in present:
        assert metrics.mean_dist_aps[name] > 0.99, name
        for err in ("trans_err", "scale_err"):
            assert metrics.get_label_tp(name, err) < 1e-3, (name, err)


def test_generation_is_deterministic(synthetic_dataroot, tmp_path):
    again = generate(tmp_path / "again", progress=False, **SYNTHETIC_KWARGS)
    assert _tables(again) == _tables(synthetic_dataroot)
    first = sorted((synthetic_dataroot / "samples" / "CAM_FRONT").iterdir())[0]
    assert (again / "samples" / "CAM_FRONT" / first.name).read_bytes() == first.read_bytes()
    other = generate(tmp_path / "other", progress=False, **{**SYNTHETIC_KWARGS, "seed": 1})
    assert _tables(other)["sample_annotation.json"] != _tables(again)["sample_annotation.json"]


def test_existing_output_is_refused(synthetic_dataroot, tmp_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(synthetic_dataroot, progress=False, **SYNTHETIC_KWARGS)
    with pytest.raises(ValueError, match="between 1 and 10"):
        generate(tmp_path / "x", scenes=11, progress=False)


def test_scene_order_includes_val():
    assert scene_names(2)[1] in mini_val
    assert Counter(n in mini_val for n in scene_names(10)) == Counter({False: 8, True: 2})


def test_sweeps_are_chained_between_keyframes(tmp_path):
    root = generate(
        tmp_path / "sweeps",
        scenes=1,
        samples_per_scene=3,
        image_size=(160, 90),
        sweeps=2,
        progress=False,
    )
    nusc = NuScenes(version=VERSION, dataroot=str(root), verbose=False)
    assert len(nusc.sample_data) == 7 * (3 + 2 * 2)
    for channel in ("CAM_FRONT", "LIDAR_TOP"):
        sd = nusc.get("sample_data", nusc.sample[0]["data"][channel])
        keys = [sd["is_key_frame"]]
        while sd["next"]:
            nxt = nusc.get("sample_data", sd["next"])
            assert 166_000 <= nxt["timestamp"] - sd["timestamp"] <= 167_000
            assert (root / nxt["filename"]).is_file()
            assert nxt["filename"].startswith("samples/" if nxt["is_key_frame"] else "sweeps/")
            keys.append(nxt["is_key_frame"])
            sd = nxt
        assert keys == [True, False, False, True, False, False, True]


def test_cli_refuses_a_non_empty_output(synthetic_dataroot):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "tools" / "create_synthetic.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--out", str(synthetic_dataroot), "--scenes", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr and str(synthetic_dataroot) in proc.stderr
