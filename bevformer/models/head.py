"""BEVFormer detection head: learned object queries, decoder, box refinement.

BEVFormer (Li et al., ECCV 2022, arXiv:2203.17270) / BEVFormer v2 (Yang et al., CVPR 2023,
arXiv:2211.10439), official ``dense_heads/bevformer_head.py`` (``BEVFormerHead`` and
``BEVFormerHead_GroupDETR``) on mmdet's ``DETRHead``, rebuilt without mmdet:

- ``query_embedding = Embedding(num_query * group_detr, 2C)`` split into (query_pos, query);
  initial references ``sigmoid(Linear(C, 3)(query_pos))`` (x, y, z normalised to ``pc_range``).
- :class:`~bevformer.models.decoder.DetectionTransformerDecoder` over the BEV; with
  ``with_box_refine`` every layer has its own classification branch (2 x (Linear, LN, ReLU) +
  Linear(C, K)) and regression branch (2 x (Linear, ReLU) + Linear(C, 10)), and refines the
  references; otherwise one pair of branches is shared by all layers.
- Layer l predicts, from its reference r_l (the reference it attended with):
  ``cx, cy = sigmoid(reg[0:2] + logit(r_xy))`` and ``cz = sigmoid(reg[4] + logit(r_z))`` mapped
  to metres in ``pc_range``; the other entries are the raw regression outputs (log w, log l,
  log h, sin, cos, vx, vy) — the code of :mod:`bevformer.models.coder`.
- Group-DETR: in training all ``group_detr`` groups of ``num_query`` queries run (self-attention
  within each group); the criterion matches each group to the full GT set. In eval only the
  first group runs.
- Hybrid object queries (``num_hybrid_queries = k > 0``, :mod:`bevformer.models.hybrid`):
  ``forward`` also takes k per-sample queries (content, positional embedding, reference point)
  built from the perspective head's detections. They are appended to the learned queries of
  *every* group, so a group holds ``num_query + k`` queries (learned first) and is matched and
  supervised as a whole; in eval the single group holds them too.

The losses are the detector's :class:`~bevformer.models.criterion.SetCriterion3D` (official
``BEVFormerHead.loss``) and the decoding its post-processor,
:class:`~bevformer.models.coder.NMSFreeCoder` (official ``get_bboxes``), on
:meth:`BEVFormerHead.first_group`; each is built from its own config node.

Legend: Ldec decoder layers, B batch, Q queries, G groups, K classes, S BEV cells
(bev_h * bev_w), C channels.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from bevformer.models.blocks import xavier_linear
from bevformer.models.coder import CODE_SIZE, codes_from_deltas
from bevformer.models.decoder import DetectionTransformerDecoder
from bevformer.registry import MODELS
from bevformer.structures.boxes import CLASSES
from bevformer.structures.grid import BEVGrid

__all__ = ["BEVFormerHead", "OFFICIAL_V2_CLASSES", "convert_official_head_state_dict"]

# Class order of the official ``bevformerv2`` configs (``class_names``); the project uses the
# nuScenes detection order ``bevformer.structures.boxes.CLASSES``.
OFFICIAL_V2_CLASSES = (
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
)

# official key (below ``pts_bbox_head.``) -> this head's key
_OFFICIAL_KEYS = (
    (r"^transformer\.reference_points\.", "reference_points."),
    (r"^transformer\.decoder\.layers\.(\d+)\.attentions\.0\.", r"decoder.layers.\1.self_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.attentions\.1\.", r"decoder.layers.\1.cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.", r"decoder.layers.\1.ffn.0."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.", r"decoder.layers.\1.ffn.3."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norms\.0\.", r"decoder.layers.\1.norm1."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norms\.1\.", r"decoder.layers.\1.norm2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norms\.2\.", r"decoder.layers.\1.norm3."),
    (r"^(query_embedding|cls_branches|reg_branches)\.", r"\1."),
)


def _cls_branch(embed_dims: int, num_classes: int, num_fcs: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_fcs):
        layers += [nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(True)]
    return nn.Sequential(*layers, nn.Linear(embed_dims, num_classes))


def _reg_branch(embed_dims: int, code_size: int, num_fcs: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_fcs):
        layers += [nn.Linear(embed_dims, embed_dims), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(embed_dims, code_size))


@MODELS.register_module()
class BEVFormerHead(nn.Module):
    """DETR-style 3D detection head on a BEV feature map (module docstring).

    ``forward(bev_embed [B, S, C])``: the BEV is row-major, index = row * bev_w + col, row =
    lidar-y bin, col = lidar-x bin (row 0 / col 0 at ``pc_range``'s minimum; ``grid``). Returns
    ``{"cls_scores": [Ldec, B, Q, K] logits, "bbox_preds": [Ldec, B, Q, 10] codes}`` with
    Q = ``num_query * group_detr`` in training and ``num_query`` in eval.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        embed_dims: int = 256,
        num_query: int = 900,
        group_detr: int = 1,
        num_decoder_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dims: int = 512,
        dropout: float = 0.1,
        with_box_refine: bool = True,
        num_hybrid_queries: int = 0,
    ) -> None:
        super().__init__()
        if group_detr < 1 or num_query < 1 or num_hybrid_queries < 0:
            raise ValueError(
                "need num_query >= 1, group_detr >= 1 and num_hybrid_queries >= 0, got "
                f"{num_query}, {group_detr}, {num_hybrid_queries}"
            )
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_query = num_query
        self.group_detr = group_detr
        self.num_hybrid_queries = num_hybrid_queries
        self.with_box_refine = with_box_refine

        self.query_embedding = nn.Embedding(num_query * group_detr, 2 * embed_dims)
        self.reference_points = nn.Linear(embed_dims, 3)
        self.decoder = DetectionTransformerDecoder(
            num_decoder_layers, embed_dims, num_heads, num_points, ffn_dims, dropout
        )
        cls_branch = _cls_branch(embed_dims, num_classes)
        reg_branch = _reg_branch(embed_dims, CODE_SIZE)
        if with_box_refine:
            self.cls_branches = nn.ModuleList(
                copy.deepcopy(cls_branch) for _ in range(num_decoder_layers)
            )
            self.reg_branches = nn.ModuleList(
                copy.deepcopy(reg_branch) for _ in range(num_decoder_layers)
            )
        else:  # one branch pair shared by every layer (same parameters)
            self.cls_branches = nn.ModuleList(cls_branch for _ in range(num_decoder_layers))
            self.reg_branches = nn.ModuleList(reg_branch for _ in range(num_decoder_layers))
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: decoder as the transformer, xavier references, cls bias for p = 0.01."""
        self.decoder.init_weights()
        xavier_linear(self.reference_points)
        bias = -math.log((1 - 0.01) / 0.01)  # mmcv bias_init_with_prob(0.01)
        for branch in self.cls_branches:
            nn.init.constant_(branch[-1].bias, bias)

    # ------------------------------------------------------------------ forward

    @property
    def queries_per_group(self) -> int:
        """Queries of one group: the learned ones, then the hybrid ones."""
        return self.num_query + self.num_hybrid_queries

    def _learned_queries(self, bev_embed: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
        """query, query_pos [G, num_query, C] and references [G, num_query, 3] in [0, 1]."""
        embeds = self.query_embedding.weight[: self.num_query * groups].to(bev_embed.dtype)
        query_pos, query = embeds.split(self.embed_dims, dim=1)  # [G*Qg, C] each
        reference = self.reference_points(query_pos).sigmoid()  # [G*Qg, 3]
        # [G*Qg, ...] -> [G, Qg, ...]: groups are contiguous blocks of queries
        return (
            query.view(groups, self.num_query, -1),
            query_pos.view(groups, self.num_query, -1),
            reference.view(groups, self.num_query, 3),
        )

    def _check_hybrid(self, hybrid: Mapping[str, Tensor] | None, B: int) -> None:
        k, C = self.num_hybrid_queries, self.embed_dims
        if k == 0:
            if hybrid is not None:
                raise ValueError(
                    "hybrid queries were given but the head has num_hybrid_queries=0; set "
                    "num_hybrid_queries in the head config or do not pass them"
                )
            return
        if hybrid is None:
            raise ValueError(
                f"the head has num_hybrid_queries={k} but forward got no hybrid queries; build "
                "them with bevformer.models.hybrid.HybridQueries (the detector does)"
            )
        expected = {"query": (B, k, C), "query_pos": (B, k, C), "reference": (B, k, 3)}
        for key, shape in expected.items():
            found = tuple(hybrid[key].shape) if key in hybrid else None
            if found != shape:
                raise ValueError(f"hybrid[{key!r}] must have shape {shape}, found {found}")

    def forward(
        self, bev_embed: Tensor, grid: BEVGrid, hybrid: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """``bev_embed`` [B, S, C] on ``grid`` (the encoder's) -> ``cls_scores`` [Ldec, B, Q, K],
        ``bbox_preds`` [Ldec, B, Q, 10] (class docstring).

        ``hybrid`` (required iff ``num_hybrid_queries = k > 0``): ``query``, ``query_pos``
        [B, k, C] and ``reference`` [B, k, 3] in [0, 1] of ``pc_range``, appended to the
        learned queries of every group; then Q = G * (num_query + k).
        """
        grid.check_tokens(bev_embed, "bev_embed")
        if bev_embed.shape[-1] != self.embed_dims:
            raise ValueError(
                f"bev_embed has {bev_embed.shape[-1]} channels but the head has embed_dims="
                f"{self.embed_dims}; set the head's embed_dims to the encoder's"
            )
        B = bev_embed.shape[0]
        self._check_hybrid(hybrid, B)
        groups = self.group_detr if self.training else 1
        parts = self._learned_queries(bev_embed, groups)  # 3 x [G, Qg, .]
        parts = [p.unsqueeze(0).expand(B, -1, -1, -1) for p in parts]  # 3 x [B, G, Qg, .]
        if hybrid is not None:
            extra = [hybrid[k].to(bev_embed.dtype) for k in ("query", "query_pos", "reference")]
            # [B, k, .] -> [B, G, k, .]: every group gets the same hybrid queries
            extra = [e.unsqueeze(1).expand(-1, groups, -1, -1) for e in extra]
            parts = [torch.cat([p, e], dim=2) for p, e in zip(parts, extra)]
        # [B, G, Qg + k, .] -> [B, Q, .]
        query, query_pos, reference = (p.flatten(1, 2) for p in parts)

        states, references, deltas = self.decoder(
            query,
            query_pos,
            bev_embed,
            reference,
            grid.shape,
            reg_branches=self.reg_branches if self.with_box_refine else None,
            num_groups=groups,
        )  # [Ldec, B, Q, C], [Ldec, B, Q, 3], [Ldec, B, Q, 10] | None
        cls_scores = torch.stack([br(s) for br, s in zip(self.cls_branches, states)])
        if deltas is None:
            deltas = torch.stack([br(s) for br, s in zip(self.reg_branches, states)])
        return {"cls_scores": cls_scores, "bbox_preds": codes_from_deltas(deltas, references, grid)}

    def first_group(self, outputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The last decoder layer's outputs of the first query group (learned and hybrid
        queries), detached: ``cls_scores [B, Qg, K]``, ``bbox_preds [B, Qg, 10]`` -- what the
        post-processor decodes (in eval there is one group only)."""
        per_group = self.queries_per_group
        cls_scores = outputs["cls_scores"][-1, :, :per_group].detach()
        return cls_scores, outputs["bbox_preds"][-1, :, :per_group].detach()


def convert_official_head_state_dict(
    state_dict: Mapping[str, Tensor],
    prefix: str = "pts_bbox_head.",
    official_classes: Sequence[str] = OFFICIAL_V2_CLASSES,
    classes: Sequence[str] = CLASSES,
) -> dict[str, Tensor]:
    """Detection-head weights of an official BEVFormer checkpoint, renamed for this head.

    Takes the keys under ``prefix`` that belong to the decoder side (query embedding, reference
    points, decoder layers, branches; the encoder and BEV embedding keys are left out) and
    reorders the rows of the last classification layers from ``official_classes`` to
    ``classes`` (the official v2 configs list the classes alphabetically). The result loads
    with ``head.load_state_dict(..., strict=True)``.
    """
    if sorted(official_classes) != sorted(classes):
        raise ValueError(f"class lists differ: {list(official_classes)} vs {list(classes)}")
    order = torch.tensor([list(official_classes).index(name) for name in classes])
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        for pattern, replacement in _OFFICIAL_KEYS:
            if re.match(pattern, name):
                converted[re.sub(pattern, replacement, name)] = value
                break
    last = [k for k in converted if re.fullmatch(r"cls_branches\.\d+\.\d+\.(weight|bias)", k)]
    depth = max((int(k.split(".")[2]) for k in last), default=-1)
    for key in last:
        if int(key.split(".")[2]) == depth:
            converted[key] = converted[key][order]
    return converted


# ---------------------------------------------------------------- official BEVFormer v2 keys
# Where this head's tensors sit in an official BEVFormer v2 checkpoint: the rules above under
# the detector's ``pts_bbox_head.`` (decoder layers: mmcv ``attentions.0`` = MultiheadAttention
# or GroupMultiheadAttention wrapping ``nn.MultiheadAttention`` as ``attn`` -- same
# ``in_proj_weight`` layout -- ``attentions.1`` = CustomMSDeformableAttention, ``norms.0..2``).
# ``query_embedding`` rows are (query_pos, query) as here. Rules are (regex matched at the start
# of the official key, replacement of the matched part).
OFFICIAL_BEVFORMERV2_KEYS = tuple(
    (r"^pts_bbox_head\." + pattern.removeprefix("^"), repl) for pattern, repl in _OFFICIAL_KEYS
)
# Official tensors without a counterpart: ``code_weights`` is an ``nn.Parameter`` (no grad)
# there, a non-persistent buffer built from the config here.
OFFICIAL_BEVFORMERV2_DROPPED = ("pts_bbox_head.code_weights",)


def official_class_channels(head: BEVFormerHead) -> dict[str, int]:
    """Keys (below the head) of the class-indexed tensors -> channels per class: the last
    Linear of every classification branch (one output row per class)."""
    out = {}
    for i, branch in enumerate(head.cls_branches):
        last = len(branch) - 1
        out[f"cls_branches.{i}.{last}.weight"] = 1
        out[f"cls_branches.{i}.{last}.bias"] = 1
    return out
