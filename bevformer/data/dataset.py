"""Temporal multi-camera nuScenes dataset of BEVFormer v2 over the project's info files.

One item is the current keyframe plus the frames at the configured keyframe offsets
(``frames=(-1, 0)``: the previous keyframe and the current one), as the official
``CustomNuScenesDatasetV2`` (BEVFormer ``projects/mmdet3d_plugin/datasets/
nuscenes_dataset_v2.py``) samples them:

* offsets index the time-sorted infos; a frame is used only if it exists and belongs to the
  current scene. A missing frame keeps its slot: ``frame_valid`` is False there and the slot
  repeats the data of the next existing frame towards the current one (for a past frame: the
  next-newer one); the model decides what to do with it.
* Past frames are re-expressed in the current lidar frame through the poses,
  ``lidaradj2lidarcurr = inv(lidar2ego_curr) @ inv(ego2global_curr) @ ego2global_adj @
  lidar2ego_adj``, so ``cam2lidar = lidaradj2lidarcurr @ cam2lidar_adj`` and
  ``lidar2img = lidar2img_adj @ inv(lidaradj2lidarcurr)``. Each frame's own ``lidar2ego`` is
  used on its side (the official code uses the current one on both sides; the two agree on a
  fixed rig).
* The transforms see all frames at once, so one sampled augmentation (crop/resize/flip, BEV
  rotation/scale/flip) applies to every frame (official: the current frame's ``aug_param`` is
  copied into the past frames' pipelines).

Ground truth (current frame, current lidar frame): boxes whose name is one of ``classes``,
filtered by ``valid_flag`` (``use_valid_flag=True``; else ``num_lidar_pts > 0``) as
mmdetection3d's ``NuScenesDataset.get_ann_info``; NaN velocities become 0; after the
transforms (BEV augmentation) only boxes with centre strictly inside the BEV part of
``pc_range`` are kept and ``YAW`` is wrapped to ``[-pi, pi)`` (mmdetection3d
``ObjectRangeFilter``).

``filter_empty_gt=True`` (training only) drops keyframes without such a box from the index
(they still serve as past frames of later keyframes). The official code instead draws a random
other sample whenever one comes out empty; dropping them up front keeps an index -> sample
mapping fixed. A BEV augmentation that pushes every box out of range leaves an empty GT list.

Per-camera perspective (mono) targets come from the info's ``mono`` annotations of the current
frame: the detection classes only, camera depth > 0 and ``num_lidar_pts + num_radar_pts >=
mono_min_points`` (DD3D's ``min_num_lidar_points=3``), then moved with the image augmentation.
Attribute ids follow DD3D (``vehicle.moving/parked/stopped``, ``pedestrian.moving/standing/
sitting_lying_down``, ``cycle.with_rider/without_rider`` -> 0, 1, 2; none -> 3, ignored).

An item (T frames, N cameras, M boxes; ``collate`` stacks items into the batch of
``docs/CONVENTIONS.md``)::

    img          float32 (T, N, 3, H, W)     lidar2img   float32 (T, N, 4, 4)
    intrinsics   float32 (T, N, 3, 3)        cam2lidar   float32 (T, N, 4, 4)
    frame_valid  bool (T,)                   bda         float32 (4, 4)
    flip         bool                        gt_boxes    float32 (M, 9)
    gt_labels    int64 (M,)                  mono        dict: key -> list of N tensors
    meta         SampleMeta
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bevformer.data.infos import check_info_metadata, load_infos, resolve_path
from bevformer.data.meta import SampleMeta
from bevformer.data.transforms import Compose, LoadMultiViewImages
from bevformer.registry import DATASETS
from bevformer.structures.boxes import BOX_DIM, CLASSES, YAW, X, Y
from bevformer.structures.frames import invert, lidar2img
from bevformer.structures.grid import NUSCENES_PC_RANGE

__all__ = ["InfoList", "NuScenesTemporalDataset", "MONO_ATTRIBUTE_IDS", "MONO_NO_ATTRIBUTE"]


# DD3D attribute ids (BEVFormer projects/mmdet3d_plugin/dd3d/datasets/nuscenes.py).
MONO_ATTRIBUTE_IDS = {
    "vehicle.moving": 0,
    "vehicle.parked": 1,
    "vehicle.stopped": 2,
    "pedestrian.moving": 0,
    "pedestrian.standing": 1,
    "pedestrian.sitting_lying_down": 2,
    "cycle.with_rider": 0,
    "cycle.without_rider": 1,
}
MONO_NO_ATTRIBUTE = 3

_MONO_FLOAT_KEYS = {
    # info key -> (target key, width)
    "box2d": ("boxes2d", 4),
    "center2d": ("centers2d", 2),
    "depth": ("depths", 0),
    "center_cam": ("centers_cam", 3),
    "size_wlh": ("sizes_wlh", 3),
    "rotation_cam": ("rotations_cam", 4),
    "velocity_cam": ("velocities_cam", 3),
    "speed": ("speeds", 0),
}


def _limit_yaw(yaw: np.ndarray) -> np.ndarray:
    """Wrap to ``[-pi, pi)`` (mmdetection3d ``limit_period(offset=0.5, period=2 pi)``)."""
    return yaw - np.floor(yaw / (2 * np.pi) + 0.5) * 2 * np.pi


def _in_bev_range(boxes: np.ndarray, pc_range: Sequence[float]) -> np.ndarray:
    """Centres strictly inside the x-y part of ``pc_range`` (mmdetection3d ``in_range_bev``)."""
    x, y = boxes[:, X], boxes[:, Y]
    return (x > pc_range[0]) & (y > pc_range[1]) & (x < pc_range[3]) & (y < pc_range[4])


def _matrix(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{what}: expected a {shape} matrix, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class InfoList:
    """Infos held in memory instead of an info file (``info_file`` of
    :class:`NuScenesTemporalDataset`): the ``metadata`` and ``infos`` that
    :func:`~bevformer.data.infos.load_infos` would return, and a ``name`` for messages. Used by
    streaming inference (:class:`bevformer.apis.Detector`), which sees one keyframe at a time."""

    metadata: dict[str, Any]
    infos: Sequence[dict[str, Any]]
    name: str = "<infos in memory>"


@DATASETS.register_module()
class NuScenesTemporalDataset(Dataset):
    """Temporal multi-camera samples from a ``{prefix}_infos_temporal_{split}.json`` file.

    Paths follow mmengine's ``data_root`` convention: ``info_file`` and the image paths of the
    infos are relative to ``data_root`` and joined to it here (an absolute ``info_file`` stays
    absolute), so one ``data_root`` moves everything. The info file is read with
    :func:`bevformer.data.infos.load_infos` (format and version checked), or given in memory
    as an :class:`InfoList` (its infos are not re-validated); with
    ``expected_version`` (``v1.0-trainval``) and ``expected_split`` (``train`` / ``val`` /
    ``test``) an info file made from other data is refused (``ValueError`` naming both values,
    :func:`bevformer.data.infos.check_info_metadata`). ``frames`` are keyframe offsets,
    strictly increasing, containing 0. ``transforms`` are callables or ``TRANSFORMS`` config
    dicts (default: only :class:`LoadMultiViewImages`). ``camera_names`` are the cameras an
    item stacks, in this order (the model's list: the launcher writes
    ``model.bev.encoder.camera_names`` into every dataset node); the info file's cameras are
    matched by name, so infos with more cameras or another order give the same items, and infos
    without one of them are refused (``ValueError`` naming both lists). Without it, the info
    file's cameras in its order. ``test_mode`` makes the random transforms deterministic and
    keeps every keyframe; ground truth is then optional in the infos.
    """

    def __init__(
        self,
        info_file: str | os.PathLike | InfoList,
        data_root: str | os.PathLike,
        *,
        expected_version: str | None = None,
        expected_split: str | None = None,
        frames: Sequence[int] = (0,),
        transforms: Sequence[Callable | dict] | None = None,
        classes: Sequence[str] | None = None,
        camera_names: Sequence[str] | None = None,
        test_mode: bool = False,
        filter_empty_gt: bool = True,
        use_valid_flag: bool = True,
        pc_range: Sequence[float] = NUSCENES_PC_RANGE,
        with_mono: bool = True,
        mono_min_points: int = 3,
    ) -> None:
        if data_root is None:
            raise TypeError(
                "NuScenesTemporalDataset needs a data_root (the folder the info file and the "
                "image paths are relative to); set the config's top-level data_root"
            )
        self.data_root = os.fspath(data_root)
        if isinstance(info_file, InfoList):
            self.info_file = info_file.name
            self.metadata, infos = dict(info_file.metadata), list(info_file.infos)
        else:
            self.info_file = resolve_path(self.data_root, info_file)
            self.metadata, infos = load_infos(self.info_file)
        self.frames = tuple(int(f) for f in frames)
        if 0 not in self.frames or any(b <= a for a, b in zip(self.frames, self.frames[1:])):
            raise ValueError(
                f"frames must be strictly increasing keyframe offsets that contain 0 (the "
                f"current frame), e.g. (-1, 0); got {tuple(frames)}"
            )
        check_info_metadata(
            self.info_file, self.metadata, version=expected_version, split=expected_split
        )
        if len(infos) == 0:
            raise ValueError(f"{self.info_file}: the info file has no samples")
        self.classes = tuple(classes if classes is not None else CLASSES)
        names = camera_names if camera_names is not None else self.metadata.get("camera_names")
        if names is None:
            names = list(infos[0]["cams"])
        self.camera_names = tuple(names)
        self.test_mode = bool(test_mode)
        self.filter_empty_gt = bool(filter_empty_gt)
        self.use_valid_flag = bool(use_valid_flag)
        if len(pc_range) != 6:
            raise ValueError(
                f"pc_range must have 6 numbers (x0, y0, z0, x1, y1, z1), got {pc_range}"
            )
        self.pc_range = tuple(float(v) for v in pc_range)
        self.with_mono = bool(with_mono)
        self.mono_min_points = int(mono_min_points)
        self.pipeline = Compose(transforms if transforms is not None else [LoadMultiViewImages()])

        self.infos = self._sort(infos)
        self._check_cameras()
        self._scene_tokens = [info["scene_token"] for info in self.infos]
        self.indices = list(range(len(self.infos)))
        if self.filter_empty_gt and not self.test_mode:
            self.indices = [i for i in self.indices if self._has_gt_in_range(self.infos[i])]
            if not self.indices:
                raise ValueError(
                    f"{self.info_file}: no sample has a ground-truth box of the classes "
                    f"{list(self.classes)} inside pc_range {list(self.pc_range)}; check the "
                    "classes and the info file, or pass filter_empty_gt=False"
                )

    def summary(self) -> str:
        """One line saying what the dataset reads: dataroot, info file, the nuScenes version
        and split the infos were made from, and the sample count."""
        meta = self.metadata
        devkit = meta.get("devkit_split")
        split = f"{meta.get('split', '?')}" + (f" ({devkit})" if devkit else "")
        kept = "" if len(self) == len(self.infos) else f" of {len(self.infos)} keyframes"
        return (
            f"data_root {os.path.abspath(self.data_root)}, info file {self.info_file} "
            f"({meta.get('dataset_version', '?')}, split {split}): {len(self)} samples{kept}, "
            f"frames {self.frames}, test_mode {self.test_mode}"
        )

    # ---- construction helpers -----------------------------------------------------------

    @staticmethod
    def _sort(infos: list[dict]) -> list[dict]:
        """Scenes in time order (by their first keyframe), keyframes by time within a scene:
        the official code sorts its infos by timestamp; grouping by scene keeps a scene's
        keyframes contiguous even if two scenes overlap in time."""
        start: dict[str, int] = {}
        for info in infos:
            tok = info["scene_token"]
            start[tok] = min(start.get(tok, info["timestamp"]), info["timestamp"])
        return sorted(
            infos, key=lambda s: (start[s["scene_token"]], s["scene_token"], s["timestamp"])
        )

    def _check_cameras(self) -> None:
        """Every camera of ``camera_names`` must be in the info file (its metadata's
        ``camera_names`` and every sample's ``cams``); the images are then stacked in the
        order of ``camera_names``, whatever order the info file lists them in."""
        if not self.camera_names or len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(
                f"camera_names must list cameras once each, got {list(self.camera_names)}"
            )
        listed = self.metadata.get("camera_names")
        for have, where in [(listed, "")] + [
            (list(info["cams"]), f" (sample {info['token']})") for info in self.infos
        ]:
            if have is None:
                continue
            missing = [c for c in self.camera_names if c not in have]
            if missing:
                raise ValueError(
                    f"{self.info_file}: the model was built for cameras "
                    f"{list(self.camera_names)}; the info file has {list(have)}{where}, "
                    f"without {missing}: rebuild the infos with these cameras "
                    "(tools/create_data.py --cameras) or set model camera_names "
                    "(model.bev.encoder.camera_names) to cameras the infos have"
                )

    def _gt(self, info: dict) -> tuple[np.ndarray, np.ndarray]:
        """GT boxes (M, 9) and labels (M,) of the configured classes that pass the valid flag,
        before augmentation and range filtering."""
        boxes = np.asarray(info.get("gt_boxes", []), dtype=np.float64).reshape(-1, BOX_DIM)
        names = list(info.get("gt_names", []))
        if len(names) != len(boxes):
            raise ValueError(
                f"{self.info_file}: sample {info['token']} has {len(boxes)} gt_boxes but "
                f"{len(names)} gt_names; the info file is inconsistent, regenerate it"
            )
        keep = np.array([n in self.classes for n in names], dtype=bool)
        if len(boxes):
            if self.use_valid_flag and "valid_flag" in info:
                keep &= np.asarray(info["valid_flag"], dtype=bool)
            elif "num_lidar_pts" in info:
                keep &= np.asarray(info["num_lidar_pts"]) > 0
        labels = np.array([self.classes.index(n) for n, k in zip(names, keep) if k], np.int64)
        boxes = np.nan_to_num(boxes[keep], nan=0.0)  # unknown velocity -> 0 (mmdetection3d)
        return boxes, labels

    def _has_gt_in_range(self, info: dict) -> bool:
        boxes, _ = self._gt(info)
        return bool(_in_bev_range(boxes, self.pc_range).any())

    def _mono(self, info: dict) -> list[dict[str, Any]]:
        """Per-camera mono targets of the current frame (before image augmentation)."""
        tokens = info.get("instance_tokens", [])
        lidar = info.get("num_lidar_pts", [0] * len(tokens))
        radar = info.get("num_radar_pts", [0] * len(tokens))
        points = {tok: int(n) + int(m) for tok, n, m in zip(tokens, lidar, radar)}

        def num_pts(ann: dict) -> int:
            if "num_pts" in ann:
                return int(ann["num_pts"])
            return points.get(ann.get("instance_token", ""), 0)

        per_cam = info.get("mono", {})
        out = []
        for cam in self.camera_names:
            anns = [
                a
                for a in per_cam.get(cam, [])
                if a["name"] in self.classes
                and float(a["depth"]) > 0
                and num_pts(a) >= self.mono_min_points
            ]
            target: dict[str, Any] = {}
            for src, (dst, width) in _MONO_FLOAT_KEYS.items():
                shape = (len(anns), width) if width else (len(anns),)
                missing = [math.nan] * width if width else math.nan
                values = [a[src] if a.get(src) is not None else missing for a in anns]
                target[dst] = np.asarray(values, dtype=np.float64).reshape(shape)
            target["labels"] = np.array([self.classes.index(a["name"]) for a in anns], np.int64)
            attrs = tuple(a.get("attribute", "") or "" for a in anns)
            target["attr_labels"] = np.array(
                [MONO_ATTRIBUTE_IDS.get(a, MONO_NO_ATTRIBUTE) for a in attrs], np.int64
            )
            target["attributes"] = attrs
            out.append(target)
        return out

    # ---- temporal sampling --------------------------------------------------------------

    def frame_sources(self, info_index: int) -> tuple[list[int], list[bool]]:
        """For the keyframe ``info_index``: the info index that fills each slot and whether the
        slot's own frame exists (same scene). Missing slots take the nearest existing slot
        towards the current frame."""
        scene = self._scene_tokens[info_index]
        valid = []
        for off in self.frames:
            j = info_index + off
            valid.append(0 <= j < len(self.infos) and self._scene_tokens[j] == scene)
        sources = [info_index + off if ok else -1 for off, ok in zip(self.frames, valid)]
        cur = self.frames.index(0)
        for t in range(cur - 1, -1, -1):  # past: take the next-newer slot
            if not valid[t]:
                sources[t] = sources[t + 1]
        for t in range(cur + 1, len(self.frames)):  # future: take the next-older slot
            if not valid[t]:
                sources[t] = sources[t - 1]
        return sources, valid

    def image_paths(self, idx: int) -> list[list[str]]:
        """The image files item ``idx`` reads, ``T x N`` (frame slots x ``camera_names``),
        joined to ``data_root``; nothing is decoded."""
        if not 0 <= idx < len(self.indices):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} samples")
        sources, _ = self.frame_sources(self.indices[idx])
        return [
            [self._path(self.infos[j]["cams"][cam]["data_path"]) for cam in self.camera_names]
            for j in sources
        ]

    def _path(self, rel: str) -> str:
        return resolve_path(self.data_root, rel)

    def _results(self, info_index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        """The transform input of one item (see ``bevformer.data.transforms``)."""
        cur = self.infos[info_index]
        sources, valid = self.frame_sources(info_index)
        lidar2ego_cur = _matrix(cur["lidar2ego"], (4, 4), "lidar2ego")
        ego2global_cur = _matrix(cur["ego2global"], (4, 4), "ego2global")
        curr_from_global = invert(lidar2ego_cur) @ invert(ego2global_cur)
        T, N = len(self.frames), len(self.camera_names)
        intrinsics = np.zeros((T, N, 3, 3))
        cam2lidar = np.zeros((T, N, 4, 4))
        paths, sizes = [], np.zeros((T, N, 2), dtype=np.int64)
        for t, j in enumerate(sources):
            info = self.infos[j]
            # lidar frame of frame j -> current lidar frame (identity for j == current)
            adj2curr = (
                curr_from_global
                @ _matrix(info["ego2global"], (4, 4), "ego2global")
                @ _matrix(info["lidar2ego"], (4, 4), "lidar2ego")
            )
            row = []
            for n, cam in enumerate(self.camera_names):
                c = info["cams"][cam]
                intrinsics[t, n] = _matrix(c["intrinsics"], (3, 3), f"{cam} intrinsics")
                cam2lidar[t, n] = adj2curr @ _matrix(c["cam2lidar"], (4, 4), f"{cam} cam2lidar")
                row.append(self._path(c["data_path"]))
                sizes[t, n] = (int(c["width"]), int(c["height"]))
            paths.append(row)
        boxes, labels = self._gt(cur)
        return {
            "img_paths": paths,
            "img_sizes": sizes,
            "intrinsics": intrinsics,
            "cam2lidar": cam2lidar,
            "lidar2img": lidar2img(intrinsics, cam2lidar),
            "ida": np.eye(3),
            "flip": False,
            "bda": np.eye(4),
            "gt_boxes": boxes,
            "gt_labels": labels,
            "mono": self._mono(cur) if self.with_mono else None,
            "frame_sources": sources,
            "frame_valid": valid,
            "test_mode": self.test_mode,
            "rng": rng,
        }

    # ---- item ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.get_item(idx)

    # ---- augmentation randomness ---------------------------------------------------------
    # Each item draws its augmentation from ``np.random.default_rng([seed, epoch, idx])``: a
    # pure function of the run's seed, the epoch and the index, independent of the global RNGs,
    # of the DataLoader workers and of what was loaded before, so a resumed run sees the same
    # augmentations as an uninterrupted one. Seed and epoch live in a shared-memory tensor:
    # persistent DataLoader workers see ``set_epoch`` calls made in the main process.

    def _aug_state(self) -> torch.Tensor:
        state = self.__dict__.get("_aug_seed_epoch")
        if state is None:
            state = torch.zeros(2, dtype=torch.int64)
            self._aug_seed_epoch = state
        if not state.is_shared():
            state.share_memory_()
        return state

    def set_seed(self, seed: int) -> None:
        """Seed of the augmentation randomness (the run's ``randomness.seed``)."""
        self._aug_state()[0] = int(seed)

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the augmentation randomness; call before the epoch's iterator is made."""
        self._aug_state()[1] = int(epoch)

    def aug_rng(self, idx: int) -> np.random.Generator:
        """The generator item ``idx`` draws its augmentation from in the current epoch."""
        seed, epoch = (int(v) for v in self._aug_state().tolist())
        return np.random.default_rng([seed, epoch, int(idx)])

    def get_item(self, idx: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Item ``idx``. Random transforms draw from ``rng``, by default from
        :meth:`aug_rng` (seed, epoch, index)."""
        if not 0 <= idx < len(self.indices):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} samples")
        if rng is None:
            rng = self.aug_rng(idx)
        info_index = self.indices[idx]
        results = self.pipeline(self._results(info_index, rng))
        return self._finalize(info_index, results)

    def _finalize(self, info_index: int, results: dict[str, Any]) -> dict[str, Any]:
        cur = self.infos[info_index]
        imgs = results.get("img")
        if imgs is None:
            raise KeyError("the transforms produced no 'img': put LoadMultiViewImages first")
        shapes = {img.shape for row in imgs for img in row}
        if len(shapes) != 1:
            raise ValueError(
                f"the images of sample {cur['token']} differ in size after the transforms "
                f"({sorted(shapes)}); add CropResizeFlipImage and/or PadMultiViewImage"
            )
        # T x N x (H, W, 3) -> (T, N, 3, H, W)
        img = torch.from_numpy(np.ascontiguousarray(np.stack([np.stack(r) for r in imgs])))
        img = img.permute(0, 1, 4, 2, 3).float().contiguous()

        boxes = np.asarray(results["gt_boxes"], dtype=np.float64).reshape(-1, BOX_DIM)
        labels = np.asarray(results["gt_labels"], dtype=np.int64)
        keep = _in_bev_range(boxes, self.pc_range)
        boxes, labels = boxes[keep].copy(), labels[keep]
        boxes[:, YAW] = _limit_yaw(boxes[:, YAW])

        mono: dict[str, list] = {}
        for ann in results.get("mono") or []:
            for key, value in ann.items():
                if isinstance(value, np.ndarray):
                    dtype = torch.int64 if value.dtype.kind in "iu" else torch.float32
                    value = torch.as_tensor(value, dtype=dtype)
                mono.setdefault(key, []).append(value)

        sources = results["frame_sources"]
        frame_valid = tuple(bool(v) for v in results["frame_valid"])
        cur_slot = self.frames.index(0)
        pad_shape = tuple(int(v) for v in img.shape[-2:])
        ori = results.get("ori_shapes")
        meta = SampleMeta(
            token=cur["token"],
            scene_token=cur["scene_token"],
            scene_name=cur.get("scene_name", ""),
            frame_idx=int(cur.get("frame_idx", -1)),
            timestamp=int(cur["timestamp"]),
            camera_names=self.camera_names,
            frame_offsets=self.frames,
            frame_tokens=tuple(self.infos[j]["token"] for j in sources),
            frame_timestamps=tuple(int(self.infos[j]["timestamp"]) for j in sources),
            frame_valid=frame_valid,
            image_paths=tuple(tuple(r) for r in results["img_paths"]),
            ori_shapes=tuple(tuple(int(v) for v in s) for s in ori[cur_slot]) if ori else (),
            img_shape=tuple(results.get("img_shape") or pad_shape),
            pad_shape=pad_shape,
            flip=bool(results.get("flip", False)),
            ida=np.asarray(results.get("ida", np.eye(3))),
            bda=np.asarray(results.get("bda", np.eye(4))),
            lidar2ego=_matrix(cur["lidar2ego"], (4, 4), "lidar2ego"),
            ego2global=_matrix(cur["ego2global"], (4, 4), "ego2global"),
        )
        return {
            "img": img,
            "lidar2img": torch.as_tensor(results["lidar2img"], dtype=torch.float32),
            "intrinsics": torch.as_tensor(results["intrinsics"], dtype=torch.float32),
            "cam2lidar": torch.as_tensor(results["cam2lidar"], dtype=torch.float32),
            "frame_valid": torch.tensor(frame_valid, dtype=torch.bool),
            "bda": torch.as_tensor(results.get("bda", np.eye(4)), dtype=torch.float32),
            "flip": meta.flip,
            "gt_boxes": torch.as_tensor(boxes, dtype=torch.float32),
            "gt_labels": torch.as_tensor(labels, dtype=torch.int64),
            "mono": mono,
            "meta": meta,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.info_file!r}, {len(self)} samples, "
            f"frames={self.frames}, cameras={len(self.camera_names)}, test_mode={self.test_mode})"
        )
