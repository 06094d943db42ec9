"""Image and BEV transforms of the BEVFormer v2 data pipeline.

Each transform is a small callable ``results -> results`` registered in
:data:`bevformer.registry.TRANSFORMS`. Unlike the official per-frame pipeline, one call sees
all ``T`` frames of a temporal sample, so an augmentation sampled once (crop/resize/flip, BEV
rotation/scale/flip) is shared by every frame, as the official ``CustomNuScenesDatasetV2``
achieves by copying ``aug_param`` from the current frame into the past frames' pipelines
(BEVFormer ``projects/mmdet3d_plugin/datasets/nuscenes_dataset_v2.py``). Photometric
distortion is drawn independently per image, as officially.

Transforms never modify the arrays they receive: they put new ones into a shallow copy of
``results``. Random transforms draw from ``results["rng"]`` (a ``numpy.random.Generator``) and
are deterministic when ``results["test_mode"]`` is True (no photometric distortion, the test
scale without flip, no BEV augmentation).

The ``results`` dict (T frames, N cameras, M boxes, K mono boxes of one camera)::

    img_paths   list[T][N] str                 image files
    img_sizes   int (T, N, 2)                  (W, H) the info file records, checked on load
    img         list[T][N] float32 (H, W, 3)   BGR until NormalizeMultiViewImage(to_rgb=True)
    ori_shapes  list[T][N] (H, W)              size of each decoded file
    intrinsics  float64 (T, N, 3, 3)           of the augmented image
    cam2lidar   float64 (T, N, 4, 4)           cameras in the current lidar frame
    lidar2img   float64 (T, N, 4, 4)           current lidar frame -> augmented pixels
    ida         float64 (3, 3)                 decode scale + crop/resize, pixel -> pixel
    flip        bool                           image content mirrored (not in ida/lidar2img)
    img_shape   (H, W)                         augmented size before padding
    pad_shape   (H, W)                         after padding
    bda         float64 (4, 4)                 BEV augmentation applied to the GT
    gt_boxes    float64 (M, 9)                 box vector of docs/CONVENTIONS.md
    gt_labels   int64 (M,)
    mono        list[N] of dicts (current frame): boxes2d (K, 4) x1 y1 x2 y2, centers2d (K, 2),
                depths (K,), centers_cam (K, 3), sizes_wlh (K, 3), rotations_cam (K, 4) wxyz,
                velocities_cam (K, 3), speeds (K,) NaN where unknown, labels (K,) int64,
                attr_labels (K,) int64, attributes tuple of K names

Pixel coordinates put pixel centres at integers (OpenCV convention); ``ida`` maps a pixel of
the file to the pixel of the augmented image with exactly the resampling used, so
``K' = ida @ K`` projects a 3D point onto the same image content.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from bevformer.registry import TRANSFORMS
from bevformer.structures.boxes import bev_augment

__all__ = [
    "LoadMultiViewImages",
    "PhotoMetricDistortionMultiViewImage",
    "CropResizeFlipImage",
    "NormalizeMultiViewImage",
    "PadMultiViewImage",
    "pad_image",
    "GlobalRotScaleTransBEV",
    "Compose",
]

Results = dict[str, Any]


def _images(results: Results) -> list[list[np.ndarray]]:
    if "img" not in results:
        raise KeyError(
            "results has no 'img': put LoadMultiViewImages first in the dataset's transforms"
        )
    return results["img"]


def _map_images(results: Results, fn) -> list[list[np.ndarray]]:
    """Apply ``fn(img, t, n)`` to every image of the T x N grid."""
    return [[fn(img, t, n) for n, img in enumerate(row)] for t, row in enumerate(_images(results))]


def _common_shape(imgs: list[list[np.ndarray]]) -> tuple[int, int] | None:
    shapes = {img.shape[:2] for row in imgs for img in row}
    return tuple(shapes.pop()) if len(shapes) == 1 else None


# cv2.imread flags of libjpeg's DCT-domain downscaling by 1, 1/2, 1/4, 1/8.
_DECODE_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}

# A JPEG starts with SOI (FF D8) and ends with EOI (FF D9). Inside the entropy-coded data a
# 0xFF byte is always followed by 0x00 or a restart marker, so EOI near the end marks a
# complete file; a little trailing padding after it is tolerated.
_JPEG_SOI, _JPEG_EOI, _JPEG_TAIL = b"\xff\xd8", b"\xff\xd9", 256


def _truncated_jpeg(data: np.ndarray) -> bool:
    """Whether the bytes ``data`` [n] uint8 are a JPEG without its end-of-image marker.

    OpenCV decodes such a file without an error (it logs "Premature end of JPEG file" and fills
    the missing rows with grey), so the check is made on the bytes before decoding.
    """
    return data[:2].tobytes() == _JPEG_SOI and _JPEG_EOI not in data[-_JPEG_TAIL:].tobytes()


@TRANSFORMS.register_module()
class LoadMultiViewImages:
    """Read every camera image of every frame (BGR, ``float32`` unless ``to_float32=False``).

    A file shared by several slots (a missing past frame repeats a newer one) is read once.
    Errors name the file: missing, a JPEG without its end-of-image marker (truncated: OpenCV
    would decode it with grey rows), not decodable (corrupt), or of another size than the info
    file records (the intrinsics would not match).

    ``decode_min_size = (H, W)`` decodes each JPEG at the smallest libjpeg scale ``1/r``
    (``r`` in 1, 2, 4, 8) that still leaves it at least ``H x W``: set it to the largest image
    :class:`CropResizeFlipImage` produces (``final_size`` times its largest scale) and the
    pipeline computes the same picture from a fraction of the pixels (a 1600x900 file feeding
    320x128 training images is decoded at 400x225, about 3x less loading time). DCT scaling
    maps the pixel ``[r*i, r*i + r)`` block to pixel ``i``, i.e. ``u' + 0.5 = (u + 0.5) / r``;
    intrinsics, ``lidar2img``, ``ida`` and the mono targets are updated by that matrix. Other
    formats, and files whose size the info file does not record, are decoded whole.
    """

    def __init__(
        self, to_float32: bool = True, decode_min_size: tuple[int, int] | None = None
    ) -> None:
        self.to_float32 = to_float32
        if decode_min_size is not None and (len(decode_min_size) != 2 or min(decode_min_size) <= 0):
            raise ValueError(f"decode_min_size must be (H, W) > 0, got {decode_min_size}")
        self.decode_min_size = None if decode_min_size is None else tuple(map(int, decode_min_size))

    def reduction(self, path: str, wh: tuple[int, int] | None) -> int:
        """The decoding scale divisor ``r`` of the file ``path`` of size ``wh`` = (W, H)."""
        if self.decode_min_size is None or wh is None:
            return 1
        if not path.lower().endswith((".jpg", ".jpeg")):
            return 1
        h_min, w_min = self.decode_min_size
        fits = [r for r in _DECODE_FLAGS if wh[0] / r >= w_min and wh[1] / r >= h_min]
        return max(fits, default=1)

    def _read(self, path: str, expected_wh: tuple[int, int] | None, r: int = 1) -> np.ndarray:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"camera image not found: {path}. Expected the file the info file names under "
                "the dataroot; check the dataset's dataroot or regenerate the infos "
                "(tools/create_data.py)."
            )
        data = np.fromfile(path, dtype=np.uint8)
        if _truncated_jpeg(data):
            raise OSError(
                f"camera image {path} ({data.size} bytes) is a truncated JPEG: it has no "
                "end-of-image marker (an interrupted download or copy); re-download or "
                "regenerate it."
            )
        img = cv2.imdecode(data, _DECODE_FLAGS[r])
        if img is None:
            raise OSError(
                f"cannot decode camera image {path} ({os.path.getsize(path)} bytes): the file "
                "exists but is not a readable image (corrupt or truncated); re-download or "
                "regenerate it."
            )
        h, w = img.shape[:2]
        if expected_wh is not None and (w, h) != (-(-expected_wh[0] // r), -(-expected_wh[1] // r)):
            found = f"{w}x{h}" if r == 1 else f"{w}x{h} when decoded at 1/{r}"
            raise ValueError(
                f"camera image {path} is {found} pixels but the info file records "
                f"{expected_wh[0]}x{expected_wh[1]}; the intrinsics would not match the image. "
                "Regenerate the infos for this dataroot (tools/create_data.py)."
            )
        return img.astype(np.float32) if self.to_float32 else img

    def __call__(self, results: Results) -> Results:
        paths = results["img_paths"]
        sizes = results.get("img_sizes")
        cache: dict[str, np.ndarray] = {}
        imgs = []
        reductions = [1] * len(paths[0])  # per camera; a camera keeps one file size
        for t, row in enumerate(paths):
            out_row = []
            for n, path in enumerate(row):
                wh = None if sizes is None else (int(sizes[t][n][0]), int(sizes[t][n][1]))
                r = self.reduction(path, wh)
                if t > 0 and r != reductions[n]:
                    raise ValueError(
                        f"camera {n}: frame {t} file {path} (W, H = {wh}) differs in size from "
                        "frame 0; a camera must keep one image size across frames"
                    )
                reductions[n] = r
                if path not in cache:
                    cache[path] = self._read(path, wh, r)
                out_row.append(cache[path])
            imgs.append(out_row)
        out = dict(results)
        if any(r > 1 for r in reductions):
            ida = np.stack([_scale_matrix(1.0 / r) for r in reductions])
            out.update(_apply_ida(results, ida, [img.shape[1::-1] for img in imgs[0]]))
        out["img"] = imgs
        out["ori_shapes"] = [[img.shape[:2] for img in row] for row in imgs]
        out["img_shape"] = _common_shape(imgs)
        out["pad_shape"] = out["img_shape"]
        return out


@TRANSFORMS.register_module()
class PhotoMetricDistortionMultiViewImage:
    """Random brightness, contrast, saturation, hue and channel swap, per image.

    The steps, ranges and order follow mmdetection's ``PhotoMetricDistortion`` as BEVFormer's
    ``PhotoMetricDistortionMultiViewImage`` uses it (each step applied with probability
    ``prob``; contrast either before the HSV steps or after them): brightness adds
    ``U(-brightness_delta, brightness_delta)``, contrast and saturation multiply by a factor
    from their ranges, hue shifts by ``U(-hue_delta, hue_delta)`` degrees (wrapping on the
    circle). Input is BGR in [0, 255].

    Unlike the official pipeline, values are clipped to [0, 255] (saturation to [0, 1]) after
    each step. The official code leaves them unclipped and later converts with ``np.uint8``
    in ``CropResizeFlipImage``, which wraps out-of-range values around (a bright pixel pushed
    to 260 becomes 4); that wrap-around is a bug and is not reproduced.
    """

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
        prob: float = 0.5,
    ) -> None:
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = float(hue_delta)
        self.prob = float(prob)

    def distort(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One image (H, W, 3) BGR float -> a new distorted image, values in [0, 255]."""
        img = np.clip(np.asarray(img, dtype=np.float32), 0.0, 255.0)
        if rng.random() < self.prob:
            delta = rng.uniform(-self.brightness_delta, self.brightness_delta)
            img = np.clip(img + np.float32(delta), 0.0, 255.0)
        contrast_last = rng.random() < 0.5
        if not contrast_last and rng.random() < self.prob:
            img = np.clip(img * np.float32(rng.uniform(*self.contrast_range)), 0.0, 255.0)
        do_sat = rng.random() < self.prob
        do_hue = rng.random() < self.prob
        if do_sat or do_hue:
            # float32 BGR -> HSV: H in [0, 360) degrees, S in [0, 1], V in the input range.
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            if do_sat:
                factor = np.float32(rng.uniform(*self.saturation_range))
                hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
            if do_hue:
                shift = np.float32(rng.uniform(-self.hue_delta, self.hue_delta))
                hsv[..., 0] = np.mod(hsv[..., 0] + shift, 360.0)
            img = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), 0.0, 255.0)
        if contrast_last and rng.random() < self.prob:
            img = np.clip(img * np.float32(rng.uniform(*self.contrast_range)), 0.0, 255.0)
        if rng.random() < self.prob:
            img = np.ascontiguousarray(img[..., rng.permutation(3)])
        return img

    def __call__(self, results: Results) -> Results:
        if results.get("test_mode", False):
            return results
        rng = results["rng"]
        out = dict(results)
        out["img"] = _map_images(results, lambda img, t, n: self.distort(img, rng))
        return out


