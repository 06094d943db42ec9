"""Writes a synthetic nuScenes-format dataroot (``v1.0-mini`` tables, camera JPEGs, LIDAR_TOP
point clouds, map masks) that ``nuscenes.NuScenes`` loads unchanged.

Per scene (one process-pool task): draw the world (``world.py``), then for every sensor frame
(keyframes at 2 Hz, optional sweeps between them) compute the ego pose at the frame's own
timestamp, render the cameras (``raster.py``) with every object at that timestamp, cast the
lidar, and build the table records. Keyframe annotations are at the lidar timestamp (the
sample timestamp); each camera fires a few milliseconds off it (``CAMERA_OFFSETS_US``) and is
rendered at its own time, as on the real rig.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .catalog import (
    CAMERA_NAMES,
    CLASS_HUE_DEG,
    LIDAR_NAME,
    MINI_LOCATIONS,
    scene_names,
)
from .ground import MAP_RESOLUTION, draw_drivable, ground_texture
from .raster import cast_lidar, render_camera
from .rig import Rig, load_rig, pose_matrix, yaw_to_quat
from .tables import annotation_records, rounded, scene_records, static_tables, token
from .world import SceneWorld, build_world

__all__ = ["VERSION", "generate"]

VERSION = "v1.0-mini"
KEYFRAME_PERIOD_US = 500_000  # 2 Hz keyframes
# Camera trigger times relative to the lidar keyframe time (microseconds).
CAMERA_OFFSETS_US = {
    "CAM_FRONT": 2_000,
    "CAM_FRONT_RIGHT": 6_000,
    "CAM_BACK_RIGHT": 9_000,
    "CAM_BACK": -8_000,
    "CAM_BACK_LEFT": -5_000,
    "CAM_FRONT_LEFT": -2_000,
}
LIDAR_RANGE = 70.0
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)  # a 32-ring spinning lidar
LIDAR_AZIMUTHS = 1084
GROUND_RES = 0.1
GROUND_MARGIN = 130.0
MAP_MARGIN = 100.0
SUN = np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])
JPEG_QUALITY = 90
GENERATED = (VERSION, "samples", "sweeps", "maps")


@dataclass
class SceneJob:
    index: int
    name: str
    location: str
    logfile: str
    base_us: int
    world: SceneWorld
    samples: int
    sweeps: int
    seed: int
    out_dir: Path
    image_size: tuple[int, int]
    threads: int


class _SceneRenderer:
    """Renders one scene's frames; holds the ground texture and the rig."""

    def __init__(self, job: SceneJob, rig: Rig):
        self.job = job
        self.rig = rig
        self.world = job.world
        lo, hi = self.world.extent(GROUND_MARGIN)
        rng = np.random.default_rng([job.seed, job.index, 1])
        self.ground_lo = lo
        self.mips = ground_texture(self.world, lo, hi, GROUND_RES, rng)
        self.hues = np.array(CLASS_HUE_DEG, dtype=np.float64)
        el = np.deg2rad(LIDAR_ELEVATIONS_DEG)[:, None]
        az = np.linspace(0, 2 * np.pi, LIDAR_AZIMUTHS, endpoint=False)[None, :]
        # (32 rings x A azimuths, 3) unit directions in the lidar frame
        self.lidar_dirs = np.stack(
            [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) + 0 * az], axis=-1
        ).reshape(-1, 3)
        self.lidar_ring = np.repeat(np.arange(len(LIDAR_ELEVATIONS_DEG)), LIDAR_AZIMUTHS)

    def ego2global(self, t: float) -> np.ndarray:
        pos, yaw = self.world.ego_pose(t)
        return pose_matrix(np.array(yaw_to_quat(yaw)), pos)

    def camera(self, cam_index: int, t: float, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Renders and writes one image; returns (nearby object indices, visible pixel count
        and silhouette pixel count per nearby object as a (2, n) array)."""
        calib = self.rig.cameras[cam_index]
        state = self.world.state(t)
        near = self.world.nearby(state, t)
        cam2global = self.ego2global(t) @ calib.sensor2ego
        img, ids, coverage = render_camera(
            self.rig.height,
            self.rig.width,
            calib.intrinsic,
            cam2global,
            self.mips,
            GROUND_RES,
            self.ground_lo,
            state.center[near],
            state.yaw[near],
            state.lwh[near],
            self.world.cls[near],
            self.hues,
            self.world.seed[near],
            SUN,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"could not write {path}; check that the output folder is writable.")
        visible = np.bincount(ids[ids >= 0].ravel(), minlength=len(near))
        return near, np.stack([visible, coverage])

    def lidar(self, t: float, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Casts and writes one sweep (float32 x, y, z, intensity, ring in the LIDAR_TOP
        frame); returns (nearby object indices, lidar hits per nearby object)."""
        state = self.world.state(t)
        near = self.world.nearby(state, t, radius=LIDAR_RANGE + 15.0)
        lidar2global = self.ego2global(t) @ self.rig.lidar.sensor2ego
        rot, origin = lidar2global[:3, :3], lidar2global[:3, 3]
        dirs = self.lidar_dirs @ rot.T
        rng_, hit = cast_lidar(
            origin, dirs, state.center[near], state.yaw[near], state.lwh[near], LIDAR_RANGE
        )
        keep = hit >= -1
        pts_lidar = self.lidar_dirs[keep] * rng_[keep, None]  # lidar frame: direction * range
        cls = np.where(hit[keep] >= 0, self.world.cls[near][np.maximum(hit[keep], 0)], -1)
        intensity = np.where(cls >= 0, 20.0 + 7.0 * cls, 6.0)
        cloud = np.concatenate(
            [pts_lidar, intensity[:, None], self.lidar_ring[keep, None].astype(np.float64)], axis=1
        ).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        cloud.tofile(path)
        counts = np.bincount(hit[hit >= 0], minlength=len(near))
        return near, counts


class _QueueProgress:
    """Progress callback of a worker process: puts the number of finished samples on a
    queue that the parent drains into its progress bar."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def __call__(self, count: int) -> None:
        self.queue.put(count)


def _frame_times(samples: int, sweeps: int) -> list[tuple[float, bool, int]]:
    """(seconds since the scene start, is key frame, sample index it belongs to)."""
    frames = []
    for k in range(samples):
        frames.append((k * KEYFRAME_PERIOD_US / 1e6, True, k))
        if k + 1 < samples:
            for j in range(1, sweeps + 1):
                t = (k + j / (sweeps + 1)) * KEYFRAME_PERIOD_US / 1e6
                frames.append((t, False, k + 1))
    return frames


def _render_scene(job: SceneJob, progress: Callable[[int], None] | None = None) -> dict[str, list]:
    """Renders a scene and returns its table records (table name -> records)."""
    try:
        import numba

        numba.set_num_threads(max(1, min(job.threads, numba.config.NUMBA_NUM_THREADS)))
    except ImportError:  # pragma: no cover - numba is a dependency
        pass
    seed, name, world = job.seed, job.name, job.world
    rig = load_rig(job.image_size)
    renderer = _SceneRenderer(job, rig)
    key_times = [k * KEYFRAME_PERIOD_US / 1e6 for k in range(job.samples)]
    tables = scene_records(
        seed,
        name,
        job.logfile,
        job.location,
        [job.base_us + k * KEYFRAME_PERIOD_US for k in range(job.samples)],
        rig,
    )
    tables["ego_pose"], tables["sample_data"] = [], []
    sensors = [(LIDAR_NAME, rig.lidar, 0)] + [
        (c.channel, c, CAMERA_OFFSETS_US[c.channel]) for c in rig.cameras
    ]
    # (K keyframes, M objects): visible pixels, silhouette pixels, lidar returns
    visible_px = np.zeros((job.samples, len(world.cls)), dtype=np.int64)
    silhouette_px = np.zeros_like(visible_px)
    lidar_pts = np.zeros_like(visible_px)
    # every sensor frame in time order; sample_data chains per channel
    chains: dict[str, list[dict]] = {ch: [] for ch, _, _ in sensors}
    for f_idx, (t, is_key, k) in enumerate(_frame_times(job.samples, job.sweeps)):
        for channel, calib, offset_us in sensors:
            ts = job.base_us + int(round(t * 1e6)) + offset_us
            t_frame = (ts - job.base_us) / 1e6
            is_cam = calib.intrinsic is not None
            folder = "samples" if is_key else "sweeps"
            ext = "jpg" if is_cam else "pcd.bin"
            rel = f"{folder}/{channel}/{job.logfile}__{channel}__{ts}.{ext}"
            if is_cam:
                near, counts = renderer.camera(
                    CAMERA_NAMES.index(channel), t_frame, job.out_dir / rel
                )
                if is_key:
                    visible_px[k, near] += counts[0]
                    silhouette_px[k, near] += counts[1]
            else:
                near, counts = renderer.lidar(t_frame, job.out_dir / rel)
                if is_key:
                    lidar_pts[k, near] += counts
            # nuScenes gives each sample_data its own ego pose, with the same token
            sd_token = token(seed, "sample_data", name, channel, f_idx)
            e2g = renderer.ego2global(t_frame)
            yaw = float(np.arctan2(e2g[1, 0], e2g[0, 0]))
            tables["ego_pose"].append(
                {
                    "token": sd_token,
                    "timestamp": ts,
                    "rotation": rounded(yaw_to_quat(yaw), 8),
                    "translation": rounded(e2g[:3, 3]),
                }
            )
            chains[channel].append(
                {
                    "token": sd_token,
                    "sample_token": token(seed, "sample", name, k),
                    "ego_pose_token": sd_token,
                    "calibrated_sensor_token": token(seed, "calibrated_sensor", name, channel),
                    "timestamp": ts,
                    "fileformat": "jpg" if is_cam else "pcd",
                    "is_key_frame": is_key,
                    "height": rig.height if is_cam else 0,
                    "width": rig.width if is_cam else 0,
                    "filename": rel,
                }
            )
        if is_key and progress is not None:
            progress(1)
    for records in chains.values():
        for i, rec in enumerate(records):
            rec["prev"] = records[i - 1]["token"] if i > 0 else ""
            rec["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""
        tables["sample_data"].extend(records)
    tables.update(
        annotation_records(seed, name, world, key_times, visible_px, silhouette_px, lidar_pts)
    )
    return tables


def _plan(names: list[str], samples: int, seed: int):
    """Draws every scene's world and places scenes of one location side by side on its map.
    Returns (worlds, {location: (width_m, height_m)})."""
    worlds, by_location = [], {}
    duration = (samples - 1) * KEYFRAME_PERIOD_US / 1e6
    for index, name in enumerate(names):
        world = build_world(np.random.default_rng([seed, index]), duration)
        lo, hi = world.extent(MAP_MARGIN)
        location = MINI_LOCATIONS.get(name, "boston-seaport")
        cursor, height = by_location.get(location, (0.0, 0.0))
        world.origin = np.array([cursor - lo[0], -lo[1]])
        by_location[location] = (cursor + hi[0] - lo[0], max(height, hi[1] - lo[1]))
        worlds.append(world)
    return worlds, by_location


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output path {out_dir} exists and is not a folder.")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output folder {out_dir} exists and is not empty; choose another --out or "
                "pass --overwrite to replace the generated dataset there."
            )
        for entry in GENERATED:
            target = out_dir / entry
            if target.is_dir():
                shutil.rmtree(target)
    out_dir.mkdir(parents=True, exist_ok=True)


def generate(
    out_dir: str | os.PathLike,
    *,
    scenes: int = 10,
    samples_per_scene: int = 40,
    image_size: tuple[int, int] = (1600, 900),
    seed: int = 0,
    sweeps: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Writes a synthetic ``v1.0-mini`` nuScenes dataroot to ``out_dir`` and returns its path.

    ``scenes`` v1.0-mini scene names (fixed order, the second one is a ``mini_val`` scene),
    ``samples_per_scene`` keyframes at 2 Hz, six cameras at ``image_size`` = (W, H),
    ``sweeps`` non-key frames per sensor between consecutive keyframes, ``workers`` processes
    (one scene per task). The same ``seed`` writes byte-identical tables.
    """
    if samples_per_scene < 2:
        raise ValueError(f"samples_per_scene must be >= 2, got {samples_per_scene}.")
    if sweeps < 0 or workers < 1:
        raise ValueError(f"sweeps must be >= 0 and workers >= 1, got {sweeps} and {workers}.")
    out = Path(out_dir)
    names = scene_names(scenes)
    _prepare_out_dir(out, overwrite)
    worlds, by_location = _plan(names, samples_per_scene, seed)

    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = []
    locations = {}
    for index, (name, world) in enumerate(zip(names, worlds)):
        location = MINI_LOCATIONS.get(name, "boston-seaport")
        stamp = 1533000000 + index * 86400 + 3600
        date = np.datetime64(stamp, "s").astype(object)
        tz = "+0800" if location.startswith("singapore") else "-0400"
        vehicle = "n015" if location.startswith("singapore") else "n008"
        logfile = f"{vehicle}-{date:%Y-%m-%d-%H-%M-%S}{tz}"
        locations.setdefault(location, []).append(index)
        jobs.append(
            SceneJob(
                index=index,
                name=name,
                location=location,
                logfile=logfile,
                base_us=stamp * 1_000_000,
                world=world,
                samples=samples_per_scene,
                sweeps=sweeps,
                seed=seed,
                out_dir=out,
                image_size=tuple(image_size),
                threads=threads,
            )
        )

    results: list[dict | None] = [None] * len(jobs)
    bar = tqdm(
        total=len(jobs) * samples_per_scene,
        desc="synthetic nuScenes",
        unit="sample",
        disable=not progress,
    )
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = _render_scene(job, progress=bar.update)
    else:
        ctx = get_context("spawn")  # numba's thread pool does not survive a fork
        with (
            ctx.Manager() as manager,
            ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool,
        ):
            done_queue = manager.Queue()
            futures = {
                pool.submit(_render_scene, job, _QueueProgress(done_queue)): i
                for i, job in enumerate(jobs)
            }
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while not done_queue.empty():
                    bar.update(done_queue.get())
                for fut in finished:
                    results[futures[fut]] = fut.result()
    bar.close()

    tables = static_tables(seed)
    for res in results:
        for key, rows in res.items():
            tables.setdefault(key, []).extend(rows)
    # maps: one drivable-area mask per location, scenes side by side
    tables["map"] = []
    (out / "maps").mkdir(parents=True, exist_ok=True)
    for location, indices in locations.items():
        width_m, height_m = by_location[location]
        mask = np.zeros(
            (int(np.ceil(height_m / MAP_RESOLUTION)), int(np.ceil(width_m / MAP_RESOLUTION))),
            dtype=np.uint8,
        )
        for i in indices:
            draw_drivable(mask, worlds[i])
        map_token = token(seed, "map", location)
        filename = f"maps/{map_token}.png"
        cv2.imwrite(str(out / filename), mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        tables["map"].append(
            {
                "category": "semantic_prior",
                "token": map_token,
                "filename": filename,
                "log_tokens": [token(seed, "log", names[i]) for i in indices],
            }
        )
    table_dir = out / VERSION
    table_dir.mkdir(parents=True, exist_ok=True)
    for key, rows in tables.items():
        with open(table_dir / f"{key}.json", "w") as f:
            json.dump(rows, f, indent=0)
    return out
