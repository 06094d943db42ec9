"""Hybrid object queries: perspective detections lifted to BEV decoder queries.

The BEVFormer v2 paper (Yang et al., CVPR 2023, arXiv:2211.10439) describes a two-stage
detector: the perspective head's first-stage detections become extra object queries of the
BEV decoder beside the learned ones. The official code never released this part; this module is the
project's design (``docs/ARCHITECTURE.md``, "Hybrid object queries"):

1. **Proposals** (:func:`lift_detections`, no gradient): the perspective head's per-camera
   detections after its class-wise 2D NMS (:meth:`PerspectiveHead.predict`) have camera-frame
   3D centres. Each centre is lifted to the current lidar frame with its camera's
   ``cam2lidar`` and then moved by the sample's BEV augmentation ``bda`` (the frame of the GT
   and of the resampled BEV). Centres outside ``pc_range`` are dropped; the ``k`` highest 3D
   scores over all cameras of a sample are kept. Duplicates of an object seen by two cameras
   are not merged: the one-to-one matching supervises one of them as the object and the
   other as background.
2. **Queries** (:class:`HybridQueries`): for proposal i of sample b,
   ``reference = (centre - pc_min) / (pc_max - pc_min)`` clamped into (0, 1) (the head's
   reference space: the decoder refines it in inverse-sigmoid space);
   ``content = LN(Linear(f)) + class_embedding(label)`` where f is the mean over the FPN levels
   of the current frame's feature, sampled bilinearly at the centre of the detection's 2D box
   in its camera (flip already undone); ``query_pos = MLP(reference)``. Slots without a
   proposal (fewer than k detections) take a learned fallback query: embedding content and
   position, reference ``sigmoid`` of a learned logit.
3. The head appends the k queries to the learned queries of every group-DETR group (each
   group is ``num_query`` learned + k hybrid queries, matched to the full GT set), so the
   hybrid queries join the Hungarian matching and losses in every group, and at test time the
   single group holds them too (:class:`~bevformer.models.head.BEVFormerHead`).

Proposal positions, labels and scores are detached (no gradient through NMS or top-k); the
sampled features keep their gradient, so the decoder losses also reach the FPN through them.

Legend: B batch, N cameras, k hybrid queries, D detections of one image, L levels,
C channels, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bevformer.models.precision import force_fp32
from bevformer.registry import MODELS
from bevformer.structures.grid import BEVGrid

__all__ = ["HybridQueries", "Proposals", "lift_detections"]

# references are kept this far inside (0, 1) so that their logit stays finite
REF_EPS = 1e-4


@dataclass
class Proposals:
    """Top-k perspective detections of each sample, padded to k (all tensors detached).

    ``centers`` [B, k, 3] metres in the (BEV-augmented) current lidar frame; ``reference``
    [B, k, 3] the centres normalised to ``pc_range``; ``labels`` [B, k] int64 (-1 where
    ``valid`` is False); ``scores`` [B, k] 3D scores (0 where invalid); ``cameras`` [B, k]
    int64 camera index; ``pixels`` [B, k, 2] centre of the 2D box (x, y pixels of the
    augmented, unflipped image); ``valid`` [B, k] bool.
    """

    centers: Tensor
    reference: Tensor
    labels: Tensor
    scores: Tensor
    cameras: Tensor
    pixels: Tensor
    valid: Tensor


@force_fp32
def lift_detections(
    detections: Sequence[dict[str, Tensor]],
    cam2lidar: Tensor,
    num_queries: int,
    grid: BEVGrid,
    bda: Tensor | None = None,
    score_threshold: float = 0.0,
) -> Proposals:
    """Per-image detections (B*N dicts, camera-major, of ``PerspectiveHead.predict``: ``boxes3d``
    (D, 10) with the camera-frame centre in columns 0-2, ``scores`` (D,), ``labels`` (D,),
    ``boxes2d`` (D, 4)) -> the ``num_queries`` best proposals per sample in the lidar frame.

    ``cam2lidar`` [B, N, 4, 4] of the current frame; ``grid`` the model's BEV grid (its
    ``pc_range`` bounds the kept centres and normalises the references); ``bda`` [B, 4, 4] the
    BEV augmentation applied to the GT (None: identity). Detections scoring <=
    ``score_threshold`` are dropped.
    """
    B, N = cam2lidar.shape[:2]
    if len(detections) != B * N:
        raise ValueError(
            f"expected one detection dict per image (B*N = {B}*{N}), found {len(detections)}; "
            "pass PerspectiveHead.predict's output for the current frame's cameras"
        )
    device = cam2lidar.device
    k = num_queries
    lo = torch.tensor(grid.pc_range[:3], dtype=torch.float32, device=device)
    hi = torch.tensor(grid.pc_range[3:], dtype=torch.float32, device=device)
    out = {
        "centers": torch.zeros(B, k, 3, device=device),
        "reference": torch.full((B, k, 3), 0.5, device=device),
        "labels": torch.full((B, k), -1, dtype=torch.long, device=device),
        "scores": torch.zeros(B, k, device=device),
        "cameras": torch.zeros(B, k, dtype=torch.long, device=device),
        "pixels": torch.zeros(B, k, 2, device=device),
        "valid": torch.zeros(B, k, dtype=torch.bool, device=device),
    }
    for b in range(B):
        dets = detections[b * N : (b + 1) * N]
        centers = torch.cat([d["boxes3d"][:, :3] for d in dets]).detach().float().to(device)
        if centers.numel() == 0:
            continue
        cams = torch.cat(
            [torch.full((len(d["scores"]),), n, dtype=torch.long) for n, d in enumerate(dets)]
        ).to(device)
        to_lidar = cam2lidar[b].float()[cams]  # [D, 4, 4]
        if bda is not None:
            to_lidar = bda[b].float().to(device) @ to_lidar
        # camera-frame centres [D, 3] -> lidar [D, 3]
        lidar = (to_lidar[:, :3, :3] @ centers.unsqueeze(-1)).squeeze(-1) + to_lidar[:, :3, 3]
        scores = torch.cat([d["scores"] for d in dets]).detach().float().to(device)
        keep = ((lidar >= lo) & (lidar <= hi)).all(1) & (scores > score_threshold)
        keep = keep.nonzero().squeeze(1)
        order = scores[keep].argsort(descending=True)[:k]
        keep = keep[order]
        n = len(keep)
        boxes2d = torch.cat([d["boxes2d"] for d in dets]).detach().float().to(device)[keep]
        out["centers"][b, :n] = lidar[keep]
        ref = grid.normalize(lidar[keep])
        out["reference"][b, :n] = ref.clamp(REF_EPS, 1 - REF_EPS)
        out["labels"][b, :n] = torch.cat([d["labels"] for d in dets]).to(device)[keep]
        out["scores"][b, :n] = scores[keep]
        out["cameras"][b, :n] = cams[keep]
        out["pixels"][b, :n] = 0.5 * (boxes2d[:, :2] + boxes2d[:, 2:])
        out["valid"][b, :n] = True
    return Proposals(**out)


def sample_image_features(
    feats: Sequence[Tensor], cameras: Tensor, pixels: Tensor, image_size: tuple[int, int]
) -> Tensor:
    """Mean over the levels of bilinear samples of ``feats`` (L x [B, N, C, h, w], each map
    covering the padded ``image_size`` (H, W)) at ``pixels`` [B, k, 2] of camera ``cameras``
    [B, k] -> [B, k, C]. Pixel centres sit at integers; points outside give zeros."""
    H, W = image_size
    B, k = cameras.shape
    # pixels -> grid_sample coordinates in [-1, 1] (align_corners=False)
    scale = pixels.new_tensor([2.0 / W, 2.0 / H])
    grid = (pixels + 0.5) * scale - 1.0  # [B, k, 2]
    total = None
    for f in feats:
        N, C = f.shape[1], f.shape[2]
        # every camera of sample b samples all k points of b: [B*N, 1, k, 2]
        g = grid[:, None].expand(B, N, k, 2).reshape(B * N, 1, k, 2).to(f.dtype)
        s = F.grid_sample(f.flatten(0, 1), g, mode="bilinear", align_corners=False)
        s = s.view(B, N, C, k)  # [B*N, C, 1, k] -> [B, N, C, k]
        index = cameras.view(B, 1, 1, k).expand(B, 1, C, k)
        picked = s.gather(1, index).squeeze(1).transpose(1, 2)  # [B, k, C]
        total = picked if total is None else total + picked
    return total / len(feats)


@MODELS.register_module()
class HybridQueries(nn.Module):
    """Proposals -> (query, query_pos, reference) of the k hybrid decoder queries.

    See the module docstring; ``num_queries`` must equal the head's ``num_hybrid_queries``.
    """

    def __init__(
        self,
        *,
        num_queries: int,
        embed_dims: int = 256,
        num_classes: int = 10,
        score_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        self.num_queries = num_queries
        self.embed_dims = embed_dims
        self.score_threshold = score_threshold
        C = embed_dims
        self.feature_proj = nn.Sequential(nn.Linear(C, C), nn.LayerNorm(C))
        self.class_embedding = nn.Embedding(num_classes, C)
        self.pos_mlp = nn.Sequential(nn.Linear(3, C), nn.ReLU(inplace=True), nn.Linear(C, C))
        # queries of the slots without a proposal
        self.fallback_embedding = nn.Embedding(num_queries, 2 * C)
        self.fallback_reference = nn.Parameter(torch.empty(num_queries, 3))
        nn.init.uniform_(self.fallback_reference, -2.0, 2.0)  # logits, spread over the grid

    def propose(
        self,
        detections: Sequence[dict[str, Tensor]],
        cam2lidar: Tensor,
        grid: BEVGrid,
        bda: Tensor | None,
    ) -> Proposals:
        """:func:`lift_detections` with this module's k and threshold on the model's ``grid``."""
        return lift_detections(
            detections, cam2lidar, self.num_queries, grid, bda, self.score_threshold
        )

    def forward(
        self, proposals: Proposals, feats: Sequence[Tensor], image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """``feats``: the current frame's FPN maps L x [B, N, C, h, w] (flip undone) over the
        padded ``image_size`` (H, W). Returns ``query``, ``query_pos`` [B, k, C] and
        ``reference`` [B, k, 3] in (0, 1)."""
        B, k = proposals.labels.shape
        if k != self.num_queries:
            raise ValueError(f"expected {self.num_queries} proposals per sample, found {k}")
        sampled = sample_image_features(feats, proposals.cameras, proposals.pixels, image_size)
        labels = proposals.labels.clamp(min=0)
        content = self.feature_proj(sampled) + self.class_embedding(labels)  # [B, k, C]
        reference = proposals.reference  # float32 (lift_detections), also under autocast
        pos = self.pos_mlp(reference.to(content.dtype))  # [B, k, C]

        fb_pos, fb_query = self.fallback_embedding.weight.split(self.embed_dims, dim=1)
        fb_ref = self.fallback_reference.sigmoid().to(reference.dtype)  # [k, 3]
        valid = proposals.valid.unsqueeze(-1)  # [B, k, 1]
        return {
            "query": torch.where(valid, content, fb_query.to(content.dtype)),
            "query_pos": torch.where(valid, pos, fb_pos.to(content.dtype)),
            "reference": torch.where(valid, reference, fb_ref),
        }