def _crop_resize_matrix(
    x0: int, y0: int, crop_wh: tuple[int, int], out_wh: tuple[int, int]
) -> np.ndarray:
    """Pixel -> pixel matrix of cropping ``crop_wh`` at ``(x0, y0)`` and resizing to ``out_wh``
    with pixel centres at integers: ``u' + 0.5 = (u - x0 + 0.5) * out_w / crop_w``."""
    sx = out_wh[0] / crop_wh[0]
    sy = out_wh[1] / crop_wh[1]
    return np.array(
        [[sx, 0.0, 0.5 * (sx - 1.0) - sx * x0], [0.0, sy, 0.5 * (sy - 1.0) - sy * y0], [0, 0, 1]]
    )


def _scale_matrix(s: float) -> np.ndarray:
    """Pixel -> pixel matrix of scaling a whole image by ``s``: ``u' + 0.5 = (u + 0.5) * s``."""
    return np.array([[s, 0.0, 0.5 * (s - 1.0)], [0.0, s, 0.5 * (s - 1.0)], [0, 0, 1]])


def _apply_ida(results: Results, ida: np.ndarray, out_whs: Sequence[tuple[int, int]]) -> Results:
    """The geometry entries of ``results`` after the pixel matrices ``ida`` (N, 3, 3), one per
    camera, shared by every frame; ``out_whs`` are the new image sizes (W, H) per camera."""
    ida4 = np.tile(np.eye(4), (len(ida), 1, 1))
    ida4[:, :3, :3] = ida
    out = {
        "intrinsics": ida[None] @ results["intrinsics"],
        "lidar2img": ida4[None] @ results["lidar2img"],
        "ida": ida[0] @ results.get("ida", np.eye(3)),
    }
    if results.get("mono") is not None:
        out["mono"] = [
            _transform_mono(ann, ida[n], tuple(out_whs[n])) for n, ann in enumerate(results["mono"])
        ]
    return out


