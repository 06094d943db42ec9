"""Pictures of samples: six camera views with projected 3D boxes beside the BEV panel.

One picture per sample (``SCENE_FRAME.png``): a 2x3 grid of the cameras (front row, back
row, as nuScenes renders it), the BEV panel of :mod:`bevformer.visualization.draw`, optionally
the detector's BEV feature heat map, and a legend strip below: scene, frame counter and time,
what is drawn, the class colours, the score threshold and how many predictions pass it.

The heat map is ``mean_c |bev|`` over the channels of the encoder output ``[H, W, C]`` (row h
at lidar y = y0 + (h + 0.5) dy, column w at x = x0 + (w + 0.5) dx, as
``bevformer.models.encoder`` lays out its queries), on the BEV panel's scale and orientation.

Predictions come from a nuScenes submission JSON (global frame) and are moved into the
lidar frame of each sample. The score threshold is a number or ``"auto"``: per sample the
lower of :data:`AUTO_THRESHOLD` and the best score of the sample, so that a weak model still
shows its best boxes (the legend says which threshold was used).
"""

from __future__ import annotations

import json
import os
import os.path as osp
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from bevformer.data.infos import load_infos
from bevformer.structures.boxes import boxes_from_global
from bevformer.structures.frames import invert, lidar2img
from bevformer.structures.grid import NUSCENES_PC_RANGE
from bevformer.visualization.draw import (
    PAST_COLOR,
    POINT_COLOR,
    Primitive,
    class_legend_items,
    draw_bev,
    draw_bev_heatmap,
    draw_camera,
    draw_legend,
    put_label,
)

__all__ = [
    "AUTO_THRESHOLD",
    "CAMERA_GRID",
    "SampleView",
    "camera_tiles",
    "detector_bev_heatmap",
    "ego_trajectory",
    "load_lidar_points",
    "parse_score_threshold",
    "render_results",
    "render_sample",
    "sample_view",
    "select_infos",
]

CAMERA_GRID = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
AUTO_THRESHOLD = 0.3  # "auto": min(this, best score of the sample)
LIDAR_DIMS = 5  # nuScenes .pcd.bin: float32 x, y, z, intensity, ring index


@dataclass
class SampleView:
    """What one picture of a sample shows (boxes ``[M, 9]`` in its lidar frame)."""

    info: dict
    gt: np.ndarray
    gt_names: list[str]
    pred: np.ndarray | None = None  # None: no results file (ground truth only)
    pred_names: list[str] = field(default_factory=list)
    pred_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    score_thr: float = AUTO_THRESHOLD
    auto: bool = False
    num_total: int = 0  # predictions of the sample before the threshold
    max_score: float | None = None
    points: np.ndarray | None = None
    trajectory: tuple[np.ndarray, int] | None = None
    frame: tuple[int, int] = (0, 1)  # (index in the scene, scene length)
    t0: int = 0  # timestamp of the scene's first sample, microseconds

    @property
    def pred_labels(self) -> list[str]:
        return [f"{n} {s:.2f}" for n, s in zip(self.pred_names, self.pred_scores)]

    def note(self) -> str:
        """The line on predictions above the threshold."""
        if self.pred is None:
            return "ground truth only (no results file)"
        best = "none" if self.max_score is None else f"{self.max_score:.2f}"
        if len(self.pred) == 0:
            return (
                f"none above threshold {self.score_thr:.2f} (0 of {self.num_total} predictions; "
                f"max score {best})"
            )
        return (
            f"{len(self.pred)} of {self.num_total} predictions above threshold "
            f"{self.score_thr:.2f} (max score {best})"
        )

    def title(self) -> str:
        info = self.info
        k, n = self.frame
        dt = (info["timestamp"] - self.t0) / 1e6
        return (
            f"{info['scene_name']}  frame {k + 1}/{n}  t = {dt:+.2f} s  "
            f"(timestamp {info['timestamp']})  sample {info['token']}"
        )


def load_lidar_points(info: dict, dataroot: str) -> np.ndarray | None:
    """The LIDAR_TOP points ``[P, 5]`` (float32 x, y, z in metres in the lidar frame,
    intensity, ring) of a sample, or None when the dataroot lacks its file."""
    path = osp.join(dataroot, info.get("lidar_path", ""))
    if not info.get("lidar_path") or not osp.isfile(path):
        return None
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % LIDAR_DIMS:
        raise ValueError(
            f"{path} holds {raw.size} float32 values, not a multiple of {LIDAR_DIMS}: expected "
            "a nuScenes .pcd.bin (x, y, z, intensity, ring per point)"
        )
    return raw.reshape(-1, LIDAR_DIMS)


