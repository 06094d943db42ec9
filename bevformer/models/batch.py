"""What the detector reads from a batch besides tensors: checks of ``img`` and per-sample meta.

The batch layout and the meta fields (:class:`bevformer.data.meta.SampleMeta`: ``token``,
``scene_token``, ``camera_names``, ``flip``, ``lidar2ego``, ``ego2global``) are in
``docs/CONVENTIONS.md``; a meta entry may also be a plain dict with those keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_cameras",
    "check_img",
    "current_slice",
    "flip_of",
    "lidar2global_of",
    "meta_attr",
    "scenes_of",
]


def meta_attr(meta: Any, name: str, default: Any = None) -> Any:
    """Field ``name`` of one sample's meta (an object or a dict); ``default`` when absent."""
    if meta is None:
        return default
    if isinstance(meta, dict):
        return meta.get(name, default)
    return getattr(meta, name, default)


def check_img(img: Tensor, img_shape: Sequence[int] | None) -> None:
    """``img`` must be ``[B, T, N, 3, H, W]`` and ``img_shape`` (when given) its padded size
    ``(H, W)``; raises ``ValueError`` otherwise."""
    if img.dim() != 6:
        raise ValueError(
            f"img must be [B, T, N, 3, H, W] (docs/CONVENTIONS.md), got {tuple(img.shape)}"
        )
    if img_shape is not None and tuple(int(v) for v in img_shape) != tuple(img.shape[-2:]):
        raise ValueError(
            f"img_shape {tuple(img_shape)} is not the padded image size "
            f"{tuple(img.shape[-2:])} of img; pass the batch of bevformer.data.collate"
        )


def check_cameras(meta: Sequence[Any] | None, camera_names: Sequence[str]) -> None:
    """Each sample's ``meta.camera_names`` (the order the dataset stacked its images in) must
    equal the model's ``camera_names`` (the order of its camera embeddings); raises
    ``ValueError`` naming both lists. Samples without the field are not checked."""
    for b, m in enumerate(meta or ()):
        names = meta_attr(m, "camera_names")
        if names is not None and tuple(names) != tuple(camera_names):
            raise ValueError(
                f"sample {b} ({meta_attr(m, 'token', '?')}) has its images in the camera "
                f"order {list(names)} but the model was built for the cameras "
                f"{list(camera_names)} (encoder camera_names; camera embedding n is "
                "for camera n): build the dataset with camera_names = the model's list "
                "(the launcher does so from model.bev.encoder.camera_names)"
            )


def flip_of(
    flip: Tensor | Sequence[bool] | None, meta: Sequence[Any] | None, B: int, device: Any
) -> Tensor | None:
    """The batch's ``flip [B]`` bool (samples whose images are mirrored), else each meta's
    ``flip``; None when neither is given."""
    if flip is None and meta is not None:
        flip = [bool(meta_attr(m, "flip", False)) for m in meta]
    if flip is None:
        return None
    return torch.as_tensor(flip, dtype=torch.bool, device=device).view(B)


def lidar2global_of(meta: Sequence[Any] | None, device: Any) -> Tensor:
    """``[B, 4, 4]`` float64 ``ego2global @ lidar2ego`` of each sample; raises ``ValueError``
    when a sample's meta lacks them (streaming needs them to align the previous BEV)."""
    if meta is None or any(meta_attr(m, "ego2global") is None for m in meta):
        raise ValueError(
            "temporal='streaming' needs each sample's meta with lidar2ego and ego2global "
            "(SampleMeta from the dataset) to align the previous BEV"
        )
    mats = [
        np.asarray(meta_attr(m, "ego2global"), dtype=np.float64)
        @ np.asarray(meta_attr(m, "lidar2ego"), dtype=np.float64)
        for m in meta
    ]
    return torch.as_tensor(np.stack(mats), device=device)


def scenes_of(meta: Sequence[Any] | None, B: int) -> tuple[str, ...]:
    """Scene token of each of the B samples ("" where unknown)."""
    return tuple(str(meta_attr(m, "scene_token", "")) for m in (meta or [None] * B))


def current_slice(value: Tensor | None, name: str, slot: int, device: Any) -> Tensor:
    """The current frame's slice ``[B, N, ...]`` of the batch entry ``name`` ``[B, T, N, ...]``
    (``slot``: the current frame's index); raises ``ValueError`` when the batch lacks it (the
    perspective stage and the hybrid queries need ``intrinsics`` and ``cam2lidar``)."""
    if value is None:
        raise ValueError(
            f"the perspective head / hybrid queries need the batch's {name!r} "
            "[B, T, N, ...] (docs/CONVENTIONS.md); the dataset provides it"
        )
    return torch.as_tensor(value, device=device)[:, slot]