def _transform_mono(ann: dict[str, Any], ida: np.ndarray, out_wh: tuple[int, int]) -> dict:
    """Apply the pixel matrix ``ida`` to one camera's mono targets; clip the 2D boxes to the
    output image and drop boxes that end up with no area (fully cropped out)."""
    boxes = np.asarray(ann["boxes2d"], dtype=np.float64).reshape(-1, 4)
    scale = np.array([ida[0, 0], ida[1, 1], ida[0, 0], ida[1, 1]])
    shift = np.array([ida[0, 2], ida[1, 2], ida[0, 2], ida[1, 2]])
    boxes = boxes * scale + shift
    boxes = np.clip(boxes, 0.0, np.array([out_wh[0], out_wh[1], out_wh[0], out_wh[1]]))
    keep = ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
    centers = np.asarray(ann["centers2d"], dtype=np.float64).reshape(-1, 2)
    centers = centers * scale[:2] + shift[:2]
    out = {}
    for key, value in ann.items():
        if key == "boxes2d":
            out[key] = boxes[keep]
        elif key == "centers2d":
            out[key] = centers[keep]
        elif isinstance(value, np.ndarray):
            out[key] = value[keep]
        else:  # tuple of names
            out[key] = tuple(v for v, k in zip(value, keep) if k)
    return out


