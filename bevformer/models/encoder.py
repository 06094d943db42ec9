"""The BEVFormer (v2) BEV encoder: BEV queries + learned positional encoding, then layers of
(BEV self-attention, LN, spatial cross-attention, LN, FFN, LN).

Li et al., "BEVFormer", ECCV 2022 (arXiv:2203.17270) section 3; BEVFormer v2 (Yang et al.,
CVPR 2023, arXiv:2211.10439) keeps the encoder and drops the can-bus / shift inputs. Official
code: BEVFormer ``modules/encoder.py`` (``BEVFormerEncoder.get_reference_points``,
``point_sampling``, ``BEVFormerLayer``) and ``modules/transformerV2.py``
(``PerceptionTransformerBEVEncoder``: camera and level embeddings added to the flattened
features).

Each BEV cell of the :class:`~bevformer.structures.grid.BEVGrid` (row i = lidar y, column j =
lidar x, flattened row-major) is a pillar with D z-anchors evenly spread over the ``pc_range``
height (for [-5, 3]: -4.5, -2.17, 0.17, 2.5 m; ``BEVGrid.pillar_points``).
The anchors are projected with each camera's ``lidar2img`` and normalised by the padded image
size; a (sample, camera, query) is visible where any anchor has depth > 1e-5 and lands inside
(0, 1) x (0, 1).

Legend: B batch, N cameras, Q = H*W BEV queries, D z-anchors, L levels, S image tokens over all
levels, C channels.

    mlvl_feats  L x [B, N, C, h_l, w_l]      lidar2img [B, N, 4, 4]     -> bev [B, Q, C]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bevformer.data.infos import CAMERA_NAMES
from bevformer.models.attention import BEVSelfAttention, SpatialCrossAttention
from bevformer.models.blocks import FFN, xavier_linear
from bevformer.models.positional import LearnedPositionalEncoding
from bevformer.models.precision import force_fp32
from bevformer.registry import MODELS
from bevformer.structures.grid import BEVGrid

__all__ = ["BEVEncoder", "BEVEncoderLayer", "project_reference_points"]


@force_fp32
def project_reference_points(
    points: Tensor, lidar2img: Tensor, img_shape: Sequence[int], eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Projects ``points [D, Q, 3]`` into every camera of every sample.

    Returns ``ref_cam [B, N, Q, D, 2]`` (pixel / padded (W, H), so in [0, 1] inside the image)
    and ``mask [B, N, Q, D]`` (depth > eps and strictly inside the image). Computed in at least
    float32 and outside autocast, as the official ``point_sampling``.
    """
    dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    img_h, img_w = int(img_shape[0]), int(img_shape[1])
    pts = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1).to(dtype)  # [D, Q, 4]
    # [B, N, 1, 1, 4, 4] @ [1, 1, D, Q, 4, 1] -> [B, N, D, Q, 4]
    cam = torch.einsum("bnij,dqj->bndqi", lidar2img.to(dtype), pts)
    depth = cam[..., 2:3]
    mask = depth > eps
    uv = cam[..., 0:2] / torch.clamp(depth, min=eps)
    uv = uv / uv.new_tensor([img_w, img_h])
    mask = mask & (uv > 0.0).all(-1, keepdim=True) & (uv < 1.0).all(-1, keepdim=True)
    # [B, N, D, Q, ...] -> [B, N, Q, D, ...]
    return uv.permute(0, 1, 3, 2, 4), mask.squeeze(-1).permute(0, 1, 3, 2)


class BEVEncoderLayer(nn.Module):
    """One encoder layer, in the official operation order (``BEVFormerLayer``)::

    q = LN(q + Dropout(SelfAttn(q, pos)))
    q = LN(q + Dropout(SpatialCrossAttn(q, image features)))
    q = LN(q + FFN(q))
    """

    def __init__(
        self,
        embed_dims: int,
        ffn_dims: int,
        num_levels: int,
        num_heads: int = 8,
        self_attn_points: int = 4,
        cross_attn_points: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.self_attn = BEVSelfAttention(embed_dims, num_heads, 1, self_attn_points)
        self.cross_attn = SpatialCrossAttention(
            embed_dims, num_heads, num_levels, cross_attn_points
        )
        self.ffn = FFN(embed_dims, ffn_dims, dropout)
        for m in self.ffn:
            if isinstance(m, nn.Linear):
                xavier_linear(m)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: Tensor,
        bev_pos: Tensor,
        ref_2d: Tensor,
        bev_shape: Tensor,
        value: Tensor,
        ref_cam: Tensor,
        bev_mask: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        value_pair: Tensor | None = None,
    ) -> Tensor:
        attn = self.self_attn(query, bev_pos, ref_2d, bev_shape, value_pair)
        query = self.norms[0](query + self.dropout(attn))
        attn = self.cross_attn(query, value, ref_cam, bev_mask, spatial_shapes, level_start_index)
        query = self.norms[1](query + self.dropout(attn))
        return self.norms[2](query + self.ffn(query))


