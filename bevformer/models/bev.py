"""The BEV stage of BEVFormer v2: one BEV per frame, the temporal strategy, the BEV augmentation.

:class:`TemporalBEV` owns the :class:`~bevformer.models.encoder.BEVEncoder` and, for multi-frame
configs, the :class:`~bevformer.models.temporal.ResNetFusion`. It turns the neck maps of the
current frame (and, through :meth:`TemporalBEV.past_bevs`, those of the other frames of the
batch) into the BEV the decoder reads:

- ``temporal="fusion"`` (BEVFormer v2, official ``PerceptionTransformerV2`` +
  ``obtain_history_bev`` of ``detectors/bevformerV2.py``): every slot of ``frames`` is encoded on
  the *current* grid (the dataset re-expresses the past cameras' ``lidar2img`` in the current
  lidar frame), the past slots in eval mode without gradients; missing slots take the
  next-newer BEV (:func:`~bevformer.models.temporal.fill_missing_frames`); each BEV is resampled
  for the BEV augmentation ``bda`` (:func:`~bevformer.models.bda.resample_bev`) and the T maps
  are fused. ``history_grad=True`` (an ablation, not official) encodes the past slots like the
  current one instead: in the model's mode, with gradients.
- ``temporal="streaming"`` (BEVFormer v1 temporal self-attention): the encoder attends to the
  previous BEV -- the batch's previous slot when it has one (the past slots are encoded oldest
  first, each attending to the one before), else the carried
  :class:`~bevformer.models.temporal.TemporalState` aligned with the ego motion.

Legend: B batch, T frames, N cameras, L levels, Q = H*W BEV cells, C channels.

    feats L x [B, N, C, h, w], lidar2img [B, T, N, 4, 4] -> bev [B, Q, C] (+ TemporalState)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from bevformer.models.bda import resample_bev
from bevformer.models.encoder import BEVEncoder
from bevformer.models.temporal import PreviousBEV, TemporalState, fill_missing_frames
from bevformer.registry import MODELS
from bevformer.structures.grid import BEVGrid

__all__ = ["TEMPORAL_MODES", "TemporalBEV"]

TEMPORAL_MODES = ("fusion", "streaming")


@MODELS.register_module()
class TemporalBEV(nn.Module):
    """Encoder + temporal strategy + missing frames + BEV augmentation (module docstring).

    ``frames``: increasing keyframe offsets containing 0 (the current slot is the index of 0);
    ``temporal``: one of :data:`TEMPORAL_MODES`; ``fusion`` is required (and used) only for
    ``temporal="fusion"`` with more than one frame, and refused with ``"streaming"``.
    ``history_grad``: False (official ``obtain_history_bev``) encodes the past slots in eval mode
    without gradients; True in the model's mode with gradients, so that the backbone, neck and
    encoder also learn from what the fused BEV needs of the past frames (refused with one
    frame, where it would do nothing). Raises ``ValueError`` for anything else.
    """

    def __init__(
        self,
        encoder: BEVEncoder,
        fusion: nn.Module | None = None,
        frames: Sequence[int] = (0,),
        temporal: str = "fusion",
        history_grad: bool = False,
    ) -> None:
        super().__init__()
        self.frames = tuple(int(f) for f in frames)
        if 0 not in self.frames or list(self.frames) != sorted(set(self.frames)):
            raise ValueError(
                f"frames must be increasing keyframe offsets that contain 0, got {self.frames}"
            )
        if temporal not in TEMPORAL_MODES:
            raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
        if temporal == "fusion" and len(self.frames) > 1 and fusion is None:
            raise ValueError(
                f"frames={self.frames} need a fusion module (e.g. ResNetFusion with in_channels "
                "= len(frames) * embed_dims); give `fusion` or use frames=(0,)"
            )
        if temporal == "streaming" and fusion is not None:
            raise ValueError(
                f"temporal='streaming' attends to the past BEV in the encoder and fuses nothing, "
                f"but a fusion module ({type(fusion).__name__}) was given; set fusion=None "
                "(e.g. --cfg-options model.bev.fusion=None) or use temporal='fusion'"
            )
        if history_grad and len(self.frames) == 1:
            raise ValueError(
                f"history_grad=True trains through the past frames, but frames={self.frames} "
                "has none; drop history_grad or add past frames"
            )
        self.temporal = temporal
        self.history_grad = bool(history_grad)
        self.encoder = encoder
        self.fusion = fusion if temporal == "fusion" and len(self.frames) > 1 else None

    @property
    def grid(self) -> BEVGrid:
        """The BEV grid (the encoder's), which every BEV of this module is on."""
        return self.encoder.grid

    @property
    def current_slot(self) -> int:
        """Index of the current frame (offset 0) in ``frames``."""
        return self.frames.index(0)

    def frame_validity(
        self, frame_valid: Tensor | None, B: int, T: int, device: torch.device
    ) -> Tensor:
        """``frame_valid [B, T]`` bool (all valid when None) after checking that the batch's T
        slots are this module's ``frames``; raises ``ValueError`` otherwise."""
        if T != len(self.frames):
            raise ValueError(
                f"the batch has {T} frames but the model is configured with frames="
                f"{self.frames}; use the same `frames` for the dataset and the model"
            )
        if frame_valid is None:
            return torch.ones(B, T, dtype=torch.bool, device=device)
        return frame_valid.to(device=device, dtype=torch.bool)

    def encode(
        self,
        feats: Sequence[Tensor],
        lidar2img: Tensor,
        img_shape: Sequence[int],
        prev_bev: Tensor | None = None,
        prev_valid: Tensor | None = None,
    ) -> Tensor:
        """One frame: neck maps ``L x [B, N, C, h, w]``, ``lidar2img [B, N, 4, 4]``, padded
        ``img_shape`` (H, W) -> BEV ``[B, Q, C]`` (:meth:`BEVEncoder.forward`)."""
        return self.encoder(feats, lidar2img, img_shape, prev_bev, prev_valid)

    def past_bevs(
        self,
        features: Callable[[int], Sequence[Tensor]],
        lidar2img: Tensor,
        img_shape: Sequence[int],
        frame_valid: Tensor,
    ) -> list[Tensor | None]:
        """BEVs of the slots other than the current one, without gradients (with them when
        ``history_grad``).

        ``features(t)`` gives slot t's neck maps (the caller runs its backbone in eval mode, as
        the official ``obtain_history_bev``, or in the model's mode when ``history_grad``); a
        slot no sample has (``frame_valid [B, T]``) is not encoded and stays None (during ONNX
        export every slot is encoded), as does the current slot. The caller sets this module's
        mode too. Returns T entries ``[B, Q, C]`` or None.
        """
        bevs: list[Tensor | None] = [None] * len(self.frames)
        prev, prev_valid = None, None
        # an exported graph encodes every slot (whether one is valid is known at run time
        # only); the invalid ones are replaced by fill_missing_frames all the same
        every_slot = torch.onnx.is_in_onnx_export()
        with torch.set_grad_enabled(self.history_grad and torch.is_grad_enabled()):
            for t in range(len(self.frames)):
                if t == self.current_slot:
                    continue
                if not every_slot and not bool(frame_valid[:, t].any()):
                    continue
                if self.temporal == "streaming" and prev is not None:
                    bev = self.encode(features(t), lidar2img[:, t], img_shape, prev, prev_valid)
                else:
                    bev = self.encode(features(t), lidar2img[:, t], img_shape)
                bevs[t] = bev  # no graph unless history_grad (set_grad_enabled above)
                if t < self.current_slot:
                    prev, prev_valid = bevs[t], frame_valid[:, t]
        return bevs

    def augment(self, bev: Tensor, bda: Tensor | None) -> Tensor:
        """BEV augmentation of ``bev [B, Q, C]`` with the GT's ``bda [B, 4, 4]`` (identity when
        None): the feature of lidar point p moves to ``bda @ p``."""
        if bda is None:
            return bev
        grid = self.grid
        return grid.map_to_tokens(resample_bev(grid.tokens_to_map(bev), bda.to(bev), grid))

    def forward(
        self,
        feats: Sequence[Tensor],
        lidar2img: Tensor,
        img_shape: Sequence[int],
        *,
        past: Sequence[Tensor | None] | None = None,
        frame_valid: Tensor | None = None,
        bda: Tensor | None = None,
        prev_state: TemporalState | PreviousBEV | None = None,
        lidar2global: Tensor | None = None,
        scene_tokens: Sequence[str] = (),
        want_state: bool = False,
    ) -> tuple[Tensor, TemporalState | None]:
        """The current frame's neck maps ``L x [B, N, C, h, w]`` and ``lidar2img [B, T, N, 4,
        4]`` -> (BEV ``[B, Q, C]`` on the augmented grid, streaming state or None).

        ``past``: :meth:`past_bevs` (None for a single frame); ``frame_valid [B, T]`` (default
        all valid). Streaming only: ``prev_state`` from the previous call, ``lidar2global [B, 4,
        4]`` float64 and ``scene_tokens`` of this frame's samples (needed with a
        :class:`TemporalState` or ``want_state``; a :class:`PreviousBEV` brings its own motion
        and validity); ``want_state`` returns the state for the next call.
        """
        B, T = lidar2img.shape[:2]
        frame_valid = self.frame_validity(frame_valid, B, T, lidar2img.device)
        slots = list(past) if past is not None else [None] * T
        cur = self.current_slot
        prev_bev, prev_valid = None, None
        if self.temporal == "streaming":
            prev_bev, prev_valid = self._streaming_prev(
                slots, frame_valid, prev_state, lidar2global, scene_tokens
            )
        bev = self.encode(feats, lidar2img[:, cur], img_shape, prev_bev, prev_valid)
        state = None
        if self.temporal == "streaming" and want_state:
            state = TemporalState(bev.detach(), _required(lidar2global), tuple(scene_tokens))
        if self.fusion is None:
            return self.augment(bev, bda), state
        slots[cur] = bev
        filled = fill_missing_frames(slots, frame_valid, cur)
        maps = [self.grid.tokens_to_map(self.augment(s, bda)) for s in filled]  # T x [B, C, H, W]
        return self.fusion(maps), state

    def _streaming_prev(
        self,
        slots: list[Tensor | None],
        frame_valid: Tensor,
        prev_state: TemporalState | PreviousBEV | None,
        lidar2global: Tensor | None,
        scene_tokens: Sequence[str],
    ) -> tuple[Tensor | None, Tensor | None]:
        """Previous BEV ``[B, Q, C]`` on the current grid and which samples have one ``[B]``:
        the batch's own previous slot (already on the current grid) where it is valid, else
        the carried state aligned with the ego motion between the two lidar frames."""
        cur = self.current_slot
        own = slots[cur - 1] if cur > 0 else None
        own_valid = frame_valid[:, cur - 1] if own is not None else None
        if prev_state is None:
            return own, own_valid
        if isinstance(prev_state, TemporalState):
            lidar2global = _required(lidar2global)
        aligned, valid = prev_state.aligned_to(lidar2global, scene_tokens, self.grid)
        if own is None:
            return aligned, valid
        keep = own_valid.view(-1, 1, 1)  # [B] -> [B, 1, 1] over [B, Q, C]
        return torch.where(keep, own, aligned), own_valid | valid


def _required(lidar2global: Tensor | None) -> Tensor:
    if lidar2global is None:
        raise ValueError(
            "temporal='streaming' needs each sample's lidar2global [B, 4, 4] (from the meta's "
            "lidar2ego and ego2global) to carry and align the previous BEV"
        )
    return lidar2global