def ego_trajectory(scene_infos: Sequence[dict], index: int) -> np.ndarray:
    """Ego positions ``[T, 2]`` (x, y in metres) of a scene's samples in the lidar frame of
    sample ``index`` (``global -> ego -> lidar`` through its ``ego2global`` and
    ``lidar2ego``)."""
    cur = scene_infos[index]
    global2lidar = invert(np.asarray(cur["ego2global"]) @ np.asarray(cur["lidar2ego"]))
    pos = np.array([np.asarray(i["ego2global"])[:3, 3] for i in scene_infos])  # [T, 3]
    return (pos @ global2lidar[:3, :3].T + global2lidar[:3, 3])[:, :2]


def parse_score_threshold(text: str) -> float | str:
    """A ``--score-thr`` value: a number in [0, 1] or ``"auto"`` (command-line type; raises
    ``argparse.ArgumentTypeError``)."""
    import argparse

    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a score threshold lies in [0, 1], got {value}")
    return value


def select_infos(
    infos: Sequence[dict],
    scenes: Sequence[str] | None = None,
    samples: Sequence[str] | None = None,
    max_samples: int | None = None,
) -> list[dict]:
    """The infos of the given scene names and/or sample tokens (all when both are None), in
    file order, at most ``max_samples``. Raises KeyError for a name or token not in ``infos``."""
    chosen = list(infos)
    if scenes:
        known = sorted({i["scene_name"] for i in infos})
        unknown = [s for s in scenes if s not in known]
        if unknown:
            raise KeyError(f"scene(s) {unknown} are not in the info file; it has {known}")
        chosen = [i for i in chosen if i["scene_name"] in scenes]
    if samples:
        tokens = {i["token"] for i in infos}
        unknown = [t for t in samples if t not in tokens]
        if unknown:
            raise KeyError(
                f"sample token(s) {unknown} are not in the info file (it has {len(tokens)} "
                "samples); take a token from its 'token' fields or from the results file"
            )
        chosen = [i for i in chosen if i["token"] in samples]
    return chosen[:max_samples] if max_samples else chosen


def _ground_truth(info: dict) -> tuple[np.ndarray, list[str]]:
    gt = np.asarray(info.get("gt_boxes", []), dtype=np.float64).reshape(-1, 9)
    names = list(info.get("gt_names", []))
    keep = [n != "ignore" for n in names]
    return gt[keep], [n for n, k in zip(names, keep) if k]


def sample_view(
    info: dict,
    entries: Sequence[dict] | None,
    score_thr: float | str = AUTO_THRESHOLD,
) -> SampleView:
    """The boxes one picture of ``info`` shows: its GT and the ``entries`` of a submission
    (global frame; None: GT only) at or above ``score_thr`` (a number or ``"auto"``) moved
    into the sample's lidar frame."""
    gt, gt_names = _ground_truth(info)
    view = SampleView(info, gt, gt_names)
    if entries is None:
        return view
    scores = np.array([e["detection_score"] for e in entries], dtype=np.float64)
    view.num_total = len(entries)
    view.max_score = float(scores.max()) if len(scores) else None
    if score_thr == "auto":
        view.auto = True
        view.score_thr = min(AUTO_THRESHOLD, view.max_score or AUTO_THRESHOLD)
    else:
        view.score_thr = float(score_thr)
    kept = sorted(
        (e for e in entries if e["detection_score"] >= view.score_thr),
        key=lambda e: e["detection_score"],
    )  # weakest first: the best boxes are drawn last, on top
    boxes = [
        Box(e["translation"], e["size"], Quaternion(e["rotation"]),
            velocity=(*e["velocity"], 0.0))
        for e in kept
    ]  # fmt: skip
    l2e, e2g = np.asarray(info["lidar2ego"]), np.asarray(info["ego2global"])
    view.pred = boxes_from_global(boxes, l2e, e2g) if boxes else np.zeros((0, 9))
    view.pred_names = [e["detection_name"] for e in kept]
    view.pred_scores = np.array([e["detection_score"] for e in kept], dtype=np.float64)
    return view


