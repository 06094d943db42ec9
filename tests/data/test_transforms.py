"""Image and BEV transforms on hand-made inputs: geometry checked against hand-computed pixels."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from bevformer.data.transforms import (
    Compose,
    CropResizeFlipImage,
    GlobalRotScaleTransBEV,
    LoadMultiViewImages,
    NormalizeMultiViewImage,
    PadMultiViewImage,
    PhotoMetricDistortionMultiViewImage,
    pad_image,
)
from bevformer.registry import TRANSFORMS
from bevformer.structures.boxes import YAW

# A 160x90 camera: f = 100 px, principal point (80, 45); camera frame == lidar frame.
K = np.array([[100.0, 0.0, 80.0], [0.0, 100.0, 45.0], [0.0, 0.0, 1.0]])
POINT = np.array([0.3, 0.2, 2.0])  # projects to u = 100 * 0.15 + 80 = 95, v = 100 * 0.1 + 45 = 55


def _viewpad(k: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = k
    return out


def _project(lidar2img: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = lidar2img @ np.append(p, 1.0)
    return q[:2] / q[2]


def _blob(h: int, w: int, u: float, v: float, sigma: float = 3.0) -> np.ndarray:
    """A Gaussian blob (H, W, 3) centred on pixel coordinates (u, v), pixel centres at integers."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    g = np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma**2)) * 250.0
    return np.repeat(g[..., None], 3, axis=-1).astype(np.float32)


def _centroid(img: np.ndarray) -> np.ndarray:
    g = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    return np.array([(g * xs).sum() / g.sum(), (g * ys).sum() / g.sum()])


def _results(img: np.ndarray, t: int = 1, n: int = 1, **extra) -> dict:
    res = {
        "img": [[img for _ in range(n)] for _ in range(t)],
        "intrinsics": np.tile(K, (t, n, 1, 1)),
        "lidar2img": np.tile(_viewpad(K), (t, n, 1, 1)),
        "rng": np.random.default_rng(0),
        "test_mode": False,
    }
    res.update(extra)
    return res


def test_official_crop_geometry_for_nuscenes_images():
    crf = CropResizeFlipImage(final_size=(640, 1600))
    crop, out_wh, ida = crf.geometry((900, 1600), 1.0)
    assert crop == (0, 260, 1600, 900)  # official crop=(0, 260, 1600, 900): bottom 640 rows
    assert out_wh == (1600, 640)
    np.testing.assert_allclose(ida, [[1, 0, 0], [0, 1, -260], [0, 0, 1]])
    _, out_wh, _ = crf.geometry((900, 1600), 0.8)  # official resize 512
    assert out_wh == (1280, 512)


def test_crop_resize_updates_intrinsics_to_follow_image_content():
    # Crop the bottom 64 rows of 160x90 (y0 = 26), then scale 0.5 -> 80x32. With pixel centres
    # at integers: u' = 0.5 (u + 0.5) - 0.5 = 0.5 u - 0.25, v' = 0.5 (v - 26 + 0.5) - 0.5.
    img = _blob(90, 160, 95.0, 55.0)
    crf = CropResizeFlipImage(final_size=(64, 160), scale_range=(0.5, 0.5))
    out = crf(_results(img, t=2, n=3))
    assert out["img"][1][2].shape == (32, 80, 3)
    assert out["img_shape"] == (32, 80) and out["flip"] is False
    expected = np.array([47.25, 14.25])
    np.testing.assert_allclose(_project(out["lidar2img"][1, 2], POINT), expected, atol=1e-9)
    np.testing.assert_allclose(_project(_viewpad(out["intrinsics"][0, 1]), POINT), expected)
    np.testing.assert_allclose(_centroid(out["img"][0][0]), expected, atol=0.05)


