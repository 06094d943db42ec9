"""A synthetic driving scene: a curved road, the ego vehicle's trajectory and the traffic.

Everything is an analytic function of time, so any sensor timestamp can be rendered exactly.

Road: a centreline parameterised by arc length ``s`` with smoothly varying curvature
(|k| <= 1/80 m^-1), sampled every 0.5 m. A point at lateral offset ``d`` (left positive) is
``c(s) + d * n(s)`` with ``n`` the left normal. Right-hand traffic, cross-section (|d|, m):

    0-3.5 inner lane | 3.5-7 outer lane | 7-8.6 bike lane | 8.6-11.2 parking | 11.2-15.5 sidewalk

Traffic lives on *tracks*: a lateral offset, a direction along the road and a motion law that
all objects of the track share (constant speed, or the ego's own speed profile for the ego
lane), so objects of a track keep their spacing and never overlap; tracks are laterally
separated by more than the widest object they carry, and the ego lane carries only objects
that follow the ego at a fixed gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .catalog import CLASS_INFO, CLASSES

__all__ = ["EGO_EXTENT", "SceneWorld", "WorldState", "build_world"]

ROAD_STEP = 0.5  # metres between centreline samples
EGO_LANE = -1.75
# Ego body along its heading relative to the ego origin (rear axle): [back, front] metres.
EGO_EXTENT = (-1.1, 3.9)
EGO_HALF_WIDTH = 1.0
MAX_EGO_SPEED = 11.5  # m/s along the centreline; the ego lane is a little longer on curves
RENDER_RADIUS = 150.0  # objects farther than this from the ego are not rendered


@dataclass(frozen=True)
class TrackSpec:
    """A family of objects: lateral offset, direction, speed range, class mix, gap range."""

    offset: float
    direction: int  # +1 along the road, -1 against it
    speed: tuple[float, float]  # m/s, drawn once per track; (0, 0) is static
    mix: dict[str, float]
    gap: tuple[float, float]  # free space between consecutive objects, metres
    parked: bool = False  # static vehicles are parked (True) or stopped in traffic (False)
    follow_ego: bool = False  # moves with the ego's speed profile (the ego lane)


VEHICLES = {"car": 0.7, "truck": 0.12, "bus": 0.1, "motorcycle": 0.08}
TRACKS = (
    TrackSpec(EGO_LANE, +1, (0, 0), VEHICLES, (8, 40), follow_ego=True),
    TrackSpec(-5.25, +1, (0, 11), {**VEHICLES, "construction_vehicle": 0.05}, (6, 35)),
    TrackSpec(1.75, -1, (4, 12), VEHICLES, (10, 45)),
    TrackSpec(5.25, -1, (0, 10), {**VEHICLES, "construction_vehicle": 0.05}, (6, 40)),
    TrackSpec(-7.8, +1, (3, 7), {"bicycle": 0.65, "motorcycle": 0.35}, (15, 80)),
    TrackSpec(7.8, -1, (3, 7), {"bicycle": 0.65, "motorcycle": 0.35}, (15, 80)),
    TrackSpec(
        -9.9,
        +1,
        (0, 0),
        {
            "car": 0.38,
            "truck": 0.08,
            "trailer": 0.08,
            "construction_vehicle": 0.07,
            "barrier": 0.17,
            "traffic_cone": 0.14,
            "motorcycle": 0.08,
        },
        (5.0, 40),
        parked=True,
    ),
    TrackSpec(
        9.9,
        -1,
        (0, 0),
        {
            "car": 0.4,
            "truck": 0.08,
            "trailer": 0.08,
            "construction_vehicle": 0.06,
            "barrier": 0.16,
            "traffic_cone": 0.14,
            "motorcycle": 0.08,
        },
        (5.0, 40),
        parked=True,
    ),
    TrackSpec(-12.0, +1, (0.9, 1.6), {"pedestrian": 1.0}, (12, 100)),
    TrackSpec(-13.3, -1, (0.9, 1.6), {"pedestrian": 1.0}, (12, 100)),
    TrackSpec(12.0, -1, (0.9, 1.6), {"pedestrian": 1.0}, (12, 100)),
    TrackSpec(13.3, +1, (0.9, 1.6), {"pedestrian": 1.0}, (12, 100)),
    TrackSpec(
        -14.7, +1, (0, 0), {"pedestrian": 0.55, "bicycle": 0.3, "traffic_cone": 0.15}, (10, 90)
    ),
    TrackSpec(
        14.7, -1, (0, 0), {"pedestrian": 0.55, "bicycle": 0.3, "traffic_cone": 0.15}, (10, 90)
    ),
)


@dataclass
class WorldState:
    """All objects of a scene at one time (M objects).

    ``center`` (M, 3) global box centres, ``yaw`` (M,) heading of the length axis (radians,
    counter-clockwise from global x), ``lwh`` (M, 3) sizes, ``velocity`` (M, 3) m/s.
    """

    center: np.ndarray
    yaw: np.ndarray
    lwh: np.ndarray
    velocity: np.ndarray


@dataclass
class SceneWorld:
    """The road, the ego trajectory and the objects (M) of one scene; global coordinates."""

    road_s: np.ndarray  # (R,) arc length samples
    road_xy: np.ndarray  # (R, 2) centreline
    road_heading: np.ndarray  # (R,) unwrapped heading of the centreline
    ego_s: np.ndarray  # (E,) ego arc length on the fine time grid
    time_step: float  # seconds between ego_s samples
    duration: float  # seconds
    cls: np.ndarray  # (M,) class index into CLASSES
    lwh: np.ndarray  # (M, 3)
    offset: np.ndarray  # (M,) lateral offset of the object's track
    direction: np.ndarray  # (M,) +1 / -1
    s0: np.ndarray  # (M,) arc length at t = 0 (or gap to the ego for followers)
    speed: np.ndarray  # (M,) constant speed, m/s (followers: 0, they use the ego profile)
    follow: np.ndarray  # (M,) bool, moves with the ego
    parked: np.ndarray  # (M,) bool, static vehicle without a driver
    yaw_offset: np.ndarray  # (M,) heading relative to the track direction (barriers: pi/2)
    seed: np.ndarray  # (M,) per-object appearance variation in [0, 1)
    origin: np.ndarray = field(default_factory=lambda: np.zeros(2))  # added to every x, y

    # ----------------------------------------------------------------- road geometry
    def road_at(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global xy (..., 2) and heading (...) of the road point at arc length s, offset d."""
        x = np.interp(s, self.road_s, self.road_xy[:, 0])
        y = np.interp(s, self.road_s, self.road_xy[:, 1])
        h = np.interp(s, self.road_s, self.road_heading)
        xy = np.stack([x - d * np.sin(h), y + d * np.cos(h)], axis=-1) + self.origin
        return xy, h

    # ----------------------------------------------------------------- ego
    def ego_arc(self, t: float | np.ndarray) -> np.ndarray:
        grid = np.arange(len(self.ego_s)) * self.time_step
        return np.interp(t, grid, self.ego_s)

    def ego_pose(self, t: float) -> tuple[np.ndarray, float]:
        """Ego position (3,) (z = 0, the ground) and yaw at time ``t`` seconds."""
        xy, h = self.road_at(self.ego_arc(t), np.asarray(EGO_LANE))
        return np.array([xy[0], xy[1], 0.0]), float(h)

    def ego_speed(self, t: float, eps: float = 0.05) -> float:
        a, _ = self.ego_pose(t - eps)
        b, _ = self.ego_pose(t + eps)
        return float(np.linalg.norm(b - a) / (2 * eps))

    # ----------------------------------------------------------------- objects
    def object_arc(self, t: float) -> np.ndarray:
        s = self.s0 + self.direction * self.speed * t
        return np.where(self.follow, self.ego_arc(t) + self.s0, s)

    def _place(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        xy, h = self.road_at(self.object_arc(t), self.offset)
        yaw = h + np.where(self.direction > 0, 0.0, np.pi) + self.yaw_offset
        center = np.concatenate([xy, self.lwh[:, 2:3] / 2], axis=1)
        return center, np.arctan2(np.sin(yaw), np.cos(yaw))

    def state(self, t: float, eps: float = 0.05) -> WorldState:
        """Every object at time ``t``; velocity by a centred difference over +-eps s."""
        center, yaw = self._place(t)
        before, _ = self._place(t - eps)
        after, _ = self._place(t + eps)
        return WorldState(center, yaw, self.lwh, (after - before) / (2 * eps))

    def nearby(self, state: WorldState, t: float, radius: float = RENDER_RADIUS) -> np.ndarray:
        """Indices of the objects within ``radius`` metres (xy) of the ego at time ``t``."""
        ego, _ = self.ego_pose(t)
        dist = np.linalg.norm(state.center[:, :2] - ego[:2], axis=1)
        return np.nonzero(dist <= radius)[0]

    def extent(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """(min xy, max xy) of the ego path grown by ``margin`` metres (global)."""
        xy, _ = self.road_at(self.ego_s, np.full(self.ego_s.shape, EGO_LANE))
        return xy.min(axis=0) - margin, xy.max(axis=0) + margin


# --------------------------------------------------------------------- construction
def _speed_profile(rng: np.random.Generator, duration: float, step: float) -> np.ndarray:
    """Smooth ego speed (m/s) in [0, 12] on a time grid: control points every 4 s joined by
    cosine easing, with occasional stops."""
    knots_t = np.arange(0.0, duration + 8.0, 4.0)
    values = [rng.uniform(3.0, MAX_EGO_SPEED)]
    for _ in knots_t[1:]:
        if rng.random() < 0.12:
            values.append(0.0)
        else:
            values.append(float(np.clip(values[-1] + rng.uniform(-5, 5), 1.0, MAX_EGO_SPEED)))
    values = np.array(values)
    t = np.arange(0.0, duration + 1.0 + step, step)
    k = np.minimum((t // 4.0).astype(int), len(values) - 2)
    u = (t - knots_t[k]) / 4.0
    ease = 0.5 - 0.5 * np.cos(np.pi * u)
    return values[k] * (1 - ease) + values[k + 1] * ease


def _road(rng: np.random.Generator, s_min: float, s_max: float):
    s = np.arange(s_min, s_max + ROAD_STEP, ROAD_STEP)
    curvature = np.zeros_like(s)
    for _ in range(3):
        wavelength = rng.uniform(120.0, 400.0)
        curvature += rng.uniform(-1, 1) * np.sin(2 * np.pi * s / wavelength + rng.uniform(0, 6.3))
    curvature *= (1.0 / 80.0) / max(1.0, np.abs(curvature).max())
    heading = np.cumsum(curvature) * ROAD_STEP
    heading += rng.uniform(-np.pi, np.pi) - heading[np.searchsorted(s, 0.0)]
    xy = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * ROAD_STEP, axis=0)
    xy -= xy[np.searchsorted(s, 0.0)]
    return s, xy, heading


# Classes by the nuScenes detection evaluation range (30 m, 40 m, then 50 m).
_EVAL_ORDER = (
    "traffic_cone",
    "barrier",
    "pedestrian",
    "bicycle",
    "motorcycle",
    "car",
    "truck",
    "bus",
    "construction_vehicle",
    "trailer",
)


def _sample_size(rng: np.random.Generator, name: str) -> np.ndarray:
    w, length, h = CLASS_INFO[name].wlh
    scale = np.clip(1.0 + 0.07 * rng.standard_normal(3), 0.85, 1.15)
    return np.array([length, w, h]) * scale


def build_world(
    rng: np.random.Generator, duration: float, density: float = 1.0, time_step: float = 0.01
) -> SceneWorld:
    """Draws a road, an ego speed profile and the traffic for a scene of ``duration`` s."""
    speed = _speed_profile(rng, duration, time_step)
    ego_s = np.concatenate([[0.0], np.cumsum((speed[1:] + speed[:-1]) / 2) * time_step])
    travel = float(ego_s[-1])
    reach = RENDER_RADIUS + 20.0
    s_lo = -reach - MAX_EGO_SPEED * duration - 30.0
    s_hi = travel + reach + MAX_EGO_SPEED * duration + 30.0
    road_s, road_xy, road_heading = _road(rng, s_lo, s_hi)

    rows: dict[str, list] = {k: [] for k in ("cls", "lwh", "off", "dir", "s0", "v", "fol", "park")}
    window = (float(ego_s[0]) + 5.0, float(ego_s[0]) + 25.0)
    missing = set(CLASSES)
    yaw_offsets, seeds = [], []
    for track in TRACKS:
        names = list(track.mix)
        probs = np.array([track.mix[n] for n in names])
        probs /= probs.sum()
        v = 0.0 if track.follow_ego else float(rng.uniform(*track.speed))
        if track.speed[1] > 0 and v < 1.0:
            v = 0.0  # a queue stopped in traffic
        gap_lo, gap_hi = track.gap[0], track.gap[1] / density
        if track.follow_ego:
            spans = [(EGO_EXTENT[1], 90.0, +1), (EGO_EXTENT[0], -90.0, -1)]
        else:
            # every object that comes within reach of the ego during the scene
            lo = -reach - v * duration if track.direction > 0 else -reach
            hi = travel + reach + (v * duration if track.direction < 0 else 0.0)
            spans = [(lo, hi, +1)]
        for start, stop, sign in spans:
            cursor = start + sign * rng.uniform(gap_lo, gap_hi)
            last_end = start
            pending: list[str] = []
            while (stop - cursor) * sign > 0:
                name = str(rng.choice(names, p=probs))
                # Every class stands 5-25 m ahead of the ego at the first keyframe at least
                # once (inside every class's evaluation range), so any scene, and any split,
                # has ground truth of all ten classes. The classes still missing when a track
                # first reaches that window are placed there, one after another.
                if not track.follow_ego and missing and cursor >= window[0] > last_end:
                    # nearest first: cones and barriers are scored within 30 m only
                    pending = sorted((n for n in names if n in missing), key=_EVAL_ORDER.index)
                    if pending:
                        cursor = max(last_end + 0.5, window[0])
                if pending:
                    name = pending.pop(0)
                    missing.discard(name)
                cluster = 1
                if name in ("barrier", "traffic_cone"):
                    cluster = int(rng.integers(2, 5))
                for _ in range(cluster):
                    lwh = _sample_size(rng, name)
                    along = lwh[1] if name == "barrier" else lwh[0]  # barriers stand across
                    centre = cursor + sign * along / 2
                    rows["cls"].append(CLASSES.index(name))
                    rows["lwh"].append(lwh)
                    rows["off"].append(track.offset)
                    rows["dir"].append(track.direction)
                    rows["s0"].append(centre)
                    rows["v"].append(v)
                    rows["fol"].append(track.follow_ego)
                    rows["park"].append(track.parked and CLASS_INFO[name].kind != "pedestrian")
                    yaw_offsets.append(np.pi / 2 if name == "barrier" else 0.0)
                    seeds.append(rng.random())
                    cursor = centre + sign * (along / 2 + (0.4 if cluster > 1 else 0.0))
                last_end = cursor
                cursor += sign * rng.uniform(gap_lo, gap_lo + 2.0 if pending else gap_hi)

    return SceneWorld(
        road_s=road_s,
        road_xy=road_xy,
        road_heading=road_heading,
        ego_s=ego_s,
        time_step=time_step,
        duration=duration,
        cls=np.array(rows["cls"], dtype=np.int64),
        lwh=np.array(rows["lwh"], dtype=np.float64).reshape(-1, 3),
        offset=np.array(rows["off"], dtype=np.float64),
        direction=np.array(rows["dir"], dtype=np.float64),
        s0=np.array(rows["s0"], dtype=np.float64),
        speed=np.array(rows["v"], dtype=np.float64),
        follow=np.array(rows["fol"], dtype=bool),
        parked=np.array(rows["park"], dtype=bool),
        yaw_offset=np.array(yaw_offsets, dtype=np.float64),
        seed=np.array(seeds, dtype=np.float64),
    )