def camera_tiles(
    view: SampleView,
    dataroot: str,
    tile_width: int = 533,
    show_gt: bool = True,
    camera_labels: bool = True,
    primitives: list[Primitive] | None = None,
) -> dict[str, np.ndarray]:
    """Camera name -> its image resized to ``tile_width`` with the boxes drawn at that size
    (GT thin, predictions thick and, with ``camera_labels``, labelled with class and score)."""
    info = view.info
    tiles = {}
    for cam in (c for row in CAMERA_GRID for c in row):
        if cam not in info["cams"]:
            raise KeyError(
                f"sample {info['token']} has no camera {cam!r}; it has {sorted(info['cams'])}"
            )
        c = info["cams"][cam]
        path = osp.join(dataroot, c["data_path"])
        image = cv2.imread(path)
        if image is None:
            raise FileNotFoundError(f"camera image {path} is missing or not an image")
        s = tile_width / image.shape[1]
        image = cv2.resize(
            image, (tile_width, int(round(image.shape[0] * s))), interpolation=cv2.INTER_AREA
        )
        # project straight into the tile: pixels scale by s, depth does not
        l2i = np.diag([s, s, 1.0, 1.0]) @ lidar2img(
            np.asarray(c["intrinsics"]), np.asarray(c["cam2lidar"])
        )
        if show_gt:
            image = draw_camera(image, view.gt, l2i, view.gt_names, 1, None, "gt", cam, primitives)
        if view.pred is not None:
            labels = view.pred_labels if camera_labels else None
            image = draw_camera(
                image, view.pred, l2i, view.pred_names, 2, labels, "pred", cam, primitives
            )
        rect = put_label(image, cam, (4, 4), (0, 0, 0), scale=0.5)
        if primitives is not None:
            primitives.append(Primitive("caption", cam, cam, (0, 0, 0), rect[:2], rect))
        tiles[cam] = image
    return tiles


def _legend_rows(view: SampleView) -> list[list[tuple[str, str, tuple[int, int, int] | None]]]:
    thr = f"score >= {view.score_thr:.2f}"
    if view.auto:
        thr += f" (auto: min({AUTO_THRESHOLD}, best score of the sample))"
    drawn = [("legend", "thin: ground truth", None)]
    if view.pred is not None:
        drawn.append(("legend", f"thick: predictions, {thr}, labelled class score", None))
    if view.points is not None:
        drawn.append(("legend", "lidar points (light: ground)", POINT_COLOR))
    if view.trajectory is not None:
        drawn.append(("legend", "ego path (line: past, dots: future)", PAST_COLOR))
    return [
        [("title", view.title(), None)],
        drawn + class_legend_items(),
        [("note", view.note(), None)],
    ]