def test_upscale_keeps_projection_on_content():
    # scale 2: u' = 2 (u + 0.5) - 0.5 = 190.5, v' = 2 (55 - 26 + 0.5) - 0.5 = 58.5
    img = _blob(90, 160, 95.0, 55.0)
    out = CropResizeFlipImage(final_size=(64, 160), scale_range=(2.0, 2.0))(_results(img))
    assert out["img"][0][0].shape == (128, 320, 3)
    np.testing.assert_allclose(_project(out["lidar2img"][0, 0], POINT), [190.5, 58.5])
    np.testing.assert_allclose(_centroid(out["img"][0][0]), [190.5, 58.5], atol=0.05)


def test_flip_mirrors_image_but_not_intrinsics():
    img = _blob(90, 160, 95.0, 55.0)
    crf = CropResizeFlipImage(final_size=(64, 160), scale_range=(0.5, 0.5), flip_prob=1.0)
    out = crf(_results(img))
    assert out["flip"] is True
    # official semantics: intrinsics describe the unflipped image
    np.testing.assert_allclose(_project(out["lidar2img"][0, 0], POINT), [47.25, 14.25])
    # the content sits at the mirrored column W - 1 - u' = 79 - 47.25
    np.testing.assert_allclose(_centroid(out["img"][0][0]), [79 - 47.25, 14.25], atol=0.05)


def test_crop_resize_shared_across_frames_and_test_mode_is_deterministic():
    img = _blob(90, 160, 95.0, 55.0)
    crf = CropResizeFlipImage(
        final_size=(64, 160), scale_choices=(0.5, 0.75, 1.0), flip_prob=0.5, test_scale=0.75
    )
    for seed in range(5):
        out = crf(_results(img, t=3, n=2, rng=np.random.default_rng(seed)))
        shapes = {im.shape for row in out["img"] for im in row}
        assert len(shapes) == 1  # one scale for every frame and camera
        assert np.allclose(out["intrinsics"], out["intrinsics"][0, 0])
    out = crf(_results(img, test_mode=True, rng=None))
    assert out["img_shape"] == (48, 120) and out["flip"] is False


def test_mono_boxes_follow_crop_and_are_clipped_or_dropped():
    mono = {
        "boxes2d": np.array([[10.0, 40.0, 30.0, 60.0], [0.0, 0.0, 50.0, 20.0], [150, 80, 170, 89]]),
        "centers2d": np.array([[20.0, 50.0], [25.0, 10.0], [160.0, 85.0]]),
        "depths": np.array([5.0, 6.0, 7.0]),
        "labels": np.array([0, 1, 2]),
        "attributes": ("vehicle.moving", "", "cycle.with_rider"),
    }
    crf = CropResizeFlipImage(final_size=(64, 160), scale_range=(1.0, 1.0))
    out = crf(_results(np.zeros((90, 160, 3), np.float32), mono=[mono]))["mono"][0]
    # box 1 lies in rows 0..20, above the crop (y0 = 26): dropped; scale 1 -> shift by -26 rows
    np.testing.assert_allclose(out["boxes2d"], [[10, 14, 30, 34], [150, 54, 160, 63]])
    np.testing.assert_allclose(out["centers2d"], [[20, 24], [160, 59]])  # centres not clipped
    np.testing.assert_array_equal(out["labels"], [0, 2])
    np.testing.assert_allclose(out["depths"], [5.0, 7.0])
    assert out["attributes"] == ("vehicle.moving", "cycle.with_rider")
    assert len(mono["depths"]) == 3  # input untouched


def test_pad_to_multiple_of_32_right_bottom_and_left_when_flipped():
    img = np.ones((50, 70, 3), np.float32)
    out = PadMultiViewImage(size_divisor=32)(_results(img))
    padded = out["img"][0][0]
    assert padded.shape == (64, 96, 3) and out["pad_shape"] == (64, 96)
    assert padded[:50, :70].min() == 1 and padded[50:].max() == 0 and padded[:, 70:].max() == 0
    flipped = PadMultiViewImage(size_divisor=32)(_results(img, flip=True))["img"][0][0]
    assert flipped[:50, 26:].min() == 1 and flipped[:, :26].max() == 0
    # flipping the padded image back puts the content at the top-left again
    np.testing.assert_array_equal(flipped[:, ::-1], padded)
    with pytest.raises(ValueError, match="smaller"):
        pad_image(img, (32, 32), flip=False)


