"""Top-down ground images of a scene: the textured ground the cameras see and the drivable-area
mask that becomes the nuScenes map (``maps/*.png``, 0.1 m per pixel, +y up, as the devkit's
``MapMask`` reads it).

The road cross-section (lanes, bike lane, parking, sidewalk) is the one of ``world.py``.
"""

from __future__ import annotations

import cv2
import numpy as np

from .world import SceneWorld

__all__ = ["MAP_RESOLUTION", "draw_drivable", "ground_texture"]

MAP_RESOLUTION = 0.1  # metres per pixel, the devkit's default map resolution
ROAD_HALF = 11.2  # kerb, metres from the centreline (lanes + bike lane + parking)
SIDEWALK_HALF = 15.5
DRIVABLE_HALF = 8.6  # lanes and bike lanes


def _offset_polyline(world: SceneWorld, d: float, step: float = 1.0, s_range=None):
    s = np.arange(world.road_s[0], world.road_s[-1], step)
    if s_range is not None:
        s = s[(s >= s_range[0]) & (s <= s_range[1])]
    xy, _ = world.road_at(s, np.full(s.shape, d))
    return s, xy


def _to_px(xy: np.ndarray, origin: np.ndarray, res: float, height: int | None) -> np.ndarray:
    """Global xy -> cv2 drawing coordinates (x col, y row) in 1/16 pixel fixed point."""
    px = (xy - origin) / res
    if height is not None:  # map images: row 0 is the top (largest y)
        px[:, 1] = height - px[:, 1]
    return np.round(px * 16).astype(np.int32)


def _thick(img, world, d, half_width, color, origin, res, height=None, s_range=None):
    _, xy = _offset_polyline(world, d, step=2.0, s_range=s_range)
    thickness = max(1, int(round(2 * half_width / res)))
    cv2.polylines(img, [_to_px(xy, origin, res, height)], False, color, thickness, cv2.LINE_8, 4)


def _dashed(img, world, d, width, dash, gap, color, origin, res, s_range):
    s, xy = _offset_polyline(world, d, step=0.25, s_range=s_range)
    on = np.mod(s, dash + gap) < dash
    thickness = max(1, int(round(width / res)))
    pts = _to_px(xy, origin, res, None)
    # split into runs of "on" samples
    edges = np.flatnonzero(np.diff(on.astype(np.int8)))
    starts = np.concatenate([[0], edges + 1])
    stops = np.concatenate([edges + 1, [len(s)]])
    runs = [pts[a:b] for a, b in zip(starts, stops) if on[a] and b - a >= 2]
    if runs:
        cv2.polylines(img, runs, False, color, thickness, cv2.LINE_8, 4)


def ground_texture(
    world: SceneWorld, lo: np.ndarray, hi: np.ndarray, res: float, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """BGR uint8 ground images covering [lo, hi] (global xy), texel (0, 0) at ``lo``; rows go
    with +y. Returns four mip levels (``res * 2**k`` metres per texel)."""
    width = int(np.ceil((hi[0] - lo[0]) / res))
    height = int(np.ceil((hi[1] - lo[1]) / res))
    ego = world.ego_s
    s_range = (ego.min() - 200.0, ego.max() + 200.0)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = (88, 112, 104)  # verge: dusty olive (BGR)
    _thick(img, world, 0.0, SIDEWALK_HALF, (168, 170, 172), lo, res, s_range=s_range)
    _thick(img, world, 0.0, ROAD_HALF, (74, 74, 76), lo, res, s_range=s_range)
    for side in (-1.0, 1.0):
        _thick(img, world, side * 0.2, 0.07, (40, 190, 225), lo, res, s_range=s_range)
        _dashed(img, world, side * 3.5, 0.15, 3.0, 6.0, (225, 225, 225), lo, res, s_range)
        _dashed(img, world, side * 7.0, 0.15, 1e9, 0.0, (225, 225, 225), lo, res, s_range)
        _dashed(img, world, side * 8.6, 0.12, 1.0, 4.0, (200, 200, 200), lo, res, s_range)
        _thick(img, world, side * ROAD_HALF, 0.15, (120, 122, 124), lo, res, s_range=s_range)
        # sidewalk slabs: thin joints every 2 m
        s, inner = _offset_polyline(world, side * ROAD_HALF, step=2.0, s_range=s_range)
        _, outer = _offset_polyline(world, side * SIDEWALK_HALF, step=2.0, s_range=s_range)
        segs = np.stack([_to_px(inner, lo, res, None), _to_px(outer, lo, res, None)], axis=1)
        cv2.polylines(img, list(segs), False, (140, 142, 146), 1, cv2.LINE_8, 4)
    # grain: fine per-texel noise (a tiled 512 x 512 patch) and coarse blotches, multiplicative
    tile = rng.normal(1.0, 0.06, size=(512, 512)).astype(np.float32)
    grain = np.tile(tile, (height // 512 + 1, width // 512 + 1))[:height, :width]
    coarse = rng.normal(1.0, 0.08, size=(height // 40 + 2, width // 40 + 2)).astype(np.float32)
    coarse = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    shade = grain * coarse
    img = np.clip(img * shade[..., None], 0, 255).astype(np.uint8)
    mips = [img]
    for _ in range(3):
        prev = mips[-1]
        size = (max(1, prev.shape[1] // 2), max(1, prev.shape[0] // 2))
        mips.append(cv2.resize(prev, size, interpolation=cv2.INTER_AREA))
    return tuple(np.ascontiguousarray(m) for m in mips)


def draw_drivable(mask: np.ndarray, world: SceneWorld) -> None:
    """Draws the scene's drivable area (lanes and bike lanes) into a map mask (uint8, 255 =
    drivable; pixel row 0 at the top, 0.1 m per pixel, global origin at the bottom-left)."""
    s_range = (world.ego_s.min() - 200.0, world.ego_s.max() + 200.0)
    _thick(
        mask,
        world,
        0.0,
        DRIVABLE_HALF,
        255,
        np.zeros(2),
        MAP_RESOLUTION,
        height=mask.shape[0],
        s_range=s_range,
    )
