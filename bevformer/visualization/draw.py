"""Drawing primitives of the pictures: class colours, labels, camera boxes, the BEV panel.

Every box is drawn in the colour of its class (:data:`CLASS_COLORS`): ground truth thin,
predictions thick and labelled ``"<class> <score>"``. The BEV panel is the lidar frame of the
sample seen from above: lidar x (right) to the right, lidar y (forward) up, ``±extent`` metres
around the sensor, range rings every 10 m, the lidar points of the sample (light grey on the
ground, dark grey above it) and the ego trajectory of the scene (past solid, future dotted).

The drawing functions return the picture and, when a ``primitives`` list is passed, append a
:class:`Primitive` for each thing drawn (a box: one pixel on its outline; a text: its
rectangle), so that what a picture shows can be checked without reading pixels back.
Colours are BGR (OpenCV) unless a name says RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from bevformer.structures.boxes import CLASSES, VX, VY, X, Y, box_corners
from bevformer.structures.frames import project_points

__all__ = [
    "CLASS_COLORS",
    "GT_THICKNESS",
    "PRED_THICKNESS",
    "Primitive",
    "class_color",
    "draw_bev",
    "draw_bev_heatmap",
    "draw_camera",
    "draw_legend",
    "put_label",
]

# matplotlib's "tab10" palette (RGB), one colour per detection class in CLASSES order: ten
# colours that stay apart on white, on camera images and on the viridis heat map.
CLASS_COLORS_RGB = {
    "car": (31, 119, 180),
    "truck": (255, 127, 14),
    "construction_vehicle": (140, 86, 75),
    "bus": (214, 39, 40),
    "trailer": (148, 103, 189),
    "barrier": (127, 127, 127),
    "motorcycle": (227, 119, 194),
    "bicycle": (188, 189, 34),
    "pedestrian": (44, 160, 44),
    "traffic_cone": (23, 190, 207),
}
CLASS_COLORS = {name: (b, g, r) for name, (r, g, b) in CLASS_COLORS_RGB.items()}  # BGR
UNKNOWN_COLOR = (0, 0, 0)  # a name outside the ten detection classes
GT_THICKNESS = 1  # pixels, in cameras and BEV
PRED_THICKNESS = 3
FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_SCALE = 0.4
# LIDAR_TOP sits about 1.8 m above the road: points below this lidar-frame z are ground
GROUND_Z = -1.4
GROUND_POINT_COLOR = (205, 205, 205)
# darker than every class colour's grey (barrier: 127) so points and boxes stay apart
POINT_COLOR = (70, 70, 70)
# the ego path: the legend's one swatch covers both (line: past, dots: future)
PAST_COLOR = (0, 0, 0)
FUTURE_COLOR = PAST_COLOR
# Edges of the 8 corners in ``box_corners`` order (0-3 front face, 4-7 back face), then a
# cross on the front face so that the heading shows.
_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
    (0, 2), (1, 3),
)  # fmt: skip


@dataclass(frozen=True)
class Primitive:
    """One thing drawn on a picture, in that picture's pixel coordinates.

    kind: ``"gt"`` / ``"pred"`` (a box; ``xy`` is a pixel on its outline painted in
    ``color``), ``"label"`` (a box label), ``"legend"``, ``"note"`` (the line on predictions
    above the threshold), ``"title"``, ``"caption"``. panel: ``"bev"``, ``"heatmap"``,
    ``"legend"`` or a camera name. text: the class name of a box, else the text drawn.
    rect: ``(x0, y0, x1, y1)`` of a text and its background (exclusive ends), else None.
    """

    kind: str
    panel: str
    text: str
    color: tuple[int, int, int]
    xy: tuple[int, int]
    rect: tuple[int, int, int, int] | None = None

    def shifted(self, dx: int, dy: int) -> Primitive:
        rect = self.rect
        if rect is not None:
            rect = (rect[0] + dx, rect[1] + dy, rect[2] + dx, rect[3] + dy)
        return replace(self, xy=(self.xy[0] + dx, self.xy[1] + dy), rect=rect)


def class_color(name: str) -> tuple[int, int, int]:
    """BGR colour of a detection class (black for a name outside :data:`CLASSES`)."""
    return CLASS_COLORS.get(name, UNKNOWN_COLOR)


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = background
    return (0, 0, 0) if 0.114 * b + 0.587 * g + 0.299 * r > 150 else (255, 255, 255)


def put_label(
    image: np.ndarray,
    text: str,
    origin: tuple[int, int],
    background: tuple[int, int, int],
    scale: float = LABEL_SCALE,
) -> tuple[int, int, int, int]:
    """Write ``text`` (black or white, whichever reads) on a filled ``background`` box whose
    top-left corner is ``origin``, in place, kept inside the image. Returns the box
    ``(x0, y0, x1, y1)``."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    pad = 2
    w, h = tw + 2 * pad, th + base + 2 * pad
    x0 = int(min(max(origin[0], 0), max(image.shape[1] - w, 0)))
    y0 = int(min(max(origin[1], 0), max(image.shape[0] - h, 0)))
    cv2.rectangle(image, (x0, y0), (x0 + w - 1, y0 + h - 1), background, -1)
    cv2.putText(
        image, text, (x0 + pad, y0 + pad + th), FONT, scale, _text_color(background), 1,
        cv2.LINE_AA,
    )  # fmt: skip
    return x0, y0, x0 + w, y0 + h


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def draw_camera(
    image: np.ndarray,
    boxes: np.ndarray,
    lidar2img_: np.ndarray,
    names: Sequence[str],
    thickness: int,
    labels: Sequence[str] | None = None,
    kind: str = "pred",
    panel: str = "camera",
    primitives: list[Primitive] | None = None,
) -> np.ndarray:
    """Draw lidar-frame boxes ``[M, 9]`` into one camera image (BGR, copied) in their class
    colours; ``lidar2img_ [4, 4]`` maps lidar points to this image's pixels.

    An edge is drawn where both its corners are at least 0.1 m in front of the camera; the
    front face carries a cross. ``labels`` (one per box) are written at the box's top corner.
    """
    out = image.copy()
    if len(boxes) == 0:
        return out
    corners = box_corners(np.asarray(boxes, dtype=np.float64))  # [M, 8, 3]
    uv, depth = project_points(lidar2img_, corners)  # [M, 8, 2], [M, 8]
    h, w = out.shape[:2]
    pending = []
    for m in range(len(boxes)):
        front = depth[m] > 0.1
        if not front.any():
            continue
        color = class_color(names[m])
        pts = np.round(uv[m]).astype(np.int64)
        seen = None
        for a, b in _EDGES:
            if front[a] and front[b]:
                cv2.line(out, _pt(pts[a]), _pt(pts[b]), color, thickness, cv2.LINE_8)
                for p in (pts[a], pts[b]):
                    if seen is None and 0 <= p[0] < w and 0 <= p[1] < h:
                        seen = _pt(p)
        if seen is None:  # every corner outside the image
            continue
        if primitives is not None:
            primitives.append(Primitive(kind, panel, names[m], color, seen))
        if labels is not None:
            top = pts[front][np.argmin(pts[front][:, 1])]
            pending.append((labels[m], color, int(top[0]), int(top[1]) - 20))
    for text, color, x, y in pending:  # labels last: no box line crosses them
        rect = put_label(out, text, (x, y), color)
        if primitives is not None:
            primitives.append(Primitive("label", panel, text, color, rect[:2], rect))
    return out