@MODELS.register_module()
class BEVEncoder(nn.Module):
    """Lifts multi-camera, multi-level image features to the BEV of ``grid``
    (:class:`~bevformer.structures.grid.BEVGrid`: ``bev_h x bev_w`` cells over ``pc_range``).

    ``camera_names`` are the cameras the model is built for, in the order of its camera
    embeddings (``cams_embeds [N, C]``, row n for ``camera_names[n]``; default the six nuScenes
    cameras in the official order, :data:`bevformer.data.infos.CAMERA_NAMES`). The images of a
    batch must come in this order: the dataset stacks them by these names and the detector
    checks the batch's names against them. ``num_cams`` is ``len(camera_names)``; giving it
    is optional and it must agree (``ValueError`` otherwise).
    """

    def __init__(
        self,
        *,
        embed_dims: int = 256,
        grid: BEVGrid,
        num_layers: int = 6,
        num_points_in_pillar: int = 4,
        num_levels: int = 4,
        camera_names: Sequence[str] = CAMERA_NAMES,
        num_cams: int | None = None,
        num_heads: int = 8,
        self_attn_points: int = 4,
        cross_attn_points: int = 8,
        ffn_dims: int = 512,
        dropout: float = 0.1,
        use_cams_embeds: bool = True,
    ) -> None:
        super().__init__()
        if embed_dims % 2 != 0:
            raise ValueError(f"embed_dims must be even (row + column encoding), got {embed_dims}")
        if not isinstance(grid, BEVGrid):
            raise TypeError(
                "grid must be a BEVGrid (config: grid=dict(type='BEVGrid', bev_h=..., bev_w=..., "
                f"pc_range=...)), got {type(grid).__name__}"
            )
        self.embed_dims, self.grid = embed_dims, grid
        bev_h, bev_w = grid.shape
        self.num_points_in_pillar = num_points_in_pillar
        self.camera_names = tuple(str(c) for c in camera_names)
        if not self.camera_names or len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(
                f"camera_names must list the model's cameras once each, in the order of its "
                f"camera embeddings; got {list(camera_names)}"
            )
        if num_cams is not None and num_cams != len(self.camera_names):
            raise ValueError(
                f"num_cams={num_cams} but camera_names lists {len(self.camera_names)} cameras "
                f"{list(self.camera_names)}; drop num_cams (it is len(camera_names)) or list "
                "the cameras the model is built for"
            )
        num_cams = len(self.camera_names)
        self.num_levels, self.num_cams = num_levels, num_cams
        self.bev_embedding = nn.Embedding(bev_h * bev_w, embed_dims)
        self.positional_encoding = LearnedPositionalEncoding(embed_dims // 2, bev_h, bev_w)
        self.level_embeds = nn.Parameter(torch.empty(num_levels, embed_dims))
        self.cams_embeds = (
            nn.Parameter(torch.empty(num_cams, embed_dims)) if use_cams_embeds else None
        )
        nn.init.normal_(self.level_embeds)
        if self.cams_embeds is not None:
            nn.init.normal_(self.cams_embeds)
        self.layers = nn.ModuleList(
            BEVEncoderLayer(
                embed_dims,
                ffn_dims,
                num_levels,
                num_heads,
                self_attn_points,
                cross_attn_points,
                dropout,
            )
            for _ in range(num_layers)
        )

    def flatten_features(self, mlvl_feats: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``L x [B, N, C, h, w]`` -> value ``[B, N, S, C]`` (+ camera and level embeddings),
        spatial_shapes ``[L, 2]`` (h, w), level_start_index ``[L]``."""
        if len(mlvl_feats) != self.num_levels:
            raise ValueError(
                f"encoder expects {self.num_levels} feature levels, got {len(mlvl_feats)}; "
                "set num_levels in the encoder config"
            )
        num_cams = mlvl_feats[0].shape[1]
        if self.cams_embeds is not None and num_cams != self.num_cams:
            raise ValueError(
                f"the encoder has camera embeddings for {self.num_cams} cameras "
                f"{list(self.camera_names)}, got features of {num_cams} cameras; give the "
                "images of these cameras in this order (the dataset's camera_names) or set "
                "camera_names in the encoder config"
            )
        flat, shapes = [], []
        for lvl, feat in enumerate(mlvl_feats):
            B, N, C, h, w = feat.shape
            x = feat.flatten(3).transpose(2, 3)  # [B, N, h*w, C]
            if self.cams_embeds is not None:
                x = x + self.cams_embeds[:, None, :].to(x.dtype)
            x = x + self.level_embeds[lvl].to(x.dtype)
            flat.append(x)
            shapes.append((h, w))
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=flat[0].device)
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1])
        )
        return torch.cat(flat, dim=2), spatial_shapes, level_start_index

    def forward(
        self,
        mlvl_feats: Sequence[Tensor],
        lidar2img: Tensor,
        img_shape: Sequence[int],
        prev_bev: Tensor | None = None,
        prev_valid: Tensor | None = None,
    ) -> Tensor:
        """mlvl_feats ``L x [B, N, C, h, w]``; lidar2img ``[B, N, 4, 4]``; img_shape padded
        (H, W) -> bev ``[B, Q, C]`` (row-major over (y, x)).

        ``prev_bev [B, Q, C]``, aligned to this grid, turns the self-attention into v1 temporal
        self-attention over the pair (prev_bev, initial queries), as the official encoder;
        ``prev_valid [B]`` marks the samples that have one (the others, and every sample when
        ``prev_bev`` is None, attend over (query, query): the v2 form).
        """
        value, spatial_shapes, level_start_index = self.flatten_features(mlvl_feats)
        B = value.shape[0]
        dtype, device = value.dtype, value.device
        grid = self.grid
        H, W = grid.shape
        query = self.bev_embedding.weight.to(dtype)[None].expand(B, -1, -1)  # [B, Q, C]
        bev_pos = self.positional_encoding(H, W).to(dtype).flatten(1).t()[None]  # [1, Q, C]
        bev_pos = bev_pos.expand(B, -1, -1)
        ref_2d = grid.reference_points_2d(dtype, device)[None, :, None].expand(B, -1, -1, -1)
        ref_3d = grid.pillar_points(self.num_points_in_pillar, dtype, device)
        ref_cam, bev_mask = project_reference_points(ref_3d, lidar2img, img_shape)
        ref_cam = ref_cam.to(dtype)
        bev_shape = torch.as_tensor([[H, W]], dtype=torch.long, device=device)
        fixed_pair = None
        if prev_bev is not None:
            fixed_pair = torch.stack([prev_bev.to(dtype), query], dim=1)  # [B, 2, Q, C]
            if prev_valid is None:
                prev_valid = torch.ones(B, dtype=torch.bool, device=device)
        for layer in self.layers:
            value_pair = None
            if fixed_pair is not None:
                value_pair = torch.where(
                    prev_valid.view(B, 1, 1, 1), fixed_pair, torch.stack([query, query], dim=1)
                )
            query = layer(
                query,
                bev_pos,
                ref_2d,
                bev_shape,
                value,
                ref_cam,
                bev_mask,
                spatial_shapes,
                level_start_index,
                value_pair,
            )
        return query


# ---------------------------------------------------------------- official BEVFormer v2 keys
# Where this encoder's tensors sit in an official BEVFormer v2 checkpoint (BEVFormer
# ``dense_heads/bevformer_head.py``: ``bev_embedding``, ``positional_encoding`` = mmdet
# ``LearnedPositionalEncoding``, concatenating column then row embeddings as here;
# ``modules/transformerV2.py``: ``level_embeds``, ``cams_embeds``; ``modules/encoder.py``
# ``BEVFormerLayer`` = mmcv transformer layer with ``attentions.0`` TemporalSelfAttention,
# ``attentions.1`` SpatialCrossAttention, ``ffns.0.layers.{0.0,1}`` the two FFN Linears and
# ``norms.0..2`` in operation order). Inside the attentions the names, shapes and layouts
# (offsets viewed as heads x copies x levels x points x 2) are the official ones. Rules are
# (regex matched at the start of the official key, replacement of the matched part).
_OFFICIAL_LAYER = r"^pts_bbox_head\.transformer\.encoder\.layers\.(\d+)\."
OFFICIAL_BEVFORMERV2_KEYS = (
    (r"^pts_bbox_head\.bev_embedding\.", "bev_embedding."),
    (r"^pts_bbox_head\.positional_encoding\.", "positional_encoding."),
    (r"^pts_bbox_head\.transformer\.(level_embeds|cams_embeds)$", r"\1"),
    (_OFFICIAL_LAYER + r"attentions\.0\.", r"layers.\1.self_attn."),
    (_OFFICIAL_LAYER + r"attentions\.1\.", r"layers.\1.cross_attn."),
    (_OFFICIAL_LAYER + r"ffns\.0\.layers\.0\.0\.", r"layers.\1.ffn.0."),
    (_OFFICIAL_LAYER + r"ffns\.0\.layers\.1\.", r"layers.\1.ffn.3."),
    (_OFFICIAL_LAYER + r"norms\.", r"layers.\1.norms."),
)
