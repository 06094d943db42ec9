"""Pictures of samples: six camera views with projected 3D boxes beside a bird's-eye view.

Ground truth is drawn in green, predictions in their class colour (score above a threshold).
A line from each box centre to its front face shows the heading; an arrow shows the velocity
(BEV, metres travelled in one second). Range rings are every 10 m. The BEV is the lidar frame
of the sample seen from above: x (right) to the right, y (forward) up.

Optionally a third panel shows the detector's BEV features of the sample, ``mean_c |bev|``
over the channels of the encoder output ``[H, W, C]`` (row h at lidar y = y0 + (h + 0.5) dy,
column w at x = x0 + (w + 0.5) dx, as ``bevformer.models.encoder`` lays out its queries), on
the same scale and orientation as the BEV plot, with the GT boxes on top.
"""

from __future__ import annotations

import json
import os
import os.path as osp
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from bevformer.data.infos import load_infos
from bevformer.structures.boxes import (
    VX,
    VY,
    X,
    Y,
    box_corners,
    boxes_from_global,
)
from bevformer.structures.frames import lidar2img, project_points

__all__ = [
    "CAMERA_GRID",
    "detector_bev_heatmap",
    "draw_bev",
    "draw_bev_heatmap",
    "draw_camera",
    "render_results",
    "render_sample",
]

# Camera layout of the picture: front row, then back row (as nuScenes renders it).
CAMERA_GRID = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
GT_COLOR = (60, 200, 60)  # BGR
CLASS_COLORS = {  # BGR, one per detection class
    "car": (255, 158, 0),
    "truck": (255, 99, 71),
    "construction_vehicle": (233, 150, 70),
    "bus": (255, 69, 0),
    "trailer": (255, 140, 0),
    "barrier": (112, 128, 144),
    "motorcycle": (255, 61, 99),
    "bicycle": (220, 20, 60),
    "pedestrian": (0, 0, 230),
    "traffic_cone": (47, 79, 79),
}
# Edges of the 8 corners in ``box_corners`` order (0-3 front face, 4-7 back face).
_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
)  # fmt: skip


def _color(name: str) -> tuple[int, int, int]:
    r, g, b = CLASS_COLORS.get(name, (200, 200, 200))
    return (b, g, r)


def draw_camera(
    image: np.ndarray,
    boxes: np.ndarray,
    lidar2img_: np.ndarray,
    colors: Sequence[tuple[int, int, int]],
    thickness: int = 2,
) -> np.ndarray:
    """Draw lidar-frame boxes ``[M, 9]`` projected into one camera image (BGR, copied).

    An edge is drawn where both its corners are at least 0.1 m in front of the camera; the
    front face carries a cross so the heading is visible.
    """
    out = image.copy()
    if len(boxes) == 0:
        return out
    corners = box_corners(np.asarray(boxes, dtype=np.float64))  # [M, 8, 3]
    uv, depth = project_points(lidar2img_, corners)  # [M, 8, 2], [M, 8]
    for m in range(len(boxes)):
        front = depth[m] > 0.1
        if not front.any():
            continue
        pts = np.round(uv[m]).astype(np.int64)
        for a, b in (*_EDGES, (0, 2), (1, 3)):
            if front[a] and front[b]:
                p, q = tuple(int(v) for v in pts[a]), tuple(int(v) for v in pts[b])
                cv2.line(out, p, q, colors[m], thickness, cv2.LINE_AA)
    return out


