"""A Rerun recording (``.rrd``) of rendered samples, for an interactive timeline.

Open it with ``rerun out.rrd`` (the viewer ships with the ``rerun-sdk`` package). Entities,
logged on the timelines ``timestamp`` (the sample's time) and ``frame`` (its index in the
scene); boxes and points are in the lidar frame, placed in the global frame by the ego pose:

    world/ego                       Transform3D  ego2global of the sample (the ego pose)
    world/ego/lidar                 Transform3D  lidar2ego
    world/ego/lidar/points          Points3D     LIDAR_TOP points (when the dataroot has them)
    world/ego/lidar/gt              Boxes3D      ground truth, class-coloured, class labels
    world/ego/lidar/pred            Boxes3D      predictions above the threshold, "class score"
    cameras/<CAM>                   Image        the camera with the boxes projected into it
    bev/heatmap                     Image        the BEV feature heat map (with a checkpoint)

Box orientation: Rerun rotates the box's local x (half size L/2) by ``yaw_nus`` about z,
the nuScenes yaw of the box vector (``bevformer.structures.boxes``). Arrays go to Rerun as
float32 NumPy arrays: with numpy<2, rerun-sdk 0.23's conversion of Python lists of
rotations fails (it calls ``np.asarray(..., copy=...)``).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from bevformer.structures.boxes import YAW, H, L, W, X, Y, Z, yaw_to_nus
from bevformer.visualization.draw import CLASS_COLORS_RGB, UNKNOWN_COLOR
from bevformer.visualization.render import SampleView

__all__ = ["RerunRecorder", "ENTITIES"]

ENTITIES = {
    "ego": "world/ego",
    "lidar": "world/ego/lidar",
    "points": "world/ego/lidar/points",
    "gt": "world/ego/lidar/gt",
    "pred": "world/ego/lidar/pred",
    "cameras": "cameras",
    "heatmap": "bev/heatmap",
}
JPEG_QUALITY = 85


def _import_rerun():
    try:
        import rerun
    except ImportError as err:
        raise ImportError(
            "--rerun needs the rerun-sdk package (pip install 'rerun-sdk>=0.23,<0.24', the "
            "versions that run with numpy<2)"
        ) from err
    return rerun


def _boxes3d(rr, boxes: np.ndarray, names: list[str], labels: list[str]):
    """Lidar-frame boxes ``[M, 9]`` as ``rr.Boxes3D`` in their class colours."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 9)
    half = yaw_to_nus(boxes[:, YAW]) / 2  # rotation about lidar z, quaternion x, y, z, w
    quats = np.stack([0 * half, 0 * half, np.sin(half), np.cos(half)], -1).astype(np.float32)
    colors = [CLASS_COLORS_RGB.get(n, UNKNOWN_COLOR) for n in names]
    return rr.Boxes3D(
        centers=boxes[:, [X, Y, Z]],
        half_sizes=boxes[:, [L, W, H]] / 2,
        quaternions=quats,
        colors=colors,
        labels=labels,
    )


def _transform(rr, matrix) -> object:
    m = np.asarray(matrix, dtype=np.float64)
    return rr.Transform3D(translation=m[:3, 3], mat3x3=m[:3, :3])


def _image(rr, bgr: np.ndarray):
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return rr.Image(rgb).compress(jpeg_quality=JPEG_QUALITY)


class RerunRecorder:
    """Writes samples into the Rerun recording ``path`` (see the module docstring for the
    entities); call :meth:`close` at the end."""

    def __init__(self, path: str, application_id: str = "bevformer_v2") -> None:
        self.rr = _import_rerun()
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.stream = self.rr.RecordingStream(application_id)
        self.stream.save(path)

    def log_sample(
        self,
        view: SampleView,
        camera_images: dict[str, np.ndarray],
        heatmap: np.ndarray | None = None,
    ) -> None:
        """One sample at its timestamp: ego pose, lidar points, GT and predictions (3D),
        ``camera_images`` (name -> BGR image with the boxes drawn) and the BEV ``heatmap``
        picture (BGR) when given."""
        rr, rec, info = self.rr, self.stream, view.info
        rec.set_time("timestamp", timestamp=info["timestamp"] / 1e6)
        rec.set_time("frame", sequence=int(view.frame[0]))
        rec.log(ENTITIES["ego"], _transform(rr, info["ego2global"]))
        rec.log(ENTITIES["lidar"], _transform(rr, info["lidar2ego"]))
        if view.points is not None:
            rec.log(ENTITIES["points"], rr.Points3D(view.points[:, :3], radii=0.04))
        rec.log(ENTITIES["gt"], _boxes3d(rr, view.gt, view.gt_names, view.gt_names))
        if view.pred is not None:
            rec.log(ENTITIES["pred"], _boxes3d(rr, view.pred, view.pred_names, view.pred_labels))
        for cam, image in camera_images.items():
            rec.log(f"{ENTITIES['cameras']}/{cam}", _image(rr, image))
        if heatmap is not None:
            rec.log(ENTITIES["heatmap"], _image(rr, heatmap))

    def close(self) -> None:
        """Flush everything to the file."""
        self.stream.flush(blocking=True)
        self.stream.disconnect()
