"""The perspective stage of the detector: FCOS3D supervision and the hybrid-query proposals.

:class:`PerspectiveStage` owns the perspective head (``mono_head``,
:class:`~bevformer.models.perspective.head.PerspectiveHead`) and, when the config has them, the
hybrid object queries (``hybrid``, :class:`~bevformer.models.hybrid.HybridQueries`). It runs on
the first ``num_levels`` neck maps of the current frame (flips already undone) and gives

- :meth:`PerspectiveStage.loss`: the head's losses (official ``forward_mono_train`` of
  ``detectors/bevformerV2.py``), on every camera or only on the cameras with at least one
  usable box (``cameras="annotated"``, the official ``mono_ann_idx``), times ``loss_weight``,
  keys ending in ``_mono``;
- :meth:`PerspectiveStage.forward`: the head's top-k detections lifted to the current lidar
  frame as k extra decoder queries (the two-stage design of the BEVFormer v2 paper,
  ``docs/ARCHITECTURE.md``).

Images are numbered camera-major, b * N + n. Legend: B batch, N cameras, L levels, C channels,
k hybrid queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from bevformer.models.hybrid import HybridQueries, Proposals
from bevformer.models.perspective.targets import has_usable_boxes, targets_from_batch
from bevformer.registry import MODELS
from bevformer.structures.grid import BEVGrid

__all__ = [
    "MONO_CAMERAS",
    "PerspectiveStage",
    "require_mono",
    "select_images",
]

MONO_CAMERAS = ("annotated", "all")


def require_mono(mono: Sequence[Any] | None) -> None:
    """Raises ``ValueError`` when the batch has no ``mono`` targets."""
    if mono is None:
        raise ValueError(
            "the model has a mono_head: the batch needs 'mono' targets; build the dataset "
            "with with_mono=True or set model.perspective=None"
        )


def select_images(outputs: dict, index: Tensor) -> dict:
    """The head's outputs (per level ``[BN, ...]`` maps) of the images ``index`` only;
    ``locations`` are the same for every image and stay."""
    return {k: v if k == "locations" else [m[index] for m in v] for k, v in outputs.items()}


@MODELS.register_module()
class PerspectiveStage(nn.Module):
    """Perspective head + optional hybrid queries (module docstring).

    ``num_levels``: how many neck maps the head reads (None: all); ``cameras``: one of
    :data:`MONO_CAMERAS`; ``loss_weight`` multiplies every perspective loss. Raises
    ``ValueError`` for an unknown ``cameras``.
    """

    def __init__(
        self,
        mono_head: nn.Module,
        hybrid: HybridQueries | None = None,
        num_levels: int | None = 5,
        cameras: str = "annotated",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if cameras not in MONO_CAMERAS:
            raise ValueError(
                f"perspective cameras must be one of {MONO_CAMERAS} ('annotated': the head "
                f"sees only cameras with boxes, as the official detector), got {cameras!r}"
            )
        self.mono_head = mono_head
        self.hybrid = hybrid
        self.num_levels = num_levels
        self.cameras = cameras
        self.loss_weight = loss_weight

    def levels(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """The first ``num_levels`` of the current frame's maps L x [B, N, C, h, w]."""
        return list(feats if self.num_levels is None else feats[: self.num_levels])

    def run_head(self, feats: Sequence[Tensor], index: Tensor | None = None) -> dict:
        """The head on all B*N images of ``feats`` (L x [B, N, C, h, w]) or only on the images
        ``index`` (1-D int64, camera-major numbers)."""
        flat = [f.flatten(0, 1) for f in self.levels(feats)]
        return self.mono_head(flat if index is None else [f[index] for f in flat])

    def forward(
        self,
        feats: Sequence[Tensor],
        intrinsics: Tensor,
        cam2lidar: Tensor,
        grid: BEVGrid,
        bda: Tensor | None,
        image_size: tuple[int, int],
    ) -> tuple[dict[str, Tensor], Proposals, dict]:
        """Hybrid decoder queries from the head's detections (positions detached).

        ``feats`` L x [B, N, C, h, w], ``intrinsics [B, N, 3, 3]``, ``cam2lidar [B, N, 4, 4]``
        of the current frame; ``bda [B, 4, 4]`` or None; ``image_size`` the padded (H, W).
        Returns the queries (``query``, ``query_pos`` [B, k, C], ``reference`` [B, k, 3]),
        their :class:`~bevformer.models.hybrid.Proposals`, and the head's outputs on all B*N
        images (which :meth:`loss` reuses). Raises ``ValueError`` without ``hybrid``.
        """
        if self.hybrid is None:
            raise ValueError("this perspective stage has no hybrid queries (perspective.hybrid)")
        outputs = self.run_head(feats)
        detections = self.mono_head.predict(outputs, intrinsics.flatten(0, 1), image_size)
        proposals = self.hybrid.propose(detections, cam2lidar, grid, bda)
        return self.hybrid(proposals, self.levels(feats), image_size), proposals, outputs

    def loss(
        self,
        feats: Sequence[Tensor],
        mono: Sequence[Any] | None,
        intrinsics: Tensor,
        all_outputs: dict | None = None,
    ) -> dict[str, Tensor]:
        """Perspective losses of the current frame, each times ``loss_weight``.

        ``feats`` L x [B, N, C, h, w]; ``intrinsics [B, N, 3, 3]``; ``mono`` the batch's
        per-sample targets. ``all_outputs``: the head's outputs on all B*N images when they
        exist already (hybrid queries); then the cameras are selected from them (the towers'
        BatchNorm statistics then include every camera). With ``cameras="annotated"`` a batch
        in which no camera has a usable box (the official dataset re-draws such a sample) gets
        the losses of the head run on every camera times 0: zero, with every head parameter in
        the graph, so DDP ranks stay in step.
        """
        require_mono(mono)
        targets = targets_from_batch(mono, intrinsics)
        index, weight = None, self.loss_weight  # index None: every camera
        if self.cameras == "annotated":
            index = has_usable_boxes(targets, self.mono_head.num_classes).nonzero().squeeze(1)
            if index.numel() == 0:
                index, weight = None, 0.0
        if index is not None:
            targets = [targets[i] for i in index.tolist()]
            index = index.to(intrinsics.device)
        if all_outputs is None:
            outputs = self.run_head(feats, index)
        else:
            outputs = all_outputs if index is None else select_images(all_outputs, index)
        losses = {}
        for name, value in self.mono_head.loss(outputs, targets).items():
            key = name if name.endswith("_mono") else f"{name}_mono"
            losses[key] = value * weight
        return losses