def draw_bev(
    gt: np.ndarray,
    pred: np.ndarray,
    pred_names: Sequence[str],
    size: int = 600,
    extent: float = 55.0,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """A ``size x size`` BGR picture of the BEV within ``±extent`` metres (drawn over
    ``background`` when given)."""
    canvas = np.full((size, size, 3), 255, np.uint8) if background is None else background.copy()
    scale = size / (2 * extent)

    def to_px(xy: np.ndarray) -> np.ndarray:
        # lidar x -> column, lidar y (forward) -> up
        return np.stack([size / 2 + xy[..., 0] * scale, size / 2 - xy[..., 1] * scale], -1)

    centre = (size // 2, size // 2)
    for r in range(10, int(extent) + 1, 10):
        cv2.circle(canvas, centre, int(r * scale), (220, 220, 220), 1, cv2.LINE_AA)
        cv2.putText(
            canvas, f"{r}m", (centre[0] + 3, centre[1] - int(r * scale) + 12),
            cv2.FONT_HERSHEY_SIMPLEX, 0.35, (160, 160, 160), 1, cv2.LINE_AA,
        )  # fmt: skip
    # ego vehicle (lidar frame: forward is +y)
    ego = to_px(np.array([[-0.9, -2.5], [0.9, -2.5], [0.9, 1.5], [-0.9, 1.5]]))
    cv2.fillPoly(canvas, [np.round(ego).astype(np.int32)], (40, 40, 40))

    def draw(boxes: np.ndarray, colors: Sequence[tuple[int, int, int]], width: int) -> None:
        if len(boxes) == 0:
            return
        corners = box_corners(np.asarray(boxes, dtype=np.float64))[:, [0, 1, 5, 4], :2]
        for m, box in enumerate(boxes):
            poly = np.round(to_px(corners[m])).astype(np.int32)
            cv2.polylines(canvas, [poly], True, colors[m], width, cv2.LINE_AA)
            c = to_px(box[[X, Y]])
            front = to_px(corners[m, :2].mean(0))
            cv2.line(canvas, _pt(c), _pt(front), colors[m], width, cv2.LINE_AA)
            v = box[[VX, VY]]
            if np.all(np.isfinite(v)) and np.hypot(*v) > 0.2:
                tip = to_px(box[[X, Y]] + v)
                cv2.arrowedLine(canvas, _pt(c), _pt(tip), colors[m], 1, cv2.LINE_AA, 0, 0.2)

    draw(gt, [GT_COLOR] * len(gt), 2)
    draw(pred, [_color(n) for n in pred_names], 1)
    cv2.putText(canvas, "GT", (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, GT_COLOR, 1, cv2.LINE_AA)
    cv2.putText(
        canvas, "prediction", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 120, 255), 1,
        cv2.LINE_AA,
    )  # fmt: skip
    return canvas


def draw_bev_heatmap(
    heat: np.ndarray,
    pc_range: Sequence[float],
    gt: np.ndarray,
    size: int = 600,
    extent: float = 55.0,
) -> np.ndarray:
    """``heat [H, W]`` (BEV grid rows along lidar y, columns along x) as a colour map on the
    BEV plot's canvas (``±extent`` metres, y up), with the GT boxes drawn over it."""
    heat = np.asarray(heat, dtype=np.float64)
    lo, hi = np.percentile(heat, 1), np.percentile(heat, 99)
    norm = np.clip((heat - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    # row h is lidar y increasing; the picture has y up: flip the rows
    colored = cv2.applyColorMap(np.round(norm[::-1] * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    scale = size / (2 * extent)
    x0, y0, _, x1, y1, _ = (float(v) for v in pc_range)
    left, right = int(round(size / 2 + x0 * scale)), int(round(size / 2 + x1 * scale))
    top, bottom = int(round(size / 2 - y1 * scale)), int(round(size / 2 - y0 * scale))
    canvas = np.full((size, size, 3), 255, np.uint8)
    canvas[top:bottom, left:right] = cv2.resize(
        colored, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST
    )
    picture = draw_bev(gt, np.zeros((0, 9)), [], size=size, extent=extent, background=canvas)
    cv2.putText(
        picture, "BEV features: mean |bev| over channels", (10, size - 12),
        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA,
    )  # fmt: skip
    return picture


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def render_sample(
    info: dict,
    dataroot: str,
    pred_boxes: np.ndarray | None = None,
    pred_names: Sequence[str] = (),
    tile_width: int = 533,
    show_gt: bool = True,
    bev_heat: np.ndarray | None = None,
    pc_range: Sequence[float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
) -> np.ndarray:
    """The picture of one sample: 2x3 camera grid with boxes, the BEV on the right, and the
    BEV feature heat map (``bev_heat [H, W]`` over ``pc_range``) right of it when given."""
    gt = np.asarray(info.get("gt_boxes", []), dtype=np.float64).reshape(-1, 9)
    gt = gt[[n != "ignore" for n in info.get("gt_names", [])]] if len(gt) else gt
    pred = np.zeros((0, 9)) if pred_boxes is None else np.asarray(pred_boxes, np.float64)
    rows = []
    for row in CAMERA_GRID:
        tiles = []
        for cam in row:
            if cam not in info["cams"]:
                raise KeyError(
                    f"sample {info['token']} has no camera {cam!r}; it has {sorted(info['cams'])}"
                )
            c = info["cams"][cam]
            path = osp.join(dataroot, c["data_path"])
            image = cv2.imread(path)
            if image is None:
                raise FileNotFoundError(f"camera image {path} is missing or not an image")
            l2i = lidar2img(np.asarray(c["intrinsics"]), np.asarray(c["cam2lidar"]))
            if show_gt:
                image = draw_camera(image, gt, l2i, [GT_COLOR] * len(gt), 3)
            image = draw_camera(image, pred, l2i, [_color(n) for n in pred_names], 2)
            h = int(round(image.shape[0] * tile_width / image.shape[1]))
            image = cv2.resize(image, (tile_width, h), interpolation=cv2.INTER_AREA)
            cv2.putText(
                image, cam, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2,
                cv2.LINE_AA,
            )  # fmt: skip
            tiles.append(image)
        rows.append(np.concatenate(tiles, 1))
    cams = np.concatenate(rows, 0)
    shown_gt = gt if show_gt else np.zeros((0, 9))
    panels = [cams, draw_bev(shown_gt, pred, pred_names, size=cams.shape[0])]
    if bev_heat is not None:
        panels.append(draw_bev_heatmap(bev_heat, pc_range, shown_gt, size=cams.shape[0]))
    return np.concatenate(panels, 1)


def detector_bev_heatmap(
    cfg: Any, checkpoint: str, dataroot: str, info_file: str
) -> Callable[[str], tuple[np.ndarray, Sequence[float]]]:
    """token -> (``mean_c |bev|`` as ``[H, W]``, pc_range) of the detector of config ``cfg``
    (an mmengine ``Config``) with the weights of ``checkpoint``, on the samples of
    ``info_file`` through the config's test pipeline."""
    import torch

    from bevformer.builder import build_dataset, build_model
    from bevformer.data.collate import collate
    from bevformer.engine.launch import load_model_weights

    model = build_model(cfg.model)
    load_model_weights(model, checkpoint)
    model.eval()
    # ``info_file`` is a path of its own (not relative to the dataroot), and any split may be
    # drawn: the split the test dataset expects does not apply
    dataset_cfg = dict(
        cfg.test_dataloader.dataset,
        info_file=osp.abspath(info_file),
        data_root=dataroot,
        expected_split=None,
    )
    dataset = build_dataset(dataset_cfg)
    index = {dataset.infos[i]["token"]: n for n, i in enumerate(dataset.indices)}
    enc = model.encoder

    def heat(token: str) -> tuple[np.ndarray, Sequence[float]]:
        if token not in index:
            raise KeyError(f"sample {token} is not in {info_file}")
        with torch.no_grad():
            out = model(**collate([dataset[index[token]]]), mode="tensor")
        bev = out["bev_embed"][0]  # [Q, C], Q = H * W row-major
        return bev.abs().mean(-1).reshape(enc.bev_h, enc.bev_w).numpy(), enc.pc_range

    return heat


def _results_by_token(path: str) -> dict[str, list[dict]]:
    with open(path) as f:
        data = json.load(f)
    if "results" not in data:
        raise ValueError(f"{path} is not a nuScenes submission (no 'results' key)")
    return data["results"]


def render_results(
    info_file: str,
    dataroot: str,
    out_dir: str,
    results_file: str | None = None,
    score_thr: float = 0.3,
    max_samples: int | None = None,
    video: str | None = None,
    fps: float = 2.0,
    bev_heatmap: Callable[[str], tuple[np.ndarray, Sequence[float]]] | None = None,
) -> list[str]:
    """Render samples of an info file (with predictions from a submission JSON when given).

    ``bev_heatmap(token) -> (heat [H, W], pc_range)`` adds the BEV feature panel.
    Returns the written PNG paths; with ``video`` ("mp4" or "gif") also one clip per scene.
    """
    _, infos = load_infos(info_file)
    infos = infos[:max_samples] if max_samples else infos
    results = _results_by_token(results_file) if results_file else None
    if results is not None:
        missing = [i["token"] for i in infos if i["token"] not in results]
        if len(missing) == len(infos):
            raise ValueError(
                f"{results_file} has no results for any sample of {info_file}: were they "
                "produced on this split? Pass the info file of the split that was evaluated"
            )
        if missing:
            raise ValueError(
                f"{results_file} lacks {len(missing)} of the {len(infos)} samples to draw "
                f"(e.g. {missing[:3]}); a sample without boxes must still have an empty list. "
                "Regenerate the results with tools/test.py on this split, or draw fewer "
                "samples (--max-samples)"
            )
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []
    by_scene: dict[str, list[str]] = defaultdict(list)
    for info in infos:
        pred, names = None, []
        if results is not None:
            entries = [
                e for e in results.get(info["token"], []) if e["detection_score"] >= score_thr
            ]
            boxes = [
                Box(e["translation"], e["size"], Quaternion(e["rotation"]),
                    velocity=(*e["velocity"], 0.0))
                for e in entries
            ]  # fmt: skip
            names = [e["detection_name"] for e in entries]
            l2e, e2g = np.asarray(info["lidar2ego"]), np.asarray(info["ego2global"])
            pred = boxes_from_global(boxes, l2e, e2g) if boxes else np.zeros((0, 9))
        heat, pc_range = bev_heatmap(info["token"]) if bev_heatmap else (None, None)
        extra = {"bev_heat": heat, "pc_range": pc_range} if heat is not None else {}
        picture = render_sample(info, dataroot, pred, names, **extra)
        path = osp.join(out_dir, f"{info['scene_name']}_{info['frame_idx']:03d}.png")
        cv2.imwrite(path, picture)
        written.append(path)
        by_scene[info["scene_name"]].append(path)
    if video:
        for scene, frames in by_scene.items():
            _write_clip(frames, osp.join(out_dir, f"{scene}.{video}"), fps)
    return written


def _write_clip(frames: Sequence[str], path: str, fps: float) -> None:
    images = [cv2.imread(f) for f in frames]
    if path.endswith(".gif"):
        from PIL import Image

        pil = [Image.fromarray(cv2.cvtColor(im, cv2.COLOR_BGR2RGB)).reduce(2) for im in images]
        pil[0].save(path, save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)
        return
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for im in images:
        writer.write(im)
    writer.release()
