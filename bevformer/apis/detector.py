"""Streaming inference: one keyframe in, its boxes out, the temporal context kept in between.

:class:`Detector` runs a trained BEVFormer v2 the way a car would: keyframes of one scene
arrive one at a time, in time order, and each call returns that keyframe's boxes. It gives the
same boxes as the batch path (``tools/test.py``: the test dataset's items through
``BEVFormerV2.forward(mode="predict")``), with one backbone pass per keyframe:

- the keyframe's images go through the config's test pipeline (the dataset code itself,
  :class:`~bevformer.data.dataset.NuScenesTemporalDataset` on the keyframes seen so far, so
  the camera matrices of the past frames are re-expressed in the current lidar frame as in
  training);
- the neck maps of each keyframe are kept while a later keyframe still uses it as a past frame
  (``frames`` of the model), and the BEV stage re-encodes those past frames on the current grid
  from the kept maps (BEVFormer v2 fusion) -- the backbone never runs twice on an image;
- ``temporal="streaming"`` models carry their :class:`~bevformer.models.temporal.TemporalState`
  from call to call, as the streaming test loop does;
- a keyframe of another scene starts over without history.

A keyframe is one entry of an info file (``docs/CONVENTIONS.md`` "Info files": ``token``,
``scene_token``, ``timestamp``, ``lidar2ego``, ``ego2global`` and per camera ``data_path``,
``intrinsics``, ``cam2lidar``, ``width``, ``height``); image paths are relative to
``data_root``. Boxes are in that keyframe's lidar frame (``docs/CONVENTIONS.md`` box vector).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from mmengine.config import Config
from torch import Tensor

from bevformer.builder import build_model
from bevformer.checkpoint import load_model_weights
from bevformer.data.collate import collate
from bevformer.data.dataset import InfoList, NuScenesTemporalDataset
from bevformer.data.transforms import Compose
from bevformer.models.detector import BEVFormerV2
from bevformer.models.temporal import TemporalState

__all__ = ["Detector"]

# what a keyframe must have (the rest of an info entry, e.g. ground truth, is optional)
FRAME_KEYS = ("token", "scene_token", "timestamp", "lidar2ego", "ego2global", "cams")


class Detector:
    """A BEVFormer v2 model for one keyframe at a time (module docstring).

    ``model``: a :class:`~bevformer.models.detector.BEVFormerV2` with its weights;
    ``test_dataset``: the config's test dataset node (its ``transforms``, ``classes``,
    ``pc_range`` are used; ``frames`` and ``camera_names`` are the model's); ``data_root``:
    the folder the keyframes' image paths are relative to. The model is put in eval mode.
    """

    def __init__(
        self,
        model: BEVFormerV2,
        test_dataset: Mapping[str, Any],
        data_root: str | os.PathLike,
        device: str | torch.device = "cpu",
    ) -> None:
        if any(offset > 0 for offset in model.frames):
            raise ValueError(
                f"the model's frames {model.frames} include future keyframes, which a stream "
                "does not have yet; streaming inference needs offsets <= 0"
            )
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.data_root = os.fspath(data_root)
        self.pipeline = Compose(list(test_dataset.get("transforms") or []))
        self._dataset_options = {
            key: test_dataset[key] for key in ("classes", "pc_range") if key in test_dataset
        }
        self._window = 1 - min(model.frames)  # keyframes a call looks at, itself included
        self.reset()

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike | Config,
        checkpoint: str | os.PathLike,
        *,
        data_root: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        cfg_options: Mapping[str, Any] | None = None,
    ) -> Detector:
        """The model of ``config`` (a path, with ``cfg_options`` as ``--cfg-options``, or a
        loaded :class:`mmengine.config.Config`) with the weights of ``checkpoint`` (this
        project's or an official BEVFormer v2 file, loaded strictly: a checkpoint that does
        not fit raises ``ValueError`` naming the keys). ``data_root`` defaults to the config's.
        """
        # imported here: the launcher is only needed to read a config the way tools/ do
        from bevformer.engine.launch import load_config

        if isinstance(config, Config):
            cfg = config
        else:
            root = os.fspath(data_root) if data_root is not None else None
            cfg = load_config(os.fspath(config), dict(cfg_options or {}), data_root=root)
        model = build_model(cfg.model)
        load_model_weights(model, checkpoint)
        root = data_root if data_root is not None else cfg.get("data_root")
        if root is None:
            raise ValueError(
                "no data_root: give Detector.from_config(..., data_root=DIR), the folder the "
                "keyframes' image paths are relative to"
            )
        return cls(model, cfg.test_dataloader.dataset, root, device)

    def reset(self) -> None:
        """Forget the scene: the next keyframe starts without history."""
        self._history: list[dict[str, Any]] = []
        self._features: dict[str, list[Tensor]] = {}
        self._state: TemporalState | None = None

    @torch.no_grad()
    def __call__(self, frame: Mapping[str, Any]) -> dict[str, Any]:
        """One keyframe (an info entry) -> ``{"boxes" (K, 9) lidar box vectors, "scores" (K,),
        "labels" (K,), "token"}`` on the model's device.

        Raises ``KeyError`` naming what a keyframe lacks, ``ValueError`` for a keyframe that
        is not later than the previous one of its scene, and the dataset's errors (a missing
        camera, an unreadable image) naming the file or camera.
        """
        missing = [key for key in FRAME_KEYS if key not in frame]
        if missing:
            raise KeyError(
                f"keyframe {frame.get('token', '?')} lacks {missing}; a keyframe is an entry of "
                "an info file (docs/CONVENTIONS.md), e.g. from bevformer.data.infos.load_infos"
            )
        frame = dict(frame)
        if self._history and frame["scene_token"] != self._history[-1]["scene_token"]:
            self.reset()
        if self._history and int(frame["timestamp"]) <= int(self._history[-1]["timestamp"]):
            raise ValueError(
                f"keyframe {frame['token']} (timestamp {frame['timestamp']}) is not later than "
                f"the previous keyframe {self._history[-1]['token']} of its scene "
                f"({self._history[-1]['timestamp']}); give the keyframes in time order or call "
                "reset() first"
            )
        self._history = (self._history + [frame])[-self._window :]
        data = self._batch()
        result, state = self.model.infer(
            data["img"],
            data["lidar2img"],
            data["frame_valid"],
            data["bda"],
            None,
            data["meta"],
            data["intrinsics"],
            data["cam2lidar"],
            self._state,
            want_state=self.model.bev.temporal == "streaming",
            features=self._slot_features(data),
        )
        self._state = state
        kept = {info["token"] for info in self._history}
        self._features = {t: f for t, f in self._features.items() if t in kept}
        return result[0]

    def _batch(self) -> dict[str, Any]:
        """The current keyframe as a batch of one (``docs/CONVENTIONS.md``), on the device."""
        dataset = NuScenesTemporalDataset(
            InfoList({}, self._history, name="<keyframes of the stream>"),
            self.data_root,
            frames=self.model.frames,
            transforms=self.pipeline.transforms,
            camera_names=self.model.camera_names,
            test_mode=True,
            filter_empty_gt=False,
            with_mono=False,
            **self._dataset_options,
        )
        index = next(i for i, info in enumerate(dataset.infos) if info is self._history[-1])
        data = collate([dataset.get_item(index)])
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in data.items()}

    def _slot_features(self, data: dict[str, Any]):
        """``t -> neck maps of slot t``: the current keyframe's from the backbone (kept for
        later calls), a past keyframe's from what was kept when it was current."""
        tokens = data["meta"][0].frame_tokens
        current = self.model.current_slot

        def features(t: int) -> list[Tensor]:
            token = tokens[t]
            if token not in self._features:
                if t != current:
                    raise RuntimeError(f"no kept features for past keyframe {token}")
                img = data["img"][:, current]
                self._features[token] = self.model.extract_feat(img, None, augment=False)
            return self._features[token]

        return features
