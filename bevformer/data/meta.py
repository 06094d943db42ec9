"""Typed per-sample metadata that travels with a sample from the dataset to the model.

One :class:`SampleMeta` per sample: identity of the keyframe (token, scene, time), which info
fills each temporal slot, the image augmentation that was applied (crop/resize matrix ``ida``,
horizontal ``flip``), the BEV augmentation ``bda`` and the current frame's poses (the result
writer needs ``lidar2ego`` and ``ego2global`` to place lidar-frame boxes in the global frame).
Frames, matrices and slot order are defined in ``docs/CONVENTIONS.md``.

Shapes (T frames, N cameras)::

    frame_*        tuples of length T          image_paths   T x N
    ida            (3, 3) pixel -> pixel       bda           (4, 4) lidar -> augmented lidar
    lidar2ego      (4, 4)                      ego2global    (4, 4) at the lidar timestamp
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["SampleMeta"]


@dataclass(frozen=True, eq=False)
class SampleMeta:
    """Metadata of one (temporal, multi-camera) sample.

    ``frame_tokens[t]`` is the sample token whose data fills slot ``t``; where a past frame is
    missing (scene start) the slot repeats the next-newer existing frame and
    ``frame_valid[t]`` is False. ``img_shape`` is the augmented image size before padding and
    ``pad_shape`` after the sample's own padding (the collate may pad further to the batch's
    common size). ``flip`` means the image content is mirrored left-right while ``lidar2img``
    and the intrinsics describe the unflipped image (official BEVFormer v2 semantics: the model
    flips its feature maps back). ``camera_names[n]`` is the camera of image slot n (the
    dataset's ``camera_names``, matched by name in the info file); the detector refuses a
    sample whose list differs from its own (``BEVFormerV2.check_cameras``).
    """

    token: str
    scene_token: str
    scene_name: str
    frame_idx: int
    timestamp: int  # microseconds
    camera_names: tuple[str, ...]
    frame_offsets: tuple[int, ...]
    frame_tokens: tuple[str, ...]
    frame_timestamps: tuple[int, ...]
    frame_valid: tuple[bool, ...]
    image_paths: tuple[tuple[str, ...], ...]
    ori_shapes: tuple[tuple[int, int], ...]  # (H, W) of each camera's file, current frame
    img_shape: tuple[int, int]
    pad_shape: tuple[int, int]
    flip: bool
    ida: np.ndarray = field(repr=False)
    bda: np.ndarray = field(repr=False)
    lidar2ego: np.ndarray = field(repr=False)
    ego2global: np.ndarray = field(repr=False)

    @property
    def current_slot(self) -> int:
        """Index ``t`` of the current keyframe among the temporal slots."""
        return self.frame_offsets.index(0)