def render_sample(
    view: SampleView,
    dataroot: str,
    tile_width: int = 533,
    show_gt: bool = True,
    camera_labels: bool = True,
    bev_heat: np.ndarray | None = None,
    pc_range: Sequence[float] = NUSCENES_PC_RANGE,
    primitives: list[Primitive] | None = None,
    tiles: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The picture of one sample (BGR): the 2x3 camera grid, the BEV panel on its right, the
    heat map ``bev_heat [H, W]`` (over ``pc_range``) right of it when given, and the legend
    strip below. ``primitives`` receives what was drawn, in the picture's pixels; ``tiles``
    (from :func:`camera_tiles`) skips drawing the cameras again."""
    cam_prims: list[Primitive] = []
    if tiles is None:
        tiles = camera_tiles(view, dataroot, tile_width, show_gt, camera_labels, cam_prims)
    rows, y = [], 0
    for row in CAMERA_GRID:
        x = 0
        for cam in row:
            for p in cam_prims:
                if p.panel == cam:
                    p_shift = p.shifted(x, y)
                    if primitives is not None:
                        primitives.append(p_shift)
            x += tiles[cam].shape[1]
        rows.append(np.concatenate([tiles[c] for c in row], 1))
        y += rows[-1].shape[0]
    cams = np.concatenate(rows, 0)
    size = cams.shape[0]
    gt, gt_names = (view.gt, view.gt_names) if show_gt else (np.zeros((0, 9)), [])
    pred = np.zeros((0, 9)) if view.pred is None else view.pred
    bev_prims: list[Primitive] = []
    bev = draw_bev(
        gt, gt_names, pred, view.pred_names, view.pred_labels,
        size=size,
        points=view.points, trajectory=view.trajectory, primitives=bev_prims,
    )  # fmt: skip
    panels = [cams, bev]
    offsets = {"bev": cams.shape[1]}
    if bev_heat is not None:
        panels.append(
            draw_bev_heatmap(bev_heat, pc_range, gt, gt_names, size=size, primitives=bev_prims)
        )
        offsets["heatmap"] = cams.shape[1] + size
    top = np.concatenate(panels, 1)
    legend_prims: list[Primitive] = []
    legend = draw_legend(top.shape[1], _legend_rows(view), legend_prims)
    if primitives is not None:
        primitives.extend(p.shifted(offsets[p.panel], 0) for p in bev_prims)
        primitives.extend(p.shifted(0, top.shape[0]) for p in legend_prims)
    return np.concatenate([top, legend], 0)


def detector_bev_heatmap(
    cfg: Any, checkpoint: str, dataroot: str, info_file: str
) -> Callable[[str], tuple[np.ndarray, Sequence[float]]]:
    """token -> (``mean_c |bev|`` as ``[H, W]``, pc_range) of the detector of config ``cfg``
    (an mmengine ``Config``) with the weights of ``checkpoint``, on the samples of
    ``info_file`` through the config's test pipeline."""
    import torch

    from bevformer.builder import build_dataset, build_model
    from bevformer.checkpoint import load_model_weights
    from bevformer.data.collate import collate

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
    grid = model.grid

    def heat(token: str) -> tuple[np.ndarray, Sequence[float]]:
        if token not in index:
            raise KeyError(f"sample {token} is not in {info_file}")
        with torch.no_grad():
            out = model(**collate([dataset[index[token]]]), mode="tensor")
        bev = out["bev_embed"][0]  # [Q, C], Q = H * W row-major
        return bev.abs().mean(-1).reshape(grid.shape).numpy(), grid.pc_range

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
    score_thr: float | str = AUTO_THRESHOLD,
    max_samples: int | None = None,
    video: str | None = None,
    fps: float = 2.0,
    bev_heatmap: Callable[[str], tuple[np.ndarray, Sequence[float]]] | None = None,
    scenes: Sequence[str] | None = None,
    samples: Sequence[str] | None = None,
    rerun_file: str | None = None,
    tile_width: int = 533,
    camera_labels: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[str]:
    """Render samples of an info file (with predictions from a submission JSON when given).

    Draws the samples :func:`select_infos` picks (``scenes``, ``samples``, ``max_samples``),
    predictions at ``score_thr`` (a number or ``"auto"``). ``bev_heatmap(token) -> (heat
    [H, W], pc_range)`` adds the BEV feature panel. Returns the written PNG paths; with
    ``video`` ("mp4": H.264, or "gif") also one clip per scene, and with ``rerun_file`` a
    Rerun recording of the drawn samples. ``log`` receives one summary line (None: silent).
    """
    _, all_infos = load_infos(info_file)
    infos = select_infos(all_infos, scenes, samples, max_samples)
    if not infos:
        raise ValueError(f"nothing to draw: the selection picks no sample of {info_file}")
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
    by_scene_all: dict[str, list[dict]] = defaultdict(list)
    for info in all_infos:
        by_scene_all[info["scene_name"]].append(info)
    recorder = None
    if rerun_file:
        from bevformer.visualization.recording import RerunRecorder

        recorder = RerunRecorder(rerun_file)
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []
    by_scene: dict[str, list[str]] = defaultdict(list)
    thresholds, drawn = [], 0
    for info in infos:
        view = sample_view(info, results[info["token"]] if results else None, score_thr)
        scene = by_scene_all[info["scene_name"]]
        k = next(n for n, i in enumerate(scene) if i["token"] == info["token"])
        view.frame, view.t0 = (k, len(scene)), scene[0]["timestamp"]
        view.trajectory = (ego_trajectory(scene, k), k)
        view.points = load_lidar_points(info, dataroot)
        heat, pc_range = bev_heatmap(info["token"]) if bev_heatmap else (None, None)
        extra = {"bev_heat": heat, "pc_range": pc_range} if heat is not None else {}
        tiles = camera_tiles(view, dataroot, tile_width, camera_labels=camera_labels)
        picture = render_sample(view, dataroot, tile_width=tile_width, tiles=tiles, **extra)
        path = osp.join(out_dir, f"{info['scene_name']}_{info['frame_idx']:03d}.png")
        cv2.imwrite(path, picture)
        written.append(path)
        by_scene[info["scene_name"]].append(path)
        if view.pred is not None:
            thresholds.append(view.score_thr)
            drawn += len(view.pred)
        if recorder is not None:
            heat_img = None
            if heat is not None:
                heat_img = draw_bev_heatmap(heat, pc_range, view.gt, view.gt_names, size=400)
            recorder.log_sample(view, tiles, heat_img)
    if recorder is not None:
        recorder.close()
    if video:
        from bevformer.visualization.video import write_gif, write_mp4

        writer = write_mp4 if video == "mp4" else write_gif
        for scene, frames in by_scene.items():
            writer([cv2.imread(f) for f in frames], osp.join(out_dir, f"{scene}.{video}"), fps)
    if log is not None:
        noun = "sample" if len(written) == 1 else "samples"
        line = f"drew {len(written)} {noun} to {out_dir}"
        if thresholds:
            lo, hi = min(thresholds), max(thresholds)
            thr = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
            how = "fixed"
            if score_thr == "auto":
                how = f"auto: min({AUTO_THRESHOLD}, best score per sample)"
            line += f"; {drawn} predictions at score threshold {thr} ({how})"
        else:
            line += "; ground truth only"
        if rerun_file:
            line += f"; Rerun recording {rerun_file} (open it with: rerun {rerun_file})"
        log(line)
    return written
