"""NuScenesTemporalDataset and collate on hand-made info files (tiny images, known poses)."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest
import torch

from bevformer.data.collate import collate
from bevformer.data.dataset import MONO_NO_ATTRIBUTE, NuScenesTemporalDataset
from bevformer.data.infos import create_infos, load_infos, save_infos
from bevformer.data.meta import SampleMeta
from bevformer.data.transforms import (
    CropResizeFlipImage,
    GlobalRotScaleTransBEV,
    LoadMultiViewImages,
    NormalizeMultiViewImage,
    PadMultiViewImage,
)
from bevformer.registry import DATASETS
from bevformer.structures.boxes import CLASSES
from bevformer.structures.frames import cam2lidar as make_cam2lidar
from bevformer.structures.frames import invert

CAMS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
CAM_YAW_DEG = (0, -60, 60, 180, 120, -120)  # where each camera looks, from ego x
IMG_W, IMG_H = 32, 18
K = [[20.0, 0.0, 16.0], [0.0, 20.0, 9.0], [0.0, 0.0, 1.0]]


def _rt(yaw: float, t) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m[:3, 3] = t
    return m


def _cam2ego(yaw_deg: float) -> np.ndarray:
    a = math.radians(yaw_deg)
    m = np.eye(4)
    # camera axes in ego: x right, y down, z forward along (cos a, sin a, 0)
    m[:3, 0] = [math.sin(a), -math.cos(a), 0.0]
    m[:3, 1] = [0.0, 0.0, -1.0]
    m[:3, 2] = [math.cos(a), math.sin(a), 0.0]
    m[:3, 3] = [1.0, 0.0, 1.5]
    return m


# nuScenes LIDAR_TOP: x right, y forward -> ego (x forward, y left)
LIDAR2EGO = _rt(-math.pi / 2, [0.9, 0.0, 1.8])


def _gt(kind: str) -> dict:
    """GT of one sample; 'full' has boxes that exercise every filter, 'empty' none."""
    if kind == "empty":
        boxes, names, valid = [], [], []
    else:
        boxes = [
            [10.0, 5.0, -1.0, 2.0, 4.5, 1.6, 0.2, 1.0, float("nan")],  # car, kept
            [3.0, 3.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],  # "ignore": dropped
            [4.0, -4.0, 0.0, 0.6, 0.7, 1.8, 0.0, 0.0, 0.0],  # pedestrian, invalid: dropped
            [60.0, 0.0, 0.0, 2.9, 11.0, 3.5, 0.0, 0.0, 0.0],  # bus out of range: dropped
            [51.2, 0.0, 0.0, 2.5, 7.0, 3.0, 0.0, 0.0, 0.0],  # truck on the border: dropped
            [-20.0, 30.0, -1.5, 2.5, 0.5, 1.0, 4.0, 0.0, 0.0],  # barrier, yaw wrapped
        ]
        names = ["car", "ignore", "pedestrian", "bus", "truck", "barrier"]
        valid = [True, True, False, True, True, True]
    return {
        "gt_boxes": boxes,
        "gt_names": names,
        "gt_attributes": [""] * len(names),
        "num_lidar_pts": [5 if v else 0 for v in valid],
        "num_radar_pts": [0] * len(names),
        "valid_flag": valid,
        "instance_tokens": [f"inst{i}" for i in range(len(names))],
    }


def _mono() -> dict:
    ann = {
        "instance_token": "inst0",
        "name": "car",
        "label": 0,
        "box2d": [4.0, 6.0, 12.0, 14.0],
        "center2d": [8.0, 10.0],
        "depth": 12.0,
        "center_cam": [-1.0, 0.5, 12.0],
        "size_wlh": [2.0, 4.5, 1.6],
        "rotation_cam": [1.0, 0.0, 0.0, 0.0],
        "velocity_cam": [0.0, 0.0, 1.0],
        "attribute": "vehicle.parked",
        "speed": float("nan"),
        "num_pts": 5,
    }
    few_points = dict(ann, instance_token="inst9", num_pts=2)
    not_a_class = dict(ann, name="ignore", label=-1)
    top_only = dict(ann, box2d=[0.0, 0.0, 10.0, 1.5], attribute="")  # cropped away below
    return {cam: [ann, few_points, not_a_class, top_only] for cam in CAMS}


def _ego_pose(scene: int, k: int) -> np.ndarray:
    return _rt(0.1 * k + scene, [100.0 * scene + 5.0 * k, 1.0 * k, 0.0])


def make_infos(root, scenes=(3, 2), empty=(), cams=CAMS, lidar2ego_tilt=()) -> str:
    """Write images and an info file: ``scenes[s]`` keyframes in scene s; keyframes listed in
    ``empty`` as ``(scene, k)`` have no GT; ``lidar2ego_tilt`` lists keyframes whose lidar is
    mounted differently (to check that each frame's own lidar2ego is used)."""
    root = str(root)
    infos = []
    for s, count in enumerate(scenes):
        for k in range(count):
            token = f"s{s}k{k}"
            e2g = _ego_pose(s, k)
            l2e = LIDAR2EGO @ _rt(0.3, [0.1, 0.2, 0.0]) if (s, k) in lidar2ego_tilt else LIDAR2EGO
            cams_info = {}
            for n, cam in enumerate(cams):
                rel = f"samples/{cam}/{token}.jpg"
                os.makedirs(os.path.join(root, "samples", cam), exist_ok=True)
                img = np.full((IMG_H, IMG_W, 3), 20 * n + 10 * k + 50 * s, np.uint8)
                cv2.imwrite(os.path.join(root, rel), img)
                c2e = _cam2ego(CAM_YAW_DEG[CAMS.index(cam)])
                e2g_cam = e2g @ _rt(0.0, [0.2, 0.0, 0.0])  # camera shutter 0.2 m later
                cams_info[cam] = {
                    "data_path": rel,
                    "sample_data_token": f"{token}_{cam}",
                    "timestamp": 1_000_000 * s + 500_000 * k + 100,
                    "intrinsics": K,
                    "cam2ego": c2e.tolist(),
                    "ego2global": e2g_cam.tolist(),
                    "cam2lidar": make_cam2lidar(c2e, e2g_cam, e2g, l2e).tolist(),
                    "width": IMG_W,
                    "height": IMG_H,
                }
            info = {
                "token": token,
                "scene_token": f"scene{s}",
                "scene_name": f"scene-{s:04d}",
                "frame_idx": k,
                "timestamp": 1_000_000 * s + 500_000 * k,
                "prev": f"s{s}k{k - 1}" if k else "",
                "next": f"s{s}k{k + 1}" if k + 1 < count else "",
                "lidar_path": f"samples/LIDAR_TOP/{token}.bin",
                "lidar2ego": l2e.tolist(),
                "ego2global": e2g.tolist(),
                "cams": cams_info,
                "mono": _mono(),
            }
            info.update(_gt("empty" if (s, k) in empty else "full"))
            infos.append(info)
    metadata = {
        "dataset_version": "v1.0-mini",
        "split": "train",
        "dataroot": root,
        "classes": list(CLASSES),
        "camera_names": list(cams),
    }
    path = os.path.join(root, "infos_temporal_train.json")
    # shuffled on disk: the dataset sorts by scene, then time
    save_infos(path, metadata, infos[::-1])
    return path


def _dataset(info_file, **kwargs) -> NuScenesTemporalDataset:
    """The dataset of a :func:`make_infos` file, whose images lie next to it."""
    return NuScenesTemporalDataset(
        os.path.basename(info_file), os.path.dirname(info_file), **kwargs
    )


@pytest.fixture
def info_file(tmp_path):
    return make_infos(tmp_path)


def test_temporal_sampling_marks_missing_frames_at_scene_boundaries(info_file):
    ds = _dataset(info_file, frames=(-2, -1, 0), test_mode=True)
    assert len(ds) == 5
    expected = [  # (frame tokens per slot, frame_valid)
        (("s0k0", "s0k0", "s0k0"), (False, False, True)),
        (("s0k0", "s0k0", "s0k1"), (False, True, True)),
        (("s0k0", "s0k1", "s0k2"), (True, True, True)),
        (("s1k0", "s1k0", "s1k0"), (False, False, True)),  # s0k2 precedes, other scene
        (("s1k0", "s1k0", "s1k1"), (False, True, True)),
    ]
    for idx, (tokens, valid) in enumerate(expected):
        item = ds[idx]
        meta = item["meta"]
        assert isinstance(meta, SampleMeta)
        assert meta.token == tokens[-1] and meta.frame_tokens == tokens
        assert meta.frame_valid == valid
        assert item["frame_valid"].tolist() == list(valid)
        assert item["img"].shape == (3, 6, 3, IMG_H, IMG_W)
    # a filled slot repeats the newer frame's data, cameras re-expressed the same way
    item = ds[1]
    torch.testing.assert_close(item["img"][0], item["img"][1])
    torch.testing.assert_close(item["lidar2img"][0], item["lidar2img"][1])


def test_future_offsets_fall_back_towards_the_current_frame(info_file):
    ds = _dataset(info_file, frames=(0, 1), test_mode=True)
    assert ds[2]["meta"].frame_tokens == ("s0k2", "s0k2")
    assert ds[2]["meta"].frame_valid == (True, False)
    assert ds[1]["meta"].frame_tokens == ("s0k1", "s0k2")


def test_bad_frames_rejected(info_file):
    with pytest.raises(ValueError, match="contain 0"):
        _dataset(info_file, frames=(-2, -1))
    with pytest.raises(ValueError, match="strictly increasing"):
        _dataset(info_file, frames=(0, -1))


def _pix(lidar2img, p) -> np.ndarray:
    q = np.asarray(lidar2img, dtype=np.float64) @ np.append(p, 1.0)
    return np.array([q[0] / q[2], q[1] / q[2], q[2]])


def test_past_lidar2img_reexpressed_in_current_lidar_frame(tmp_path):
    # the past frame's lidar is mounted differently: only each frame's own lidar2ego works
    path = make_infos(tmp_path, scenes=(3,), lidar2ego_tilt={(0, 1)})
    ds = _dataset(path, frames=(-1, 0), test_mode=True)
    item = ds[2]  # s0k2 with s0k1 as the past frame
    assert item["meta"].frame_tokens == ("s0k1", "s0k2")
    past, curr = ds.infos[1], ds.infos[2]
    world = np.array([108.0, 9.0, 0.7])  # a static world point seen by the front camera
    n = CAMS.index("CAM_FRONT")

    def to_lidar(info):
        g2l = invert(np.asarray(info["lidar2ego"])) @ invert(np.asarray(info["ego2global"]))
        return (g2l @ np.append(world, 1.0))[:3]

    p_curr, p_past = to_lidar(curr), to_lidar(past)
    viewpad = np.eye(4)
    viewpad[:3, :3] = K
    past_original = viewpad @ invert(np.asarray(past["cams"]["CAM_FRONT"]["cam2lidar"]))
    expected = _pix(past_original, p_past)
    assert expected[2] > 0 and 0 <= expected[0] < IMG_W and 0 <= expected[1] < IMG_H
    np.testing.assert_allclose(_pix(item["lidar2img"][0, n], p_curr), expected, atol=1e-3)
    # the current slot: plain info calibration
    curr_original = viewpad @ invert(np.asarray(curr["cams"]["CAM_FRONT"]["cam2lidar"]))
    np.testing.assert_allclose(item["lidar2img"][1, n].numpy(), curr_original, atol=1e-4)
    # cam2lidar of the past camera lands the camera centre at its world position
    cam_world = np.asarray(past["cams"]["CAM_FRONT"]["ego2global"]) @ _cam2ego(0.0)
    cam_in_curr = (
        invert(np.asarray(curr["lidar2ego"])) @ invert(np.asarray(curr["ego2global"])) @ cam_world
    )
    np.testing.assert_allclose(item["cam2lidar"][0, n].numpy(), cam_in_curr, atol=1e-4)


def test_gt_filtering_labels_and_yaw(info_file):
    ds = _dataset(info_file, test_mode=True)
    item = ds[0]
    assert item["gt_labels"].tolist() == [CLASSES.index("car"), CLASSES.index("barrier")]
    boxes = item["gt_boxes"]
    assert boxes.dtype == torch.float32 and boxes.shape == (2, 9)
    np.testing.assert_allclose(boxes[0, :2], [10.0, 5.0])
    assert boxes[0, 8] == 0.0  # NaN velocity -> 0
    assert math.isclose(float(boxes[1, 6]), 4.0 - 2 * math.pi, abs_tol=1e-6)  # [-pi, pi)
    everything = _dataset(info_file, test_mode=True, use_valid_flag=False)
    # valid_flag off: num_lidar_pts > 0 decides, which drops the same pedestrian here
    assert everything[0]["gt_labels"].tolist() == [0, 5]


def test_filter_empty_gt_drops_keyframes_but_keeps_them_as_past_frames(tmp_path):
    path = make_infos(tmp_path, scenes=(3, 2), empty={(0, 1)})
    train = _dataset(path, frames=(-1, 0))
    assert len(train) == 4
    assert [train[i]["meta"].token for i in range(4)] == ["s0k0", "s0k2", "s1k0", "s1k1"]
    assert train[1]["meta"].frame_tokens == ("s0k1", "s0k2")
    assert train[1]["meta"].frame_valid == (True, True)
    assert len(_dataset(path, filter_empty_gt=False)) == 5
    test = _dataset(path, test_mode=True)
    assert len(test) == 5 and len(test[1]["gt_boxes"]) == 0
    all_empty = make_infos(tmp_path / "empty", scenes=(2,), empty={(0, 0), (0, 1)})
    with pytest.raises(ValueError, match="filter_empty_gt=False"):
        _dataset(all_empty)


def test_mono_targets_follow_image_augmentation(info_file):
    # 32x18 -> final (16, 32): crop the bottom 16 rows (y0 = 2), scale 1 -> v' = v - 2
    crf = CropResizeFlipImage(final_size=(16, 32), scale_range=(1.0, 1.0))
    ds = _dataset(info_file, transforms=[LoadMultiViewImages(), crf])
    mono = ds.get_item(0, rng=np.random.default_rng(0))["mono"]
    assert len(mono["boxes2d"]) == 6  # one entry per camera
    # only the first annotation survives: few points / not a class / cropped away
    torch.testing.assert_close(mono["boxes2d"][0], torch.tensor([[4.0, 4.0, 12.0, 12.0]]))
    torch.testing.assert_close(mono["centers2d"][3], torch.tensor([[8.0, 8.0]]))
    assert mono["labels"][0].tolist() == [CLASSES.index("car")]
    assert mono["attr_labels"][0].tolist() == [1]  # vehicle.parked (DD3D ids)
    assert mono["attributes"][0] == ("vehicle.parked",)
    assert torch.isnan(mono["speeds"][0]).all() and mono["depths"][0].tolist() == [12.0]
    assert MONO_NO_ATTRIBUTE == 3


def test_errors_for_bad_inputs(tmp_path, info_file):
    # camera count mismatch: infos with 5 cameras, 6 configured
    five = make_infos(tmp_path / "five", cams=CAMS[:5])
    with pytest.raises(ValueError, match="CAM_BACK_RIGHT"):
        _dataset(five, camera_names=CAMS)
    assert len(_dataset(five, test_mode=True)[0]["meta"].camera_names) == 5
    # missing image
    ds = _dataset(info_file, test_mode=True)
    victim = os.path.join(ds.data_root, ds.infos[0]["cams"]["CAM_BACK"]["data_path"])
    os.remove(victim)
    with pytest.raises(FileNotFoundError, match="CAM_BACK/s0k0.jpg"):
        ds[0]
    # corrupt image
    with open(victim, "wb") as f:
        f.write(b"this is not a jpeg" * 10)
    with pytest.raises(OSError, match="CAM_BACK/s0k0.jpg"):
        ds[0]
    # another info-file version
    bad = tmp_path / "old.json"
    bad.write_text('{"format": "bevformer-nuscenes-infos", "version": 0, "infos": []}')
    with pytest.raises(ValueError, match="version 0"):
        _dataset(bad)


def _train_pipeline(**crf):
    return [
        LoadMultiViewImages(),
        GlobalRotScaleTransBEV(),
        CropResizeFlipImage(final_size=(16, 32), **crf),
        NormalizeMultiViewImage(mean=[103.53, 116.28, 123.675], std=[1, 1, 1], to_rgb=False),
        PadMultiViewImage(size_divisor=32),
    ]


def test_item_and_collate_batch_layout(tmp_path):
    path = make_infos(tmp_path, scenes=(3, 2), empty={(1, 1)})
    ds = _dataset(
        path,
        frames=(-1, 0),
        transforms=_train_pipeline(scale_range=(1.0, 1.0)),
        test_mode=False,
        filter_empty_gt=False,
    )
    a = ds.get_item(2, rng=np.random.default_rng(0))  # full GT
    b = ds.get_item(4, rng=np.random.default_rng(1))  # no GT
    assert a["img"].shape == (2, 6, 3, 32, 32)  # 16x32 padded to 32x32
    assert a["meta"].img_shape == (16, 32) and a["meta"].pad_shape == (32, 32)
    # BDA moved the GT: centres are bda @ the original ones (car, bus, truck, barrier), then
    # the range filter runs on the moved centres (official order: BDA, then ObjectRangeFilter)
    orig = torch.tensor(
        [[10.0, 5.0, -1.0, 1.0], [60.0, 0.0, 0.0, 1.0], [51.2, 0.0, 0.0, 1.0], [-20, 30, -1.5, 1]]
    )
    moved = (orig @ a["bda"].T)[:, :3]
    moved = moved[(moved[:, :2].abs() < 51.2).all(dim=1)]
    assert len(moved) >= 2
    torch.testing.assert_close(a["gt_boxes"][:, :3], moved, atol=1e-4, rtol=0)
    assert not torch.allclose(a["bda"], torch.eye(4))
    # batch of two with different GT counts and image sizes
    c = _dataset(
        path,
        frames=(-1, 0),
        transforms=_train_pipeline(scale_range=(2.0, 2.0), flip_prob=1.0),
        filter_empty_gt=False,
    ).get_item(4, rng=np.random.default_rng(2))
    assert c["img"].shape[-2:] == (32, 64) and c["flip"] is True
    batch = collate([a, b])
    assert batch["img"].shape == (2, 2, 6, 3, 32, 32) and batch["img_shape"] == (32, 32)
    assert batch["lidar2img"].shape == (2, 2, 6, 4, 4) and batch["lidar2img"].dtype == torch.float32
    assert batch["intrinsics"].shape == (2, 2, 6, 3, 3)
    assert batch["cam2lidar"].shape == (2, 2, 6, 4, 4)
    assert batch["frame_valid"].shape == (2, 2) and batch["frame_valid"].dtype == torch.bool
    assert batch["bda"].shape == (2, 4, 4)
    assert [len(g) for g in batch["gt_boxes"]] == [len(moved), 0]
    assert [g.dtype for g in batch["gt_labels"]] == [torch.int64, torch.int64]
    assert [m.token for m in batch["meta"]] == ["s0k2", "s1k1"]
    assert len(batch["mono"]) == 2
    mixed = collate([a, c])
    assert mixed["img"].shape == (2, 2, 6, 3, 32, 64) and mixed["flip"].tolist() == [False, True]
    # the unflipped item is padded at the right; the flipped one already fills 64 columns
    assert (mixed["img"][0, ..., 32:] == 0).all() and (mixed["img"][0, ..., :32] != 0).any()
    with pytest.raises(ValueError, match="same"):
        collate([a, _dataset(path, test_mode=True)[0]])


def test_test_mode_is_deterministic_and_dataloader_works(info_file):
    ds = _dataset(
        info_file,
        frames=(-1, 0),
        transforms=_train_pipeline(scale_choices=(1.0, 2.0), flip_prob=1.0),
        test_mode=True,
    )
    first, second = ds[2], ds[2]
    torch.testing.assert_close(first["img"], second["img"])
    torch.testing.assert_close(first["bda"], torch.eye(4))
    assert first["flip"] is False and first["meta"].img_shape == (16, 32)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["img"].shape == (2, 2, 6, 3, 32, 32)
    assert "NuScenesTemporalDataset" in DATASETS.module_dict


def test_synthetic_dataroot_item(synthetic_dataroot, tmp_path):
    dataroot = synthetic_dataroot
    written = create_infos(str(dataroot), "v1.0-mini", out_dir=str(tmp_path), progress=False)
    info_file = max(written.values(), key=lambda p: len(load_infos(p)[1]))
    ds = NuScenesTemporalDataset(
        info_file,
        str(dataroot),
        frames=(-1, 0),
        filter_empty_gt=False,
        transforms=[
            LoadMultiViewImages(),
            CropResizeFlipImage(final_size=(128, 320)),
            PadMultiViewImage(size_divisor=32),
        ],
    )
    item = ds.get_item(1, rng=np.random.default_rng(0))
    assert item["img"].shape == (2, 6, 3, 128, 320)
    assert item["meta"].frame_valid == (True, True)
    boxes = item["gt_boxes"]
    assert len(boxes) > 0 and (boxes[:, :2].abs() < 51.2).all()
    assert ((item["gt_labels"] >= 0) & (item["gt_labels"] < 10)).all()
    # every camera sees at least its own image content (not all zeros)
    assert (item["img"][1].flatten(1).amax(dim=1) > 0).all()

    # static objects: the past camera re-expressed in the current lidar frame sees the current
    # GT centre where the original past camera sees the past GT centre
    plain = NuScenesTemporalDataset(info_file, str(dataroot), frames=(-1, 0), test_mode=True)
    item = plain.get_item(1)
    cur, past = plain.infos[1], plain.infos[0]
    assert item["meta"].frame_tokens == (past["token"], cur["token"])

    def static(info):
        boxes = np.asarray(info["gt_boxes"])
        moving = np.linalg.norm(boxes[:, 7:9], axis=1) > 1e-3
        return {t: b[:3] for t, b, m in zip(info["instance_tokens"], boxes, moving) if not m}

    cur_static, past_static = static(cur), static(past)
    shared = sorted(set(cur_static) & set(past_static))
    assert shared, "the synthetic scene should contain static objects"
    checked = 0
    for n, cam in enumerate(plain.camera_names):
        viewpad = np.eye(4)
        viewpad[:3, :3] = past["cams"][cam]["intrinsics"]
        past_l2i = viewpad @ invert(np.asarray(past["cams"][cam]["cam2lidar"]))
        for tok in shared:
            expected = _pix(past_l2i, past_static[tok])
            if expected[2] < 1.0:
                continue
            got = _pix(item["lidar2img"][0, n].double().numpy(), cur_static[tok])
            np.testing.assert_allclose(got, expected, atol=0.05)
            checked += 1
    assert checked > 0


def _centres_on_class_colour(item, undo_bda: bool = True) -> tuple[int, int]:
    """(hits, tried): GT centres 3-30 m in front of a camera, mapped back through ``bda`` and
    projected with the item's ``lidar2img`` into the unflipped image, whose 3x3 pixel patch
    has the hue of the box's class (the synthetic renderer's class colours)."""
    from bevformer.data.synthetic import CLASS_HUE_DEG

    cur = item["meta"].frame_offsets.index(0)
    boxes, labels = item["gt_boxes"].double().numpy(), item["gt_labels"].numpy()
    centres = np.c_[boxes[:, :3], np.ones(len(boxes))]
    if undo_bda:
        centres = centres @ np.linalg.inv(item["bda"].double().numpy()).T
    hits = tried = 0
    for img, l2i in zip(item["img"][cur].numpy(), item["lidar2img"][cur].double().numpy()):
        bgr = img.transpose(1, 2, 0)  # the pipeline below keeps BGR and does not scale
        if item["flip"]:
            bgr = bgr[:, ::-1]
        h, w = item["meta"].img_shape
        hsv = cv2.cvtColor(np.ascontiguousarray(bgr[:h, :w]).astype(np.float32), cv2.COLOR_BGR2HSV)
        pix = centres @ l2i.T
        for (u, v, depth, _), label in zip(pix, labels):
            if not 3.0 < depth < 30.0:
                continue
            u, v = u / depth, v / depth
            if not (2 <= u < w - 2 and 2 <= v < h - 2):
                continue
            # 3x3 pixels around the centre: [3, 3, 3] -> [9, 3] (H, S, V)
            patch = hsv[int(v) - 1 : int(v) + 2, int(u) - 1 : int(u) + 2].reshape(-1, 3)
            dist = np.abs(patch[:, 0] - CLASS_HUE_DEG[label]) % 360.0
            coloured = (np.minimum(dist, 360.0 - dist) < 20.0) & (patch[:, 1] > 0.15)
            tried += 1
            hits += int(coloured.mean() > 0.3)
    return hits, tried


def test_augmented_ground_truth_still_lands_on_its_object(request, tmp_path):
    """End to end through the training augmentation (BEV rotation/scale/flips, image
    crop/resize/flip): the GT centres, mapped back with ``bda`` and projected with
    ``lidar2img`` into the unflipped image, fall on pixels of their class colour as often as
    without augmentation; ignoring ``bda`` loses them."""
    dataroot = request.getfixturevalue("synthetic_dataroot")
    written = create_infos(str(dataroot), "v1.0-mini", out_dir=str(tmp_path), progress=False)
    info_file = max(written.values(), key=lambda p: len(load_infos(p)[1]))

    def pipeline(train: bool, flip: float) -> list:
        steps = [LoadMultiViewImages()]
        if train:
            steps.append(
                GlobalRotScaleTransBEV(
                    rot_range=(-40.0, 40.0),
                    scale_range=(0.9, 1.1),
                    flip_dx_prob=0.5,
                    flip_dy_prob=0.5,
                )
            )
        steps.append(
            CropResizeFlipImage(
                final_size=(160, 400), scale_choices=(0.9, 1.1), flip_prob=flip, test_scale=1.0
            )
        )
        return steps + [PadMultiViewImage(size_divisor=32)]

    plain = NuScenesTemporalDataset(info_file, str(dataroot), transforms=pipeline(False, 0.0))
    base_hits, base_tried = map(sum, zip(*(_centres_on_class_colour(plain[i]) for i in range(4))))
    assert base_tried >= 10 and base_hits / base_tried > 0.75, (base_hits, base_tried)
    for flip in (0.0, 1.0):
        ds = NuScenesTemporalDataset(info_file, str(dataroot), transforms=pipeline(True, flip))
        items = [ds.get_item(i, rng=np.random.default_rng(i)) for i in range(4)]
        assert all(item["flip"] is bool(flip) for item in items)
        assert all(not torch.allclose(item["bda"], torch.eye(4)) for item in items)
        hits, tried = map(sum, zip(*(_centres_on_class_colour(item) for item in items)))
        assert tried >= 10 and hits / tried > base_hits / base_tried - 0.1, (flip, hits, tried)
        wrong, tried = map(sum, zip(*(_centres_on_class_colour(it, False) for it in items)))
        assert wrong / max(tried, 1) < 0.5 * hits / max(tried, 1), (flip, wrong, hits, tried)


def test_reduced_decoding_keeps_image_and_geometry_aligned(request, tmp_path):
    """A file decoded at 1/4 (libjpeg DCT scaling) then cropped/resized shows the same content
    at the same pixels as the full decode: resampling the reduced image through the composed
    pixel maps (``lidar2img`` of both) reproduces the full-decode image, and a 3/8-pixel error
    in the claimed map (what ``u' = u / 4`` instead of ``u' + 0.5 = (u + 0.5) / 4`` gives)
    matches worse. The mono 2D boxes follow the same maps."""
    dataroot = request.getfixturevalue("synthetic_dataroot")  # 400x225 files
    written = create_infos(str(dataroot), "v1.0-mini", out_dir=str(tmp_path), progress=False)
    info_file = max(written.values(), key=lambda p: len(load_infos(p)[1]))
    out_hw = (48, 100)

    def item(load: LoadMultiViewImages) -> dict:
        crop = CropResizeFlipImage(final_size=out_hw, test_scale=1.0)
        ds = NuScenesTemporalDataset(
            info_file, str(dataroot), transforms=[load, crop], test_mode=True, with_mono=True
        )
        return ds[1]

    full = item(LoadMultiViewImages())
    reduced = item(LoadMultiViewImages(decode_min_size=out_hw))
    assert reduced["meta"].ori_shapes[0] == (57, 100)  # 400x225 at 1/4
    assert full["img"].shape == reduced["img"].shape
    errors = {}
    for dx, dy in [(0, 0), (0.375, 0), (-0.375, 0), (0, 0.375), (0, -0.375)]:
        err = []
        for n in range(full["img"].shape[1]):
            # full-output pixel -> reduced-output pixel
            m = reduced["lidar2img"][0, n].double() @ torch.linalg.inv(
                full["lidar2img"][0, n].double()
            )
            m = m.numpy()
            # lidar2img = [ida 0; 0 1] @ ...: the 3x3 block is the pixel map, an affine one
            assert np.allclose(m[:, 3], [0, 0, 0, 1], atol=1e-4)
            assert np.allclose(m[2, :3], [0, 0, 1], atol=1e-4)
            affine = m[:2, :3] + np.array([[0, 0, dx], [0, 0, dy]])
            src = reduced["img"][0, n].permute(1, 2, 0).numpy()
            dst = full["img"][0, n].permute(1, 2, 0).numpy()
            warped = cv2.warpAffine(
                src, affine, dst.shape[1::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            )
            err.append(np.abs(warped - dst)[3:-3, 3:-3].mean())
        errors[(dx, dy)] = float(np.mean(err))
    aligned = errors.pop((0, 0))
    assert aligned < 6.0 and aligned < min(errors.values()), (aligned, errors)
    # mono targets: the same objects at the same output pixels (up to the crop's rounding)
    assert sum(len(c) for c in full["mono"]["centers2d"]) >= 5
    for a, b in zip(full["mono"]["centers2d"], reduced["mono"]["centers2d"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1.5)