@TRANSFORMS.register_module()
class CropResizeFlipImage:
    """Crop to the output aspect ratio, resize by a (random) scale, optionally flip.

    ``final_size = (H, W)`` is the output size at scale 1. Each file is first cropped to the
    largest region with the output's aspect ratio that a resize by
    ``base = max(H / h_in, W / w_in)`` maps onto ``(H, W)``; ``crop_anchor = (ax, ay)`` places
    the crop (0 = left/top, 1 = right/bottom of the spare pixels). The crop is then resized to
    ``(round(H * s), round(W * s))``. For a 1600x900 file, ``final_size=(640, 1600)`` and the
    default anchor (centre, bottom) give the official ``crop=(0, 260, 1600, 900)``, then a
    resize by ``s`` (official: ``s = resize / 640`` for ``resize`` from
    ``[512, 544, ..., 768]``, i.e. ``scale_choices=(0.8, 0.85, ..., 1.2)``).

    ``s`` is drawn from ``scale_choices`` when given, else uniformly from ``scale_range``;
    test mode uses ``test_scale``. One ``(s, flip)`` is drawn per sample and shared by every
    camera and frame.

    Intrinsics and ``lidar2img`` are updated by the crop/resize matrix ``ida``; the mono 2D
    boxes and projected centres too (boxes clipped to the image, boxes cropped out entirely
    dropped). A flip (probability ``flip_prob``) mirrors the image only: as in the official
    ``CropResizeFlipImage`` the intrinsics, ``lidar2img`` and mono targets keep describing the
    unflipped image and the model flips its feature maps back (``results["flip"]``).
    """

    def __init__(
        self,
        final_size: tuple[int, int] = (640, 1600),
        scale_range: tuple[float, float] = (1.0, 1.0),
        scale_choices: Sequence[float] | None = None,
        crop_anchor: tuple[float, float] = (0.5, 1.0),
        flip_prob: float = 0.0,
        test_scale: float = 1.0,
    ) -> None:
        if len(final_size) != 2 or min(final_size) <= 0:
            raise ValueError(f"final_size must be (H, W) > 0, got {final_size}")
        if not all(0.0 <= a <= 1.0 for a in crop_anchor):
            raise ValueError(f"crop_anchor must be two fractions in [0, 1], got {crop_anchor}")
        self.final_size = (int(final_size[0]), int(final_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.scale_choices = None if scale_choices is None else tuple(map(float, scale_choices))
        self.crop_anchor = (float(crop_anchor[0]), float(crop_anchor[1]))
        self.flip_prob = float(flip_prob)
        self.test_scale = float(test_scale)

    def sample(self, results: Results) -> tuple[float, bool]:
        """The scale ``s`` and the flip decision for one sample."""
        if results.get("test_mode", False):
            return self.test_scale, False
        rng = results["rng"]
        if self.scale_choices is not None:
            scale = float(self.scale_choices[int(rng.integers(len(self.scale_choices)))])
        else:
            scale = float(rng.uniform(*self.scale_range))
        return scale, bool(rng.random() < self.flip_prob)

    def geometry(
        self, in_hw: tuple[int, int], scale: float
    ) -> tuple[tuple[int, int, int, int], tuple[int, int], np.ndarray]:
        """Crop box ``(x0, y0, x1, y1)``, output ``(W, H)`` and the matrix ``ida`` for a file
        of size ``in_hw`` at scale ``scale``."""
        h_in, w_in = in_hw
        out_h0, out_w0 = self.final_size
        base = max(out_h0 / h_in, out_w0 / w_in)
        crop_w = min(w_in, max(1, round(out_w0 / base)))
        crop_h = min(h_in, max(1, round(out_h0 / base)))
        x0 = round((w_in - crop_w) * self.crop_anchor[0])
        y0 = round((h_in - crop_h) * self.crop_anchor[1])
        out_wh = (max(1, round(out_w0 * scale)), max(1, round(out_h0 * scale)))
        ida = _crop_resize_matrix(x0, y0, (crop_w, crop_h), out_wh)
        return (x0, y0, x0 + crop_w, y0 + crop_h), out_wh, ida

    def __call__(self, results: Results) -> Results:
        scale, flip = self.sample(results)
        imgs = _images(results)
        n_cams = len(imgs[0])
        # One geometry per camera (cameras may differ in size; frames of a camera do not).
        geos = [self.geometry(imgs[0][n].shape[:2], scale) for n in range(n_cams)]

        def warp(img: np.ndarray, t: int, n: int) -> np.ndarray:
            (x0, y0, x1, y1), out_wh, _ = geos[n]
            if img.shape[:2] != imgs[0][n].shape[:2]:
                raise ValueError(
                    f"camera {n}: frame {t} image is {img.shape[1]}x{img.shape[0]} but frame 0 "
                    f"is {imgs[0][n].shape[1]}x{imgs[0][n].shape[0]}; a camera must keep one "
                    "image size across frames"
                )
            crop = img[y0:y1, x0:x1]
            shrink = out_wh[0] < crop.shape[1]
            interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            out = cv2.resize(crop, out_wh, interpolation=interp)
            return np.ascontiguousarray(out[:, ::-1]) if flip else out

        out = dict(results)
        out.update(_apply_ida(results, np.stack([g[2] for g in geos]), [g[1] for g in geos]))
        out["img"] = _map_images(results, warp)
        out["flip"] = flip
        out["img_shape"] = (geos[0][1][1], geos[0][1][0])
        out["pad_shape"] = out["img_shape"]
        return out


@TRANSFORMS.register_module()
class NormalizeMultiViewImage:
    """``(img - mean) / std`` per channel; ``to_rgb`` first swaps BGR to RGB, so ``mean`` and
    ``std`` are in the output channel order (as mmcv ``imnormalize``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.std = np.asarray(std, dtype=np.float32).reshape(3)
        if np.any(self.std <= 0):
            raise ValueError(f"std must be positive, got {list(self.std)}")
        self.to_rgb = bool(to_rgb)

    def __call__(self, results: Results) -> Results:
        def norm(img: np.ndarray, t: int, n: int) -> np.ndarray:
            img = np.asarray(img, dtype=np.float32)
            if self.to_rgb:
                img = img[..., ::-1]
            return np.ascontiguousarray((img - self.mean) / self.std)

        out = dict(results)
        out["img"] = _map_images(results, norm)
        out["img_norm"] = {"mean": self.mean, "std": self.std, "to_rgb": self.to_rgb}
        return out


def pad_image(img: np.ndarray, hw: tuple[int, int], flip: bool, value: float = 0.0) -> np.ndarray:
    """Pad an image ``(H, W, ...)`` to ``hw = (H', W')`` with ``value``.

    Rows go at the bottom; columns at the right, or at the left for a flipped image, so that
    flipping the padded array back puts the content at the top-left where ``lidar2img``
    expects it.
    """
    h, w = img.shape[:2]
    if h > hw[0] or w > hw[1]:
        raise ValueError(f"cannot pad a {h}x{w} image to the smaller size {hw[0]}x{hw[1]}")
    extra_w = hw[1] - w
    cols = (extra_w, 0) if flip else (0, extra_w)
    pads = ((0, hw[0] - h), cols) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pads, mode="constant", constant_values=value)


@TRANSFORMS.register_module()
class PadMultiViewImage:
    """Pad every image to a multiple of ``size_divisor``: bottom rows and right columns
    (official ``PadMultiViewImage``). For a flipped sample the columns go on the left: the
    model flips the whole padded feature map back, which then leaves the padding on the right.
    (The official code pads right in both cases, so after its feature un-flip the padding sits
    on the left and the content is shifted by the pad width relative to ``lidar2img``.)"""

    def __init__(self, size_divisor: int = 32, pad_val: float = 0.0) -> None:
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.size_divisor = int(size_divisor)
        self.pad_val = float(pad_val)

    def __call__(self, results: Results) -> Results:
        imgs = _images(results)
        h = max(img.shape[0] for row in imgs for img in row)
        w = max(img.shape[1] for row in imgs for img in row)
        d = self.size_divisor
        hw = (-(-h // d) * d, -(-w // d) * d)
        flip = bool(results.get("flip", False))
        out = dict(results)
        out["img"] = _map_images(results, lambda img, t, n: pad_image(img, hw, flip, self.pad_val))
        out["pad_shape"] = hw
        return out


@TRANSFORMS.register_module()
class GlobalRotScaleTransBEV:
    """BEV data augmentation of the ground truth only (official ``GlobalRotScaleTransImage``
    with ``only_gt=True, reverse_angle=True``).

    Draws an angle ``theta`` in ``rot_range`` (degrees), a scale in ``scale_range`` and x/y
    flips with probabilities ``flip_dx_prob`` / ``flip_dy_prob``; the GT boxes (centres, sizes,
    headings, velocities) are rotated counter-clockwise by ``theta`` about the lidar z axis,
    scaled, then flipped (x flip: ``x -> -x``; y flip: ``y -> -y``). The 4x4 matrix of the
    applied map, ``bda = flip @ scale @ rot`` (new GT centre = ``bda @`` old centre), is
    recorded in ``results["bda"]``; images, intrinsics and ``lidar2img`` are untouched and the
    model resamples its BEV features with ``inv(bda)`` (the official code stores that inverse
    as its ``bda_mat``). The box arithmetic is :func:`bevformer.structures.boxes.bev_augment`
    (mmdetection3d 0.17 ``LiDARInstance3DBoxes`` semantics). Identity in test mode.
    """

    def __init__(
        self,
        rot_range: tuple[float, float] = (-22.5, 22.5),
        scale_range: tuple[float, float] = (0.95, 1.05),
        flip_dx_prob: float = 0.5,
        flip_dy_prob: float = 0.5,
    ) -> None:
        self.rot_range = (float(rot_range[0]), float(rot_range[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        if self.scale_range[0] <= 0:
            raise ValueError(f"scale_range must be positive, got {scale_range}")
        self.flip_dx_prob = float(flip_dx_prob)
        self.flip_dy_prob = float(flip_dy_prob)

    def __call__(self, results: Results) -> Results:
        if results.get("test_mode", False):
            return results
        rng = results["rng"]
        theta = np.deg2rad(rng.uniform(*self.rot_range))
        scale = float(rng.uniform(*self.scale_range))
        flip_dx = bool(rng.random() < self.flip_dx_prob)
        flip_dy = bool(rng.random() < self.flip_dy_prob)
        boxes = results.get("gt_boxes")
        if boxes is None:
            boxes = np.zeros((0, 9))
        boxes, bda = bev_augment(
            np.asarray(boxes, dtype=np.float64), theta, scale, flip_dx, flip_dy
        )
        out = dict(results)
        out["bda"] = bda @ results.get("bda", np.eye(4))
        out["bda_params"] = {
            "rot_deg": float(np.rad2deg(theta)),
            "scale": scale,
            "flip_dx": flip_dx,
            "flip_dy": flip_dy,
        }
        if results.get("gt_boxes") is not None:
            out["gt_boxes"] = boxes
        return out


class Compose:
    """Apply transforms in order; config dicts are built through ``TRANSFORMS``."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in transforms]
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"a transform must be callable or a config dict, got {t!r}")

    def __call__(self, results: Results) -> Results:
        for t in self.transforms:
            results = t(results)
        return results

    def __repr__(self) -> str:
        return f"Compose({[type(t).__name__ for t in self.transforms]})"