def test_normalize_bgr_to_rgb():
    img = np.zeros((2, 3, 3), np.float32)
    img[...] = [10.0, 20.0, 30.0]  # B, G, R
    norm = NormalizeMultiViewImage(mean=[1.0, 2.0, 3.0], std=[2.0, 2.0, 2.0], to_rgb=True)
    out = norm(_results(img))["img"][0][0]
    np.testing.assert_allclose(out[1, 2], [(30 - 1) / 2, (20 - 2) / 2, (10 - 3) / 2])
    keep = NormalizeMultiViewImage(mean=[1.0, 2.0, 3.0], std=[2.0, 2.0, 2.0], to_rgb=False)
    np.testing.assert_allclose(keep(_results(img))["img"][0][0][0, 0], [4.5, 9.0, 13.5])


def test_photometric_clips_instead_of_wrapping():
    white = np.full((4, 4, 3), 250.0, np.float32)
    pmd = PhotoMetricDistortionMultiViewImage(
        brightness_delta=100.0, contrast_range=(1.5, 2.0), prob=1.0
    )
    for seed in range(10):
        out = pmd.distort(white, np.random.default_rng(seed))
        assert out.min() >= 0.0 and out.max() <= 255.0
        # brightness + contrast >= 1.5 push every value over 255 unless the brightness shift is
        # very negative; a wrap-around (np.uint8 of 300 = 44) would give small values
        assert out.max() > 100.0
    assert white.max() == 250.0  # input untouched


def test_photometric_identity_ranges_keep_pixels_up_to_channel_order():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (5, 6, 3)).astype(np.float32)
    pmd = PhotoMetricDistortionMultiViewImage(
        brightness_delta=0.0,
        contrast_range=(1.0, 1.0),
        saturation_range=(1.0, 1.0),
        hue_delta=0.0,
        prob=1.0,
    )
    out = pmd.distort(img, np.random.default_rng(3))
    np.testing.assert_allclose(np.sort(out, axis=-1), np.sort(img, axis=-1), atol=1e-3)


def test_photometric_draws_per_image_and_skips_in_test_mode():
    img = np.full((4, 4, 3), 100.0, np.float32)
    pmd = PhotoMetricDistortionMultiViewImage(prob=1.0)
    out = pmd(_results(img, t=2, n=3, rng=np.random.default_rng(1)))
    flat = [im for row in out["img"] for im in row]
    assert len({float(im.mean()) for im in flat}) == 6  # independent draws
    same = pmd(_results(img, t=2, n=3, test_mode=True))
    assert all(im is img for row in same["img"] for im in row)


def _boxes() -> np.ndarray:
    # x, y, z, w, l, h, yaw, vx, vy
    return np.array(
        [
            [10.0, 0.0, -1.0, 2.0, 4.0, 1.5, 0.3, 1.0, 0.0],
            [-5.0, 20.0, 0.5, 0.6, 0.8, 1.7, -2.0, 0.0, -2.0],
        ]
    )