def _bev_to_px(xy: np.ndarray, size: int, extent: float) -> np.ndarray:
    """Lidar x, y (metres) -> BEV pixel (column, row): x to the right, y up."""
    scale = size / (2 * extent)
    return np.stack([size / 2 + xy[..., 0] * scale, size / 2 - xy[..., 1] * scale], -1)


def draw_bev(
    gt: np.ndarray,
    gt_names: Sequence[str],
    pred: np.ndarray,
    pred_names: Sequence[str],
    pred_labels: Sequence[str] | None = None,
    gt_labels: Sequence[str] | None = None,
    size: int = 600,
    extent: float = 55.0,
    background: np.ndarray | None = None,
    points: np.ndarray | None = None,
    trajectory: tuple[np.ndarray, int] | None = None,
    panel: str = "bev",
    primitives: list[Primitive] | None = None,
) -> np.ndarray:
    """A ``size x size`` BGR picture of the BEV within ``±extent`` metres (drawn over
    ``background [size, size, 3]`` when given).

    gt / pred: lidar-frame boxes ``[M, 9]`` with their class names; labels (one per box) are
    written beside the boxes. points: lidar points ``[P, >=3]`` (x, y, z in the lidar frame).
    trajectory: ``(xy [T, 2], t)``, the ego positions of the scene in this lidar frame and the
    index of the current sample. A line from each box centre to its front shows the heading,
    an arrow the velocity (metres travelled in one second).
    """
    canvas = np.full((size, size, 3), 255, np.uint8) if background is None else background.copy()
    scale = size / (2 * extent)
    if points is not None and len(points):
        px = np.round(_bev_to_px(np.asarray(points)[:, :2], size, extent)).astype(np.int64)
        inside = (px[:, 0] >= 0) & (px[:, 0] < size) & (px[:, 1] >= 0) & (px[:, 1] < size)
        ground = np.asarray(points)[:, 2] < GROUND_Z
        for mask, color in ((inside & ground, GROUND_POINT_COLOR), (inside & ~ground, POINT_COLOR)):
            canvas[px[mask, 1], px[mask, 0]] = color
    centre = (size // 2, size // 2)
    for r in range(10, int(extent) + 1, 10):
        cv2.circle(canvas, centre, int(r * scale), (215, 215, 215), 1, cv2.LINE_AA)
        cv2.putText(
            canvas, f"{r}m", (centre[0] + 3, centre[1] - int(r * scale) + 12),
            FONT, 0.35, (150, 150, 150), 1, cv2.LINE_AA,
        )  # fmt: skip
    if trajectory is not None and len(trajectory[0]) > 1:
        xy, now = np.asarray(trajectory[0], np.float64), int(trajectory[1])
        px = np.round(_bev_to_px(xy, size, extent)).astype(np.int32)
        if now > 0:
            cv2.polylines(canvas, [px[: now + 1]], False, PAST_COLOR, 2, cv2.LINE_AA)
        for p in px[now + 1 :]:
            cv2.circle(canvas, _pt(p), 2, FUTURE_COLOR, -1, cv2.LINE_AA)
    # ego vehicle (lidar frame: forward is +y)
    ego = _bev_to_px(np.array([[-0.9, -2.5], [0.9, -2.5], [0.9, 1.5], [-0.9, 1.5]]), size, extent)
    cv2.fillPoly(canvas, [np.round(ego).astype(np.int32)], (40, 40, 40))

    label_rects = []

    def draw(boxes, names, labels, width: int, kind: str) -> None:
        if len(boxes) == 0:
            return
        corners = box_corners(np.asarray(boxes, dtype=np.float64))[:, [0, 1, 5, 4], :2]
        for m, box in enumerate(boxes):
            color = class_color(names[m])
            poly = np.round(_bev_to_px(corners[m], size, extent)).astype(np.int32)
            cv2.polylines(canvas, [poly], True, color, width, cv2.LINE_8)
            c = _bev_to_px(box[[X, Y]], size, extent)
            front = _bev_to_px(corners[m, :2].mean(0), size, extent)
            cv2.line(canvas, _pt(c), _pt(front), color, width, cv2.LINE_8)
            v = box[[VX, VY]]
            if np.all(np.isfinite(v)) and np.hypot(*v) > 0.2:
                tip = _bev_to_px(box[[X, Y]] + v, size, extent)
                cv2.arrowedLine(canvas, _pt(c), _pt(tip), color, 1, cv2.LINE_AA, 0, 0.2)
            if primitives is not None and (0 <= poly[0, 0] < size and 0 <= poly[0, 1] < size):
                primitives.append(Primitive(kind, panel, names[m], color, _pt(poly[0])))
            if labels is not None:
                label_rects.append((labels[m], color, poly[:, 0].max() + 3, poly[:, 1].min() - 6))

    draw(gt, gt_names, gt_labels, GT_THICKNESS, "gt")
    draw(pred, pred_names, pred_labels, PRED_THICKNESS, "pred")
    for text, color, x, y in label_rects:  # labels last: no box line crosses them
        rect = put_label(canvas, text, (int(x), int(y)), color)
        if primitives is not None:
            primitives.append(Primitive("label", panel, text, color, rect[:2], rect))
    return canvas


def draw_bev_heatmap(
    heat: np.ndarray,
    pc_range: Sequence[float],
    gt: np.ndarray,
    gt_names: Sequence[str] = (),
    size: int = 600,
    extent: float = 55.0,
    primitives: list[Primitive] | None = None,
) -> np.ndarray:
    """``heat [H, W]`` (BEV grid rows along lidar y, columns along x, over ``pc_range``) as a
    viridis colour map on the BEV plot's canvas (``±extent`` metres, y up), scaled between its
    1st and 99th percentile, with the GT boxes drawn over it and a caption."""
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
    if len(gt_names) != len(gt):
        gt_names = ["?"] * len(gt)
    picture = draw_bev(
        gt, gt_names, np.zeros((0, 9)), [], size=size, extent=extent, background=canvas,
        panel="heatmap", primitives=primitives,
    )  # fmt: skip
    text = "BEV features: mean |bev| over channels (1st-99th percentile)"
    rect = put_label(picture, text, (6, size - 24), (0, 0, 0), scale=0.45)
    if primitives is not None:
        primitives.append(Primitive("caption", "heatmap", text, (0, 0, 0), rect[:2], rect))
    return picture


def draw_legend(
    width: int,
    rows: Sequence[Sequence[tuple[str, str, tuple[int, int, int] | None]]],
    primitives: list[Primitive] | None = None,
) -> np.ndarray:
    """A white strip ``[h, width, 3]`` with one or more lines per row of ``rows``.

    Each item is ``(kind, text, swatch)``: a swatch colour draws a filled square before the
    text. Items flow left to right and wrap at ``width``.
    """
    line_h, pad, scale = 22, 8, 0.5
    placed: list[tuple[int, int, str, str, tuple[int, int, int] | None]] = []
    y = pad
    for row in rows:
        x = pad
        for kind, text, swatch in row:
            tw = cv2.getTextSize(text, FONT, scale, 1)[0][0] + (18 if swatch else 0)
            if x > pad and x + tw > width - pad:
                x, y = pad, y + line_h
            placed.append((x, y, kind, text, swatch))
            x += tw + 24
        y += line_h
    strip = np.full((y + pad, width, 3), 255, np.uint8)
    for x, y, kind, text, swatch in placed:
        x_text = x
        if swatch is not None:
            cv2.rectangle(strip, (x, y + 3), (x + 12, y + 15), swatch, -1)
            x_text += 18
        cv2.putText(strip, text, (x_text, y + 15), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
        if primitives is not None:
            tw = cv2.getTextSize(text, FONT, scale, 1)[0][0]
            color = swatch if swatch is not None else (0, 0, 0)
            rect = (x, y, x_text + tw, y + line_h)
            primitives.append(Primitive(kind, "legend", text, color, (x, y), rect))
    return strip


def class_legend_items() -> list[tuple[str, str, tuple[int, int, int]]]:
    """One legend item per detection class: its colour swatch and name."""
    return [("legend", name, class_color(name)) for name in CLASSES]
