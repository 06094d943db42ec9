"""BEVFormer v2: the camera-only 3D detector (Yang et al., "BEVFormer v2", CVPR 2023,
arXiv:2211.10439), one class for every variant (frames, temporal mode, backbone: config).

Data flow (official ``detectors/bevformerV2.py`` + ``modules/transformerV2.py``; the map with
shapes is at the top of ``docs/ARCHITECTURE.md``):

1. Every frame slot: (GridMask in training) -> backbone -> neck, flips undone; past slots in
   eval mode without gradients. The first ``num_levels`` maps feed the BEV stage.
2. The BEV stage (``bev``, :class:`~bevformer.models.bev.TemporalBEV`): encoder on the current
   grid, missing frames, BEV augmentation (``bda``), fusion of the T BEVs or v1-style temporal
   self-attention with a carried :class:`~bevformer.models.temporal.TemporalState`.
3. The perspective stage (``perspective``, optional,
   :class:`~bevformer.models.perspective.stage.PerspectiveStage`): FCOS3D losses on the
   current frame in training and, with ``perspective.hybrid``, extra decoder queries.
4. The head's decoder runs its queries over the BEV; ``criterion``
   (:class:`~bevformer.models.criterion.SetCriterion3D`) turns its outputs into losses,
   ``post_processor`` (:class:`~bevformer.models.coder.NMSFreeCoder`) into boxes.

Batch keys and frames: ``docs/CONVENTIONS.md``. Legend: B batch, T frames, N cameras,
Q = H*W BEV cells, C channels.

    img [B, T, N, 3, H, W]   lidar2img [B, T, N, 4, 4]   -> BEV [B, Q, C] -> head outputs
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from mmengine.model import BaseModel
from torch import Tensor, nn

from bevformer.models import batch
from bevformer.models.bev import TemporalBEV
from bevformer.models.blocks import evaluating
from bevformer.models.coder import NMSFreeCoder
from bevformer.models.grid_mask import GridMask
from bevformer.models.losses import check_finite_losses
from bevformer.models.perspective.stage import PerspectiveStage, require_mono
from bevformer.models.temporal import PreviousBEV, TemporalState
from bevformer.registry import MODELS
from bevformer.structures.grid import BEVGrid

__all__ = ["BEVFormerV2", "SlotFeatures"]

# t -> the neck maps of frame slot t, L x [B, N, C, h, w] (flips undone)
SlotFeatures = Callable[[int], list[Tensor]]

# State-dict layout 2: the BEV and perspective stages are modules. Layout-1 keys (those parts at
# the top level) are renamed on load, in order (bevformer.checkpoint.migrate_layout;
# docs/ARCHITECTURE.md "Map of the model").
LAYOUT_VERSION = 2
LAYOUT_RENAMES = (
    ("encoder.", "bev.encoder."),
    ("fusion.", "bev.fusion."),
    ("mono_head.", "perspective.mono_head."),
    ("hybrid_queries.", "perspective.hybrid."),
)


@MODELS.register_module()
class BEVFormerV2(BaseModel):
    """Backbone + neck -> BEV stage (:class:`~bevformer.models.bev.TemporalBEV`) -> 3D
    detection head; criterion (training) or post-processor (test) on the head's outputs."""

    # checkpoints of earlier state-dict layouts load through these renames
    # (bevformer.checkpoint.migrate_layout)
    layout_version = LAYOUT_VERSION
    layout_renames = LAYOUT_RENAMES

    def __init__(
        self,
        *,
        img_backbone: nn.Module,
        img_neck: nn.Module,
        bev: TemporalBEV,
        pts_bbox_head: nn.Module,
        criterion: nn.Module,
        post_processor: NMSFreeCoder,
        perspective: PerspectiveStage | None = None,
        num_levels: int | None = 4,
        use_grid_mask: bool = True,
        grid_mask: GridMask | None = None,
        data_preprocessor: dict | nn.Module | None = None,
        init_cfg: dict | None = None,
        frozen: Sequence[str] = (),
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        head_k = int(getattr(pts_bbox_head, "num_hybrid_queries", 0))
        hybrid = perspective.hybrid if perspective is not None else None
        if head_k != (hybrid.num_queries if hybrid is not None else 0):
            raise ValueError(
                "pts_bbox_head.num_hybrid_queries must equal perspective.hybrid.num_queries (0 "
                f"without hybrid queries); found num_hybrid_queries={head_k}, perspective.hybrid"
                f"={None if hybrid is None else f'HybridQueries(num_queries={hybrid.num_queries})'}"
            )
        self.img_backbone = img_backbone
        self.img_neck = img_neck
        # each stage is registered where its first part was in layout 1 (LAYOUT_RENAMES), so
        # the parameter order is unchanged
        self.bev = bev
        self.pts_bbox_head = pts_bbox_head
        self.criterion = criterion
        self.post_processor = post_processor
        self.perspective = perspective
        self.num_levels = num_levels
        self.use_grid_mask = use_grid_mask
        self.grid_mask = grid_mask if grid_mask is not None else GridMask()
        self.frozen = self._freeze(frozen)

    def _freeze(self, names: Sequence[str]) -> tuple[str, ...]:
        """Freezes the submodules named in ``frozen`` (dotted paths such as ``"img_backbone"``,
        ``"bev.encoder"``, ``"perspective.mono_head"``): their parameters get
        ``requires_grad=False`` and they stay in eval mode (BatchNorm running statistics,
        no dropout) when the model trains. A training option for fine-tuning a part of a
        trained model (``--load-from``), as mmdetection's ``frozen_stages``; not in the official
        configs. Raises ``ValueError`` for a name that is not a submodule with parameters, or
        when nothing would be left to train."""
        if isinstance(names, str):
            raise ValueError(f"frozen must be a list of submodule names, got the string {names!r}")
        names = tuple(names)
        for name in names:
            try:
                module = self.get_submodule(name)
            except AttributeError:
                raise ValueError(
                    f"frozen: {name!r} is not a submodule of the model; top-level parts are "
                    f"{[n for n, _ in self.named_children()]} (dotted paths reach deeper, e.g. "
                    "'bev.encoder')"
                ) from None
            if next(module.parameters(), None) is None:
                raise ValueError(f"frozen: {name!r} has no parameters to freeze")
            module.requires_grad_(False)
        if names and not any(p.requires_grad for p in self.parameters()):
            raise ValueError(f"frozen={list(names)} leaves no parameter to train")
        return names

    def train(self, mode: bool = True) -> BEVFormerV2:
        """``nn.Module.train``, with the :attr:`frozen` submodules kept in eval mode."""
        super().train(mode)
        for name in self.frozen:
            self.get_submodule(name).eval()
        return self

    @property
    def grid(self) -> BEVGrid:
        """The BEV grid of the model (built by the encoder from its config node), handed to the
        head, the hybrid queries, the BEV augmentation and the temporal alignment."""
        return self.bev.grid

    @property
    def frames(self) -> tuple[int, ...]:
        """Keyframe offsets of the batch's T slots (``self.bev.frames``)."""
        return self.bev.frames

    @property
    def current_slot(self) -> int:
        return self.bev.current_slot

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The cameras the model is built for, in the order of its camera embeddings (the
        encoder's ``camera_names``): camera n of every batch must be ``camera_names[n]``."""
        return self.bev.encoder.camera_names

    # ---------------------------------------------------------------- features and BEV
    def extract_feat(self, img: Tensor, flip: Tensor | None, augment: bool) -> list[Tensor]:
        """img ``[B, N, 3, H, W]`` -> neck maps ``L x [B, N, C, h, w]``, flips undone."""
        B, N = img.shape[:2]
        x = img.flatten(0, 1)  # [B*N, 3, H, W]
        if augment and self.use_grid_mask and self.training:
            x = self.grid_mask(x)
        feats = self.img_backbone(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        feats = list(self.img_neck(list(feats)))
        out = []
        for f in feats:
            f = f.view(B, N, *f.shape[1:])  # [B*N, C, h, w] -> [B, N, C, h, w]
            if flip is not None and bool(flip.any()):
                f = torch.where(flip.view(B, 1, 1, 1, 1), f.flip(-1), f)
            out.append(f)
        return out

    def _bev_feats(self, feats: list[Tensor]) -> list[Tensor]:
        return feats if self.num_levels is None else feats[: self.num_levels]

    def frame_bev(self, img: Tensor, lidar2img: Tensor, slot: int) -> Tensor:
        """Slot ``slot``'s own BEV ``[B, Q, C]`` from ``img [B, T, N, 3, H, W]`` and
        ``lidar2img [B, T, N, 4, 4]``: backbone, neck and encoder in the model's current mode
        (no GridMask, no streaming context, no fusion, no BEV augmentation). Past slots in
        training are this in eval mode without gradients (:meth:`bev_features`)."""
        feats = self.extract_feat(img[:, slot], None, augment=False)
        return self.bev.encode(self._bev_feats(feats), lidar2img[:, slot], img.shape[-2:])

    def _past_bevs(
        self,
        img: Tensor,
        lidar2img: Tensor,
        frame_valid: Tensor,
        flip: Tensor | None,
        features: SlotFeatures | None,
    ) -> list[Tensor | None]:
        """BEVs of the other slots (``obtain_history_bev``), the whole model in eval mode (in its
        own mode, with gradients, when ``bev.history_grad``; never with GridMask)."""
        if features is None:
            features = lambda t: self.extract_feat(img[:, t], flip, augment=False)  # noqa: E731
        with nullcontext() if self.bev.history_grad else evaluating(self):
            return self.bev.past_bevs(
                lambda t: self._bev_feats(features(t)), lidar2img, img.shape[-2:], frame_valid
            )

    def bev_features(
        self,
        img: Tensor,
        lidar2img: Tensor,
        frame_valid: Tensor | None = None,
        bda: Tensor | None = None,
        flip: Tensor | None = None,
        prev_state: TemporalState | PreviousBEV | None = None,
        meta: Sequence[Any] | None = None,
        want_state: bool = False,
        features: SlotFeatures | None = None,
    ) -> tuple[Tensor, list[Tensor], TemporalState | None]:
        """-> BEV ``[B, Q, C]`` (fused, augmented), the current frame's neck maps, the new
        streaming state (None unless ``want_state``).

        ``features``: ``t -> neck maps of slot t`` (L x [B, N, C, h, w], flips undone) to use
        instead of running the backbone on ``img[:, t]`` (the streaming
        :class:`~bevformer.apis.Detector` passes the maps it kept from earlier frames).
        ``prev_state``: the streaming state of the previous call (the poses and scenes come from
        ``meta``) or a :class:`~bevformer.models.temporal.PreviousBEV` (the exported model's
        inputs: no ``meta`` needed)."""
        B, T = img.shape[:2]
        frame_valid = self.bev.frame_validity(frame_valid, B, T, img.device)
        past = self._past_bevs(img, lidar2img, frame_valid, flip, features) if T > 1 else None
        cur = self.current_slot
        if features is not None:
            feats = features(cur)
        else:
            feats = self.extract_feat(img[:, cur], flip, augment=True)
        poses, scenes = None, ()
        posed = isinstance(prev_state, TemporalState)
        if self.bev.temporal == "streaming" and (posed or want_state):
            poses, scenes = batch.lidar2global_of(meta, img.device), batch.scenes_of(meta, B)
        bev, state = self.bev(
            self._bev_feats(feats),
            lidar2img,
            img.shape[-2:],
            past=past,
            frame_valid=frame_valid,
            bda=bda,
            prev_state=prev_state,
            lidar2global=poses,
            scene_tokens=scenes,
            want_state=want_state,
        )
        return bev, feats, state

    # ---------------------------------------------------------------- entry points
    def forward(
        self,
        img: Tensor,
        lidar2img: Tensor,
        *,
        mode: str = "tensor",
        frame_valid: Tensor | None = None,
        bda: Tensor | None = None,
        gt_boxes: Sequence[Tensor] | None = None,
        gt_labels: Sequence[Tensor] | None = None,
        mono: Sequence[Any] | None = None,
        intrinsics: Tensor | None = None,
        cam2lidar: Tensor | None = None,
        flip: Tensor | None = None,
        meta: Sequence[Any] | None = None,
        prev_state: TemporalState | None = None,
        return_state: bool = False,
        img_shape: Sequence[int] | None = None,
    ) -> Any:
        """Runs the model on a batch (keys of ``docs/CONVENTIONS.md``).

        ``flip [B]`` (or ``meta[b].flip``) marks samples whose images are mirrored while their
        ``lidar2img`` describes the unflipped image: their feature maps are flipped back.
        ``intrinsics`` and ``cam2lidar`` ``[B, T, N, ...]`` are needed by the perspective head
        (loss mode) and the hybrid queries (every mode). ``img_shape`` (the collated padded
        size) must equal ``img.shape[-2:]`` when given. The batch keys are exactly these: an
        unknown (e.g. misspelt) key raises ``TypeError`` naming it. Each
        ``meta[b].camera_names`` must be the model's :attr:`camera_names` (``ValueError``
        otherwise, :func:`bevformer.models.batch.check_cameras`).

        ``mode="loss"``: dict of scalar loss terms (every term finite, else FloatingPointError).
        ``mode="predict"``: per sample ``{"boxes" (K, 9) lidar box vectors, "scores" (K,),
        "labels" (K,), "token"}``. ``mode="tensor"``: the head outputs plus ``"bev_embed"``
        (and, with hybrid queries, ``"proposals"``: the
        :class:`~bevformer.models.hybrid.Proposals` they were built from).
        Streaming inference (``temporal="streaming"``): with ``return_state=True`` predict and
        tensor modes return ``(result, state)``; pass ``state`` back as ``prev_state`` with the
        next frame of the same scenes (a sample whose scene changed starts without history).
        """
        batch.check_img(img, img_shape)
        batch.check_cameras(meta, self.camera_names)
        B = img.shape[0]
        flip = batch.flip_of(flip, meta, B, img.device)
        if mode == "loss":
            if gt_boxes is None or gt_labels is None:
                raise ValueError("mode='loss' needs gt_boxes and gt_labels in the batch")
            return self.loss(
                img, lidar2img, frame_valid, bda, gt_boxes, gt_labels, mono, flip, meta,
                intrinsics=intrinsics, cam2lidar=cam2lidar,
            )  # fmt: skip
        if mode not in ("predict", "tensor"):
            raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
        result, state = self.infer(
            img, lidar2img, frame_valid, bda, flip, meta, intrinsics, cam2lidar, prev_state,
            tensors=mode == "tensor", want_state=return_state,
        )  # fmt: skip
        return (result, state) if return_state else result

    def infer(
        self,
        img: Tensor,
        lidar2img: Tensor,
        frame_valid: Tensor | None,
        bda: Tensor | None,
        flip: Tensor | None,
        meta: Sequence[Any] | None,
        intrinsics: Tensor | None,
        cam2lidar: Tensor | None,
        prev_state: TemporalState | None = None,
        *,
        tensors: bool = False,
        want_state: bool = False,
        features: SlotFeatures | None = None,
    ) -> tuple[Any, TemporalState | None]:
        """The predict / tensor modes of :meth:`forward` on a checked batch (``flip`` as a
        ``[B]`` bool tensor or None) -> (per-sample boxes, or the head outputs with
        ``"bev_embed"`` when ``tensors``; the streaming state or None). ``features``: as
        :meth:`bev_features`."""
        bev, feats, state = self.bev_features(
            img, lidar2img, frame_valid, bda, flip, prev_state, meta, want_state, features
        )
        outputs, _ = self.decode_queries(bev, feats, intrinsics, cam2lidar, bda, img)
        outputs["bev_embed"] = bev
        if tensors:
            return outputs, state
        result = self.post_processor.decode(*self.pts_bbox_head.first_group(outputs))
        for b in range(img.shape[0]):
            result[b] = dict(result[b])
            result[b]["token"] = batch.meta_attr(meta[b], "token") if meta is not None else None
        return result, state

    def decode_queries(
        self,
        bev: Tensor,
        feats: list[Tensor],
        intrinsics: Tensor | None,
        cam2lidar: Tensor | None,
        bda: Tensor | None,
        img: Tensor,
    ) -> tuple[dict[str, Any], dict | None]:
        """The head's outputs on ``bev [B, Q, C]``: its learned queries, plus the hybrid ones
        the perspective stage builds from its detections when the model has them. Returns the
        outputs (with ``"proposals"`` in the hybrid case) and the perspective head's outputs
        on all B*N images (None without hybrid queries), which the perspective loss reuses."""
        if self.perspective is None or self.perspective.hybrid is None:
            return dict(self.pts_bbox_head(bev, self.grid)), None
        hybrid, proposals, mono_outputs = self.perspective(
            feats,
            batch.current_slice(intrinsics, "intrinsics", self.current_slot, img.device),
            batch.current_slice(cam2lidar, "cam2lidar", self.current_slot, img.device),
            self.grid,
            bda,
            (int(img.shape[-2]), int(img.shape[-1])),
        )
        outputs = dict(self.pts_bbox_head(bev, self.grid, hybrid))
        outputs["proposals"] = proposals
        return outputs, mono_outputs

    def loss(
        self,
        img: Tensor,
        lidar2img: Tensor,
        frame_valid: Tensor | None,
        bda: Tensor | None,
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        mono: Sequence[Any] | None = None,
        flip: Tensor | None = None,
        meta: Sequence[Any] | None = None,
        *,
        intrinsics: Tensor | None = None,
        cam2lidar: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Detection losses (+ ``*_mono`` perspective losses) as a dict of scalars."""
        if self.perspective is not None:  # fail before the expensive part
            require_mono(mono)
            batch.current_slice(intrinsics, "intrinsics", self.current_slot, img.device)
        bev, feats, _ = self.bev_features(img, lidar2img, frame_valid, bda, flip, None, meta)
        outputs, mono_outputs = self.decode_queries(bev, feats, intrinsics, cam2lidar, bda, img)
        per_group = self.pts_bbox_head.queries_per_group
        losses = dict(self.criterion(outputs, list(gt_boxes), list(gt_labels), per_group))
        if self.perspective is not None:
            K = batch.current_slice(intrinsics, "intrinsics", self.current_slot, img.device)
            losses.update(self.perspective.loss(feats, mono, K, mono_outputs))
        check_finite_losses(losses)
        return losses