def test_bda_rotation_by_90_degrees_by_hand():
    bda_t = GlobalRotScaleTransBEV(
        rot_range=(90.0, 90.0), scale_range=(1.0, 1.0), flip_dx_prob=0.0, flip_dy_prob=0.0
    )
    res = _results(np.zeros((4, 4, 3), np.float32), gt_boxes=_boxes())
    out = bda_t(res)
    # counter-clockwise by 90 degrees: (10, 0) -> (0, 10), velocity (1, 0) -> (0, 1),
    # heading yaw_nus + 90 deg, i.e. YAW - pi/2 (box-vector convention)
    np.testing.assert_allclose(out["gt_boxes"][0, :3], [0.0, 10.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(out["gt_boxes"][0, 7:], [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(out["gt_boxes"][1, :2], [-20.0, -5.0], atol=1e-12)
    assert math.isclose(out["gt_boxes"][0, YAW], 0.3 - math.pi / 2, abs_tol=1e-12)
    np.testing.assert_allclose(out["gt_boxes"][:, 3:6], _boxes()[:, 3:6])
    np.testing.assert_allclose(out["bda"][:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    # images and cameras untouched (only_gt semantics)
    assert out["img"] is res["img"] and out["lidar2img"] is res["lidar2img"]


def test_bda_scale_and_flips_by_hand():
    bda_t = GlobalRotScaleTransBEV(
        rot_range=(0.0, 0.0), scale_range=(1.05, 1.05), flip_dx_prob=1.0, flip_dy_prob=1.0
    )
    out = bda_t(_results(np.zeros((4, 4, 3), np.float32), gt_boxes=_boxes()))
    b = out["gt_boxes"][0]
    np.testing.assert_allclose(b[:3], [-10.5, 0.0, -1.05], atol=1e-12)
    np.testing.assert_allclose(b[3:6], [2.1, 4.2, 1.575])
    np.testing.assert_allclose(b[7:], [-1.05, 0.0], atol=1e-12)
    # x flip: YAW -> -YAW, then y flip: YAW -> pi - YAW  => pi + 0.3 (mod 2 pi)
    assert math.isclose(math.cos(b[YAW]), math.cos(math.pi + 0.3), abs_tol=1e-12)
    assert math.isclose(math.sin(b[YAW]), math.sin(math.pi + 0.3), abs_tol=1e-12)


def test_bda_matrix_maps_old_centres_to_new_ones():
    boxes = _boxes()
    bda_t = GlobalRotScaleTransBEV()
    for seed in range(8):
        res = _results(np.zeros((4, 4, 3), np.float32), gt_boxes=boxes)
        res["rng"] = np.random.default_rng(seed)
        out = bda_t(res)
        bda = out["bda"]
        new = (bda @ np.c_[boxes[:, :3], np.ones(2)].T).T[:, :3]
        np.testing.assert_allclose(out["gt_boxes"][:, :3], new, atol=1e-9)
        np.testing.assert_allclose(out["gt_boxes"][:, 7:], boxes[:, 7:] @ bda[:2, :2].T, atol=1e-9)
    identity = bda_t(_results(np.zeros((4, 4, 3), np.float32), gt_boxes=boxes, test_mode=True))
    assert "bda" not in identity and identity["gt_boxes"] is boxes


def test_load_images_errors_name_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), np.full((6, 8, 3), 77, np.uint8))
    res = {"img_paths": [[str(good), str(good)]], "img_sizes": np.array([[[8, 6], [8, 6]]])}
    out = LoadMultiViewImages()(res)
    assert out["img"][0][0].shape == (6, 8, 3) and out["img"][0][0].dtype == np.float32
    assert out["img"][0][0] is out["img"][0][1]  # read once
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        LoadMultiViewImages()({"img_paths": [[str(missing)]]})
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\x00\x01garbage" * 20)
    with pytest.raises(OSError, match="corrupt.jpg"):
        LoadMultiViewImages()({"img_paths": [[str(corrupt)]]})
    with pytest.raises(ValueError, match="8x6 pixels but the info file records 16x9"):
        LoadMultiViewImages()({"img_paths": [[str(good)]], "img_sizes": np.array([[[16, 9]]])})


@pytest.mark.parametrize("decode_min_size", [None, (40, 64)], ids=["whole", "reduced"])
def test_truncated_jpeg_is_refused_naming_the_file(tmp_path, decode_min_size):
    """OpenCV decodes a truncated JPEG with grey rows and no error; the loader must refuse it."""
    rng = np.random.default_rng(0)
    full = tmp_path / "full.jpg"
    cv2.imwrite(str(full), rng.integers(0, 255, (90, 160, 3), dtype=np.uint8))
    data = full.read_bytes()
    assert data.endswith(b"\xff\xd9")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert cv2.imread(str(cut)) is not None  # what OpenCV alone would accept
    load = LoadMultiViewImages(decode_min_size=decode_min_size)
    sizes = np.array([[[160, 90]]])
    with pytest.raises(OSError, match=r"cut\.jpg .* is a truncated JPEG"):
        load({"img_paths": [[str(cut)]], "img_sizes": sizes})
    padded = tmp_path / "padded.jpg"  # bytes after the end marker are tolerated
    padded.write_bytes(data + b"\x00" * 16)
    load = LoadMultiViewImages()
    out = load({"img_paths": [[str(padded)]], "img_sizes": sizes})
    expected = load({"img_paths": [[str(full)]], "img_sizes": sizes})
    np.testing.assert_array_equal(out["img"][0][0], expected["img"][0][0])


def test_transforms_build_from_config_dicts():
    pipeline = Compose(
        [
            dict(type="CropResizeFlipImage", final_size=(64, 160), scale_range=(0.5, 0.5)),
            dict(type="NormalizeMultiViewImage", mean=[0, 0, 0], std=[1, 1, 1]),
            dict(type="PadMultiViewImage", size_divisor=32),
        ]
    )
    out = pipeline(_results(_blob(90, 160, 95.0, 55.0)))
    assert out["img"][0][0].shape == (32, 96, 3)
    assert out["img_shape"] == (32, 80) and out["pad_shape"] == (32, 96)
    assert "GlobalRotScaleTransBEV" in TRANSFORMS.module_dict


def test_reduced_decoding_picks_the_smallest_scale_that_covers_the_output(tmp_path):
    load = LoadMultiViewImages(decode_min_size=(141, 352))  # 128x320 at scale 1.1
    assert load.reduction("a.jpg", (1600, 900)) == 4  # 400x225 covers 352x141; 200x113 not
    assert load.reduction("a.JPEG", (800, 450)) == 2
    assert load.reduction("a.jpg", (400, 225)) == 1  # never below the output size
    assert load.reduction("a.png", (1600, 900)) == 1  # libjpeg scaling only
    assert load.reduction("a.jpg", None) == 1  # size unknown
    assert LoadMultiViewImages().reduction("a.jpg", (1600, 900)) == 1
    with pytest.raises(ValueError, match="decode_min_size"):
        LoadMultiViewImages(decode_min_size=(0, 10))
    # an odd file size decodes to the rounded-up size and is checked against it
    path = tmp_path / "odd.jpg"
    cv2.imwrite(str(path), np.full((45, 81, 3), 90, np.uint8))
    res = {
        "img_paths": [[str(path)]],
        "img_sizes": np.array([[[81, 45]]]),
        "intrinsics": np.eye(3)[None, None].copy(),
        "lidar2img": np.eye(4)[None, None].copy(),
    }
    out = LoadMultiViewImages(decode_min_size=(10, 20))(res)
    assert out["img"][0][0].shape == (12, 21, 3) and out["ori_shapes"] == [[(12, 21)]]
    # pixel centre u -> (u + 0.5) / 4 - 0.5
    np.testing.assert_allclose(out["ida"], [[0.25, 0, -0.375], [0, 0.25, -0.375], [0, 0, 1]])
    np.testing.assert_allclose(out["lidar2img"][0, 0, :3, :3], out["ida"])
    bad = dict(res, img_sizes=np.array([[[160, 90]]]))
    with pytest.raises(ValueError, match="when decoded at 1/8 .* records 160x90"):
        LoadMultiViewImages(decode_min_size=(10, 20))(bad)
