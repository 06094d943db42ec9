"""BEVFormer v2: the camera-only 3D detector (Yang et al., "BEVFormer v2", CVPR 2023,
arXiv:2211.10439), one class for every variant (frames, temporal mode, backbone: config).

Data flow (official ``detectors/bevformerV2.py`` + ``modules/transformerV2.py``):

1. Past frames (``frames`` offsets other than 0) run backbone -> neck -> BEV encoder in eval
   mode without gradients, on the current BEV grid (their ``lidar2img`` already map current-
   lidar points into the past images). Missing past frames take the next-newer BEV.
2. The current frame: GridMask (training) -> backbone -> neck; samples whose images were
   flipped get every FPN map flipped back; the first ``num_levels`` maps feed the encoder.
3. Every BEV is resampled for the BEV data augmentation (``bda``), the T BEVs are fused by
   :class:`~bevformer.models.temporal.ResNetFusion`, and the detection head's decoder runs its
   queries over the BEV; in training ``criterion``
   (:class:`~bevformer.models.criterion.SetCriterion3D`) turns its outputs into losses, at test
   time ``post_processor`` (:class:`~bevformer.models.coder.NMSFreeCoder`) into boxes.
4. An optional perspective head (``mono_head``,
   :class:`~bevformer.models.perspective.PerspectiveHead`) gets the first ``num_mono_levels``
   maps of the current frame (flips undone, so they match the dataset's mono targets, which
   describe the unflipped image). In training its losses, with targets from the batch's
   ``mono`` and the current frame's ``intrinsics``, are multiplied by ``mono_loss_weight``
   and join the loss dict (keys ending in ``_mono``). With ``mono_cameras="annotated"`` (the
   official ``forward_mono_train``, which keeps the cameras in ``mono_ann_idx``) the head sees
   only the cameras with at least one usable box: the others' negatives, and their images in
   the towers' BatchNorm statistics, do not count. ``"all"`` runs it on every camera. It does
   not run at test time unless hybrid queries need it.
5. Optional hybrid object queries (``hybrid_queries``, :mod:`bevformer.models.hybrid`): the
   perspective head's top-k detections, lifted to the current lidar frame with
   ``cam2lidar`` and ``bda``, become k extra decoder queries, in training and at test time.

``temporal="streaming"`` selects BEVFormer v1-style temporal self-attention instead: the
encoder attends to the previous BEV, carried between calls in a
:class:`~bevformer.models.temporal.TemporalState` that is passed in and returned.

Batch keys and frames: ``docs/CONVENTIONS.md``. Legend: B batch, T frames, N cameras,
Q = H*W BEV cells, C channels.

    img [B, T, N, 3, H, W]   lidar2img [B, T, N, 4, 4]   -> BEV [B, Q, C] -> head outputs
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mmengine.model import BaseModel
from torch import Tensor, nn

from bevformer.models.bda import resample_bev
from bevformer.models.coder import NMSFreeCoder
from bevformer.models.encoder import BEVEncoder
from bevformer.models.grid_mask import GridMask
from bevformer.models.hybrid import HybridQueries, Proposals
from bevformer.models.perspective import targets_from_batch
from bevformer.models.perspective.targets import has_usable_boxes
from bevformer.models.temporal import TemporalState, fill_missing_frames
from bevformer.registry import MODELS
from bevformer.structures.grid import BEVGrid

__all__ = ["BEVFormerV2", "check_finite_losses", "count_parameters"]

TEMPORAL_MODES = ("fusion", "streaming")
MONO_CAMERAS = ("annotated", "all")


def check_finite_losses(losses: dict[str, Tensor]) -> None:
    """Raises ``FloatingPointError`` naming the first loss term that is NaN or infinite."""
    for name, value in losses.items():
        if isinstance(value, Tensor) and not bool(torch.isfinite(value).all()):
            others = {k: float(v.detach().float().mean()) for k, v in losses.items() if k != name}
            raise FloatingPointError(
                f"loss term '{name}' is not finite ({value.detach().cpu().tolist()}); other "
                f"terms: {others}. Lower the learning rate, check the inputs of this term, or "
                "train in fp32 to find where it diverges"
            )


def _meta_attr(meta: Any, name: str, default: Any = None) -> Any:
    if meta is None:
        return default
    if isinstance(meta, dict):
        return meta.get(name, default)
    return getattr(meta, name, default)


def _select_images(outputs: dict, index: Tensor) -> dict:
    """The perspective head's outputs (per level [BN, ...] maps) of the images ``index`` only;
    ``locations`` are the same for every image and stay."""
    return {k: v if k == "locations" else [m[index] for m in v] for k, v in outputs.items()}


def _require_mono(mono: Sequence[Any] | None) -> None:
    if mono is None:
        raise ValueError(
            "the model has a mono_head: the batch needs 'mono' targets; build the dataset "
            "with with_mono=True or set model.mono_head=None"
        )


@MODELS.register_module()
class BEVFormerV2(BaseModel):
    """Backbone + neck -> BEV encoder (+ temporal fusion) -> 3D detection head."""

    def __init__(
        self,
        *,
        img_backbone: nn.Module,
        img_neck: nn.Module,
        encoder: BEVEncoder,
        pts_bbox_head: nn.Module,
        criterion: nn.Module,
        post_processor: NMSFreeCoder,
        fusion: nn.Module | None = None,
        mono_head: nn.Module | None = None,
        frames: Sequence[int] = (0,),
        temporal: str = "fusion",
        num_levels: int | None = 4,
        num_mono_levels: int | None = 5,
        use_grid_mask: bool = True,
        grid_mask: GridMask | None = None,
        mono_loss_weight: float = 1.0,
        mono_cameras: str = "annotated",
        hybrid_queries: HybridQueries | None = None,
        data_preprocessor: dict | nn.Module | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if mono_cameras not in MONO_CAMERAS:
            raise ValueError(
                f"mono_cameras must be one of {MONO_CAMERAS} ('annotated': the perspective head "
                f"sees only cameras with boxes, as the official detector), got {mono_cameras!r}"
            )
        self.mono_cameras = mono_cameras
        self.frames = tuple(int(f) for f in frames)
        if 0 not in self.frames or list(self.frames) != sorted(self.frames):
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
        self.temporal = temporal
        self.img_backbone = img_backbone
        self.img_neck = img_neck
        self.encoder = encoder
        self.fusion = fusion if temporal == "fusion" and len(self.frames) > 1 else None
        self.pts_bbox_head = pts_bbox_head
        self.criterion = criterion
        self.post_processor = post_processor
        self.mono_head = mono_head
        self.num_levels = num_levels
        self.num_mono_levels = num_mono_levels
        self.use_grid_mask = use_grid_mask
        self.grid_mask = grid_mask if grid_mask is not None else GridMask()
        self.mono_loss_weight = mono_loss_weight
        self.hybrid_queries = hybrid_queries
        if hybrid_queries is not None:
            head_k = getattr(pts_bbox_head, "num_hybrid_queries", 0)
            if mono_head is None or head_k != hybrid_queries.num_queries:
                raise ValueError(
                    "hybrid queries need a mono_head and pts_bbox_head.num_hybrid_queries equal "
                    f"to hybrid_queries.num_queries; found mono_head={type(mono_head).__name__}, "
                    f"num_hybrid_queries={head_k}, num_queries={hybrid_queries.num_queries}"
                )

    @property
    def grid(self) -> BEVGrid:
        """The BEV grid of the model (built by the encoder from its config node), handed to the
        head, the hybrid queries, the BEV augmentation and the temporal alignment."""
        return self.encoder.grid

    @property
    def current_slot(self) -> int:
        return self.frames.index(0)

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The cameras the model is built for, in the order of its camera embeddings (the
        encoder's ``camera_names``): camera n of every batch must be ``camera_names[n]``."""
        return self.encoder.camera_names

    def check_cameras(self, meta: Sequence[Any] | None) -> None:
        """Refuses a batch whose cameras are not the model's, in the model's order.

        Each sample's ``meta.camera_names`` (the order the dataset stacked its images in) must
        equal :attr:`camera_names`; without meta only the count N of ``img [B, T, N, ...]`` is
        checked (by the encoder). Raises ``ValueError`` naming both lists.
        """
        for b, m in enumerate(meta or ()):
            names = _meta_attr(m, "camera_names")
            if names is not None and tuple(names) != self.camera_names:
                raise ValueError(
                    f"sample {b} ({_meta_attr(m, 'token', '?')}) has its images in the camera "
                    f"order {list(names)} but the model was built for the cameras "
                    f"{list(self.camera_names)} (encoder camera_names; camera embedding n is "
                    "for camera n): build the dataset with camera_names = the model's list "
                    "(the launcher does so from model.encoder.camera_names)"
                )

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

    def _history_bevs(
        self, img: Tensor, lidar2img: Tensor, frame_valid: Tensor, flip: Tensor | None
    ) -> list[Tensor | None]:
        """BEVs of the past/future slots, eval mode, no gradients (``obtain_history_bev``).

        In streaming mode the slots are encoded oldest first, each attending to the one before.
        """
        bevs: list[Tensor | None] = [None] * len(self.frames)
        was_training = self.training
        self.eval()
        prev, prev_valid = None, None
        try:
            with torch.no_grad():
                for t in range(len(self.frames)):
                    if t == self.current_slot or not bool(frame_valid[:, t].any()):
                        continue
                    feats = self.extract_feat(img[:, t], flip, augment=False)
                    if self.temporal == "streaming" and prev is not None:
                        bev = self.encoder(
                            self._bev_feats(feats),
                            lidar2img[:, t],
                            img.shape[-2:],
                            prev,
                            prev_valid,
                        )
                    else:
                        bev = self.encoder(self._bev_feats(feats), lidar2img[:, t], img.shape[-2:])
                    bevs[t] = bev.detach()
                    if t < self.current_slot:
                        prev, prev_valid = bevs[t], frame_valid[:, t]
        finally:
            self.train(was_training)
        return bevs

    def _bda(self, bev: Tensor, bda: Tensor | None) -> Tensor:
        """BEV augmentation on ``[B, Q, C]`` (identity when ``bda`` is None or identity)."""
        if bda is None:
            return bev
        grid = self.grid
        return grid.map_to_tokens(resample_bev(grid.tokens_to_map(bev), bda.to(bev), grid))

    def bev_features(
        self,
        img: Tensor,
        lidar2img: Tensor,
        frame_valid: Tensor | None = None,
        bda: Tensor | None = None,
        flip: Tensor | None = None,
        prev_state: TemporalState | None = None,
        meta: Sequence[Any] | None = None,
        want_state: bool = False,
    ) -> tuple[Tensor, list[Tensor], TemporalState | None]:
        """-> fused BEV ``[B, Q, C]``, the current frame's neck maps, the new streaming state
        (None unless ``want_state``)."""
        B, T = img.shape[:2]
        if T != len(self.frames):
            raise ValueError(
                f"img has {T} frames but the model is configured with frames={self.frames}; "
                "use the same `frames` for the dataset and the model"
            )
        if frame_valid is None:
            frame_valid = torch.ones(B, T, dtype=torch.bool, device=img.device)
        cur = self.current_slot
        history = self._history_bevs(img, lidar2img, frame_valid, flip) if T > 1 else [None]

        feats = self.extract_feat(img[:, cur], flip, augment=True)
        prev_bev, prev_valid, state = None, None, None
        if self.temporal == "streaming":
            prev_bev, prev_valid = self._streaming_prev(history, frame_valid, prev_state, meta)
        bev = self.encoder(
            self._bev_feats(feats), lidar2img[:, cur], img.shape[-2:], prev_bev, prev_valid
        )
        if self.temporal == "streaming" and want_state:
            scenes = tuple(str(_meta_attr(m, "scene_token", "")) for m in meta or [None] * B)
            state = TemporalState(bev.detach(), self._lidar2global(meta, img.device), scenes)

        if self.fusion is not None:
            history[cur] = bev
            slots = fill_missing_frames(history, frame_valid, cur)
            # T x [B, Q, C] -> T x [B, C, H, W]
            maps = [self.grid.tokens_to_map(self._bda(s, bda)) for s in slots]
            bev = self.fusion(maps)
        else:
            bev = self._bda(bev, bda)
        return bev, feats, state

    def _streaming_prev(
        self,
        history: list[Tensor | None],
        frame_valid: Tensor,
        prev_state: TemporalState | None,
        meta: Sequence[Any] | None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Previous BEV ``[B, Q, C]`` on the current grid and its per-sample validity ``[B]``.

        The batch's own previous slot (already on the current grid) wins; otherwise the carried
        state, aligned with the ego motion between the two lidar frames.
        """
        prev_bev, prev_valid = None, None
        if prev_state is not None:
            B = frame_valid.shape[0]
            scenes = [str(_meta_attr(m, "scene_token", "")) for m in meta or [None] * B]
            prev_bev, prev_valid = prev_state.aligned_to(
                self._lidar2global(meta, frame_valid.device),
                scenes,
                self.grid,
            )
        cur = self.current_slot
        if cur > 0 and history[cur - 1] is not None:
            in_batch = frame_valid[:, cur - 1]
            if prev_bev is None:
                return history[cur - 1], in_batch
            keep = in_batch.view(-1, 1, 1)
            return torch.where(keep, history[cur - 1], prev_bev), in_batch | prev_valid
        return prev_bev, prev_valid

    @staticmethod
    def _lidar2global(meta: Sequence[Any] | None, device: torch.device) -> Tensor:
        if meta is None or any(_meta_attr(m, "ego2global") is None for m in meta):
            raise ValueError(
                "temporal='streaming' needs each sample's meta with lidar2ego and ego2global "
                "(SampleMeta from the dataset) to align the previous BEV"
            )
        mats = [
            np.asarray(_meta_attr(m, "ego2global"), dtype=np.float64)
            @ np.asarray(_meta_attr(m, "lidar2ego"), dtype=np.float64)
            for m in meta
        ]
        return torch.as_tensor(np.stack(mats), device=device)

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
        ``meta[b].camera_names`` must be the model's :attr:`camera_names` (:meth:`check_cameras`,
        ``ValueError`` otherwise).

        ``mode="loss"``: dict of scalar loss terms (every term finite, else FloatingPointError).
        ``mode="predict"``: per sample ``{"boxes" (K, 9) lidar box vectors, "scores" (K,),
        "labels" (K,), "token"}``. ``mode="tensor"``: the head outputs plus ``"bev_embed"``
        (and, with hybrid queries, ``"proposals"``: the
        :class:`~bevformer.models.hybrid.Proposals` they were built from).
        Streaming inference (``temporal="streaming"``): with ``return_state=True`` predict and
        tensor modes return ``(result, state)``; pass ``state`` back as ``prev_state`` with the
        next frame of the same scenes (a sample whose scene changed starts without history).
        """
        if img.dim() != 6:
            raise ValueError(
                f"img must be [B, T, N, 3, H, W] (docs/CONVENTIONS.md), got {tuple(img.shape)}"
            )
        if img_shape is not None and tuple(int(v) for v in img_shape) != tuple(img.shape[-2:]):
            raise ValueError(
                f"img_shape {tuple(img_shape)} is not the padded image size "
                f"{tuple(img.shape[-2:])} of img; pass the batch of bevformer.data.collate"
            )
        self.check_cameras(meta)
        B = img.shape[0]
        if flip is None and meta is not None:
            flip = torch.tensor([bool(_meta_attr(m, "flip", False)) for m in meta])
        if flip is not None:
            flip = torch.as_tensor(flip, dtype=torch.bool, device=img.device).view(B)
        if mode == "loss":
            if gt_boxes is None or gt_labels is None:
                raise ValueError("mode='loss' needs gt_boxes and gt_labels in the batch")
            return self.loss(
                img,
                lidar2img,
                frame_valid,
                bda,
                gt_boxes,
                gt_labels,
                mono,
                flip,
                meta,
                intrinsics=intrinsics,
                cam2lidar=cam2lidar,
            )
        if mode not in ("predict", "tensor"):
            raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
        bev, feats, state = self.bev_features(
            img, lidar2img, frame_valid, bda, flip, prev_state, meta, want_state=return_state
        )
        outputs, _ = self.decode_queries(bev, feats, intrinsics, cam2lidar, bda, img)
        outputs["bev_embed"] = bev
        if mode == "tensor":
            result: Any = outputs
        else:
            result = self.post_processor.decode(*self.pts_bbox_head.first_group(outputs))
            for b in range(B):
                result[b] = dict(result[b])
                result[b]["token"] = _meta_attr(meta[b], "token") if meta is not None else None
        return (result, state) if return_state else result

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
        built from the perspective head's detections when the model has them. Returns the
        outputs (with ``"proposals"`` in the hybrid case) and the perspective head's outputs
        on all B*N images (None without hybrid queries), which the perspective loss reuses."""
        if self.hybrid_queries is None:
            return dict(self.pts_bbox_head(bev, self.grid)), None
        mono_outputs = self.mono_head(self._mono_feats(feats))
        hybrid, proposals = self._hybrid(mono_outputs, feats, intrinsics, cam2lidar, bda, img)
        outputs = dict(self.pts_bbox_head(bev, self.grid, hybrid))
        outputs["proposals"] = proposals
        return outputs, mono_outputs

    # ---------------------------------------------------------------- perspective head
    def _mono_feats(self, feats: list[Tensor], index: Tensor | None = None) -> list[Tensor]:
        """Current-frame maps L x [B, N, C, h, w] -> the mono head's L' x [B*N, C, h, w], or
        only the images ``index`` (camera-major image numbers b * N + n)."""
        n = self.num_mono_levels
        flat = [f.flatten(0, 1) for f in (feats if n is None else feats[:n])]
        return flat if index is None else [f[index] for f in flat]

    def _current(self, value: Tensor | None, name: str, img: Tensor) -> Tensor:
        """The current frame's slice ``[B, N, ...]`` of a ``[B, T, N, ...]`` batch entry."""
        if value is None:
            raise ValueError(
                f"the perspective head / hybrid queries need the batch's {name!r} "
                "[B, T, N, ...] (docs/CONVENTIONS.md); the dataset provides it"
            )
        return torch.as_tensor(value, device=img.device)[:, self.current_slot]

    def _hybrid(
        self,
        mono_outputs: dict,
        feats: list[Tensor],
        intrinsics: Tensor | None,
        cam2lidar: Tensor | None,
        bda: Tensor | None,
        img: Tensor,
    ) -> tuple[dict[str, Tensor], Proposals]:
        """Hybrid decoder queries from the perspective head's detections (detached)."""
        image_size = (int(img.shape[-2]), int(img.shape[-1]))
        K = self._current(intrinsics, "intrinsics", img).flatten(0, 1)  # [B*N, 3, 3]
        detections = self.mono_head.predict(mono_outputs, K, image_size)
        c2l = self._current(cam2lidar, "cam2lidar", img)
        proposals = self.hybrid_queries.propose(detections, c2l, self.grid, bda)
        n = self.num_mono_levels
        levels = feats if n is None else feats[:n]
        return self.hybrid_queries(proposals, levels, image_size), proposals

    def mono_loss(
        self,
        feats: list[Tensor],
        mono: Sequence[Any] | None,
        intrinsics: Tensor | None,
        img: Tensor,
        mono_outputs: dict | None = None,
    ) -> dict[str, Tensor]:
        """Perspective losses of the current frame, each times ``mono_loss_weight``.

        ``feats``: the current frame's neck maps L x [B, N, C, h, w]; ``mono_outputs``: the
        head's outputs on all B*N images when they exist already (hybrid queries), then the
        cameras are selected from them (the towers' BatchNorm statistics then include every
        camera). With ``mono_cameras="annotated"`` a batch in which no camera has a usable box
        (the official dataset re-draws such a sample) gets losses of the head run on every
        camera times 0: zero, with every head parameter in the graph, so DDP ranks stay in step.
        """
        _require_mono(mono)
        targets = targets_from_batch(mono, self._current(intrinsics, "intrinsics", img))
        index, weight = None, self.mono_loss_weight  # index None: every camera
        if self.mono_cameras == "annotated":
            index = has_usable_boxes(targets, self.mono_head.num_classes).nonzero().squeeze(1)
            if index.numel() == 0:
                index, weight = None, 0.0
        if index is not None:
            targets = [targets[i] for i in index.tolist()]
            index = index.to(img.device)
        if mono_outputs is None:
            outputs = self.mono_head(self._mono_feats(feats, index))
        else:
            outputs = mono_outputs if index is None else _select_images(mono_outputs, index)
        losses = {}
        for name, value in self.mono_head.loss(outputs, targets).items():
            key = name if name.endswith("_mono") else f"{name}_mono"
            losses[key] = value * weight
        return losses

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
        if self.mono_head is not None:  # fail before the expensive part
            _require_mono(mono)
            self._current(intrinsics, "intrinsics", img)
        bev, feats, _ = self.bev_features(img, lidar2img, frame_valid, bda, flip, None, meta)
        outputs, mono_outputs = self.decode_queries(bev, feats, intrinsics, cam2lidar, bda, img)
        per_group = self.pts_bbox_head.queries_per_group
        losses = dict(self.criterion(outputs, list(gt_boxes), list(gt_labels), per_group))
        if self.mono_head is not None:
            losses.update(self.mono_loss(feats, mono, intrinsics, img, mono_outputs))
        check_finite_losses(losses)
        return losses


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in module.parameters())
