"""InternImage: a DCNv3 backbone (T/S/B/L/XL/H) whose parameters match the official checkpoints.

Paper: W. Wang et al., "InternImage: Exploring Large-Scale Vision Foundation Models with
Deformable Convolutions", CVPR 2023 (arXiv:2211.05778). Structure, parameter names and forward
pass follow the official ``classification/models/intern_image.py`` and
``detection/mmdet_custom/models/backbones/intern_image.py`` (OpenGVLab/InternImage), so
``state_dict()`` keys and shapes are those of the released classification checkpoints
(see ``backbones/README.md``; presets in :mod:`backbones.internimage_presets`).

Data flow (features are NHWC inside, C_i = channels * 2**i):

    image [B, 3, H, W]
    -> patch_embed: conv3x3 s2 (3 -> C/2), norm, act, conv3x3 s2 (C/2 -> C), norm
                                                          [B, H/4, W/4, C_0]
    -> levels[i], i = 0..3: depths[i] blocks, each (pre-norm, ``post_norm=False``)
           x = x + drop_path(gamma1 * dcn(norm1(x)));  x = x + drop_path(gamma2 * mlp(norm2(x)))
       or (``post_norm=True``)
           x = x + drop_path(gamma1 * norm1(dcn(x)));  x = x + drop_path(gamma2 * norm2(mlp(x)))
       or (``res_post_norm=True``, H)
           x = x + drop_path(res_post_norm1(dcn(norm1(x))));  likewise for the MLP
       then ``levels[i].norm`` (only when ``post_norm`` is off or with centre feature scale),
       the stage output                                    [B, H/2**(i+2), W/2**(i+2), C_i]
       and a downsample: conv3x3 s2 without bias (C_i -> 2 C_i), norm (not after the last)
    -> backbone output: the selected stage outputs before downsampling, NCHW
       [B, C_i, H/2**(i+2), W/2**(i+2)] for i in ``out_indices``

The optional classification head (``num_classes`` not None) is the official one:
conv1x1 (C_3 -> cls_scale*C_3, no bias) + BN + act + global average pool + linear, or for H
(``use_clip_projector``) the attention-pooling projector. It exists so that classification
checkpoints and parameter counts can be checked; detection models leave it out.

Pretrained weights: ``init_cfg=dict(type="Pretrained", checkpoint=PATH, prefix=None)`` is
applied by ``init_weights()`` (the detector calls it once before training; building the model
does not read the file). Classification, detection and Hugging Face files are accepted
(:func:`backbones.checkpoint.internimage_filter_fn`); the classifier head is left out and
everything loaded, missing or skipped is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from backbones.checkpoint import check_init_cfg, init_from_pretrained, internimage_filter_fn
from backbones.clip_projector import AttentionPoolingBlock
from backbones.dcnv3 import DCNv3, build_act_layer, build_norm_layer

__all__ = ["InternImage", "InternImageLayer", "InternImageBlock", "DropPath"]


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016): zero a whole residual branch."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class StemLayer(nn.Module):
    """[B, 3, H, W] -> [B, H/4, W/4, C]: two stride-2 3x3 convs with norm and activation."""

    def __init__(self, in_chans: int, out_chans: int, act_layer: str, norm_layer: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, kernel_size=3, stride=2, padding=1)
        half = out_chans // 2
        self.norm1 = build_norm_layer(half, norm_layer, "channels_first", "channels_first")
        self.act = build_act_layer(act_layer)
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, kernel_size=3, stride=2, padding=1)
        self.norm2 = build_norm_layer(out_chans, norm_layer, "channels_first", "channels_last")

    def forward(self, x: Tensor) -> Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleLayer(nn.Module):
    """[B, H, W, C] -> [B, H/2, W/2, 2C]: conv3x3 stride 2 without bias, then norm."""

    def __init__(self, channels: int, norm_layer: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = build_norm_layer(2 * channels, norm_layer, "channels_first", "channels_last")

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class MLPLayer(nn.Module):
    """Position-wise MLP on the last dim: fc1, act, dropout, fc2, dropout."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: str, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = build_act_layer(act_layer)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class InternImageLayer(nn.Module):
    """One InternImage block on [B, H, W, C]: DCNv3 and MLP residual branches (see module doc).

    ``with_cp`` recomputes the block in the backward pass with non-reentrant
    ``torch.utils.checkpoint`` (works under DDP and when the input needs no grad; the RNG state
    is restored, so drop-path masks match).
    """

    def __init__(
        self,
        channels: int,
        groups: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: str = "GELU",
        norm_layer: str = "LN",
        post_norm: bool = False,
        layer_scale: float | None = None,
        offset_scale: float = 1.0,
        with_cp: bool = False,
        dw_kernel_size: int | None = None,
        res_post_norm: bool = False,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        core_op: str = "DCNv3",
    ) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.post_norm = post_norm
        self.res_post_norm = res_post_norm
        self.norm1 = build_norm_layer(channels, "LN")
        self.dcn = DCNv3(
            channels=channels,
            kernel_size=3,
            dw_kernel_size=dw_kernel_size,
            stride=1,
            pad=1,
            dilation=1,
            group=groups,
            offset_scale=offset_scale,
            act_layer=act_layer,
            norm_layer=norm_layer,
            center_feature_scale=center_feature_scale,
            remove_center=remove_center,
            core_op=core_op,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = build_norm_layer(channels, "LN")
        self.mlp = MLPLayer(channels, int(channels * mlp_ratio), act_layer, drop)
        self.layer_scale = layer_scale is not None
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(channels))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(channels))
        if res_post_norm:
            self.res_post_norm1 = build_norm_layer(channels, "LN")
            self.res_post_norm2 = build_norm_layer(channels, "LN")

    def _inner_forward(self, x: Tensor) -> Tensor:
        # Same branch order as the official layer: layer scale decides first, then post-norm.
        if self.layer_scale:
            if self.post_norm:
                x = x + self.drop_path(self.gamma1 * self.norm1(self.dcn(x)))
                return x + self.drop_path(self.gamma2 * self.norm2(self.mlp(x)))
            x = x + self.drop_path(self.gamma1 * self.dcn(self.norm1(x)))
            return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        if self.post_norm:
            x = x + self.drop_path(self.norm1(self.dcn(x)))
            return x + self.drop_path(self.norm2(self.mlp(x)))
        if self.res_post_norm:
            x = x + self.drop_path(self.res_post_norm1(self.dcn(self.norm1(x))))
            return x + self.drop_path(self.res_post_norm2(self.mlp(self.norm2(x))))
        x = x + self.drop_path(self.dcn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and torch.is_grad_enabled():
            return checkpoint(self._inner_forward, x, use_reentrant=False)
        return self._inner_forward(x)


class InternImageBlock(nn.Module):
    """One stage (a "level"): ``depth`` layers, optional norms, optional downsample.

    ``forward`` returns (output after downsample, stage output before downsample), NHWC.
    """

    def __init__(
        self,
        channels: int,
        depth: int,
        groups: int,
        downsample: bool = True,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: Sequence[float] = (),
        act_layer: str = "GELU",
        norm_layer: str = "LN",
        post_norm: bool = False,
        offset_scale: float = 1.0,
        layer_scale: float | None = None,
        with_cp: bool = False,
        dw_kernel_size: int | None = None,
        post_norm_block_ids: Sequence[int] | None = None,
        res_post_norm: bool = False,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        core_op: str = "DCNv3",
    ) -> None:
        super().__init__()
        drop_path = list(drop_path) if len(drop_path) else [0.0] * depth
        self.blocks = nn.ModuleList(
            InternImageLayer(
                channels=channels,
                groups=groups,
                mlp_ratio=mlp_ratio,
                drop=drop,
                drop_path=drop_path[i],
                act_layer=act_layer,
                norm_layer=norm_layer,
                post_norm=post_norm,
                layer_scale=layer_scale,
                offset_scale=offset_scale,
                with_cp=with_cp,
                dw_kernel_size=dw_kernel_size,
                res_post_norm=res_post_norm,
                center_feature_scale=center_feature_scale,
                remove_center=remove_center,
                core_op=core_op,
            )
            for i in range(depth)
        )
        # The official model keeps this norm unless post-norm is on (H keeps it: it uses
        # centre feature scale).
        self.has_norm = not post_norm or center_feature_scale
        if self.has_norm:
            self.norm = build_norm_layer(channels, "LN")
        self.post_norm_block_ids = list(post_norm_block_ids or [])
        if self.post_norm_block_ids:
            self.post_norms = nn.ModuleList(
                build_norm_layer(channels, "LN") for _ in self.post_norm_block_ids
            )
        self.downsample = DownsampleLayer(channels, norm_layer) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.post_norm_block_ids:
                x = self.post_norms[self.post_norm_block_ids.index(i)](x)
        if self.has_norm:
            x = self.norm(x)
        stage_out = x
        if self.downsample is not None:
            x = self.downsample(x)
        return x, stage_out


class InternImage(nn.Module):
    """InternImage backbone: image [B, 3, H, W] -> list of NCHW stage features (module doc).

    ``out_channels`` / ``strides`` give the channels and strides of the returned maps, in
    ``out_indices`` order. ``frozen_stages = k >= 0`` freezes the stem and ``levels[:k]``
    (parameters without grad, modules in eval mode). ``num_classes`` adds the classification
    head; ``classify`` runs it.
    """

    def __init__(
        self,
        core_op: str = "DCNv3",
        channels: int = 64,
        depths: Sequence[int] = (4, 4, 18, 4),
        groups: Sequence[int] = (4, 8, 16, 32),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        drop_path_type: str = "linear",
        act_layer: str = "GELU",
        norm_layer: str = "LN",
        layer_scale: float | None = None,
        offset_scale: float = 1.0,
        post_norm: bool = False,
        with_cp: bool = False,
        dw_kernel_size: int | None = None,
        level2_post_norm: bool = False,
        level2_post_norm_block_ids: Sequence[int] | None = None,
        res_post_norm: bool = False,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        num_classes: int | None = None,
        cls_scale: float = 1.5,
        use_clip_projector: bool = False,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.init_cfg = check_init_cfg(init_cfg, type(self).__name__)
        if len(depths) != len(groups):
            raise ValueError(f"depths {list(depths)} and groups {list(groups)} differ in length.")
        num_levels = len(depths)
        if not out_indices or any(not 0 <= i < num_levels for i in out_indices):
            raise ValueError(f"out_indices must lie in [0, {num_levels}), got {out_indices}.")
        if drop_path_type not in ("linear", "uniform"):
            raise ValueError(f"drop_path_type must be 'linear' or 'uniform', got {drop_path_type}")
        self.core_op = core_op
        self.depths = list(depths)
        self.channels = channels
        self.num_levels = num_levels
        self.num_features = channels * 2 ** (num_levels - 1)
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.use_clip_projector = use_clip_projector

        self.patch_embed = StemLayer(3, channels, act_layer, norm_layer)
        self.pos_drop = nn.Dropout(drop_rate)
        # Linear stochastic-depth schedule over all blocks (device given: works under meta).
        total = sum(depths)
        if drop_path_type == "linear":
            dpr = torch.linspace(0, drop_path_rate, total, device="cpu").tolist()
        else:
            dpr = [drop_path_rate] * total
        self.levels = nn.ModuleList()
        for i in range(num_levels):
            first = sum(depths[:i])
            self.levels.append(
                InternImageBlock(
                    channels=channels * 2**i,
                    depth=depths[i],
                    groups=groups[i],
                    downsample=i < num_levels - 1,
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    drop_path=dpr[first : first + depths[i]],
                    act_layer=act_layer,
                    norm_layer=norm_layer,
                    post_norm=post_norm,
                    offset_scale=offset_scale,
                    layer_scale=layer_scale,
                    with_cp=with_cp,
                    dw_kernel_size=dw_kernel_size,
                    post_norm_block_ids=level2_post_norm_block_ids
                    if level2_post_norm and i == 2
                    else None,
                    res_post_norm=res_post_norm,
                    center_feature_scale=center_feature_scale,
                    remove_center=remove_center,
                    core_op=core_op,
                )
            )

        self.num_classes = num_classes
        if num_classes is not None:
            self._build_classifier(num_classes, cls_scale, act_layer, norm_layer)
        self.apply(self._init_weights)
        for m in self.modules():
            if isinstance(m, DCNv3):
                m.reset_parameters()
        self._freeze_stages()

    def _build_classifier(
        self, num_classes: int, cls_scale: float, act_layer: str, norm_layer: str
    ) -> None:
        head_in = self.num_features
        if not self.use_clip_projector:  # T/S/B/L/XL
            hidden = int(head_in * cls_scale)
            self.conv_head = nn.Sequential(
                nn.Conv2d(head_in, hidden, kernel_size=1, bias=False),
                build_norm_layer(hidden, "BN", "channels_first", "channels_first"),
                build_act_layer(act_layer),
            )
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            head_in = hidden
        else:  # H: fuse the last two stages, then attention pooling (official constants)
            embed_dim, stride, num_heads, clip_dim = 1024, 2, 16, 768
            self.dcnv3_head_x4 = nn.Sequential(
                nn.Conv2d(head_in, embed_dim * stride**2, kernel_size=1),
                nn.PixelShuffle(stride),
            )
            self.dcnv3_head_x3 = nn.Conv2d(head_in // 2, embed_dim, kernel_size=1)
            self.clip_projector = AttentionPoolingBlock(embed_dim, num_heads, clip_dim)
            self.fc_norm = build_norm_layer(clip_dim, norm_layer)
            head_in = clip_dim
        self.head = nn.Linear(head_in, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def init_weights(self) -> None:
        """Load ``init_cfg``'s pretrained file (no-op without one; the weights are made at
        construction). Called once by the detector's ``init_weights`` before training."""
        if self.init_cfg is not None:
            init_from_pretrained(self, self.init_cfg, internimage_filter_fn)
        self.is_init = True

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of the returned maps, in ``out_indices`` order."""
        return tuple(self.channels * 2**i for i in self.out_indices)

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides (input pixels per feature cell) of the returned maps."""
        return tuple(2 ** (i + 2) for i in self.out_indices)

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        for module in [self.patch_embed, *self.levels[: self.frozen_stages]]:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> InternImage:
        super().train(mode)
        self._freeze_stages()
        return self

    def forward_stages(self, x: Tensor, last: int | None = None) -> list[Tensor]:
        """All stage outputs up to ``last`` (default: every stage), NHWC, before downsample."""
        last = self.num_levels - 1 if last is None else last
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for level in self.levels[: last + 1]:
            x, stage_out = level(x)
            outs.append(stage_out)
        return outs

    def forward(self, x: Tensor) -> list[Tensor]:
        """[B, 3, H, W] -> [B, C_i, H / s_i, W / s_i] for each i in ``out_indices``."""
        stages = self.forward_stages(x, last=max(self.out_indices))
        return [stages[i].permute(0, 3, 1, 2).contiguous() for i in self.out_indices]

    def classify(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> logits [B, num_classes] with the classification head."""
        if self.num_classes is None:
            raise RuntimeError(
                "This InternImage has no classification head; build it with num_classes=1000 "
                "(or the checkpoint's class count) to classify."
            )
        stages = self.forward_stages(x)
        if not self.use_clip_projector:
            # The head sees the last stage (which has no downsample): [B, C_3, h, w].
            feat = self.conv_head(stages[-1].permute(0, 3, 1, 2))
            feat = torch.flatten(self.avgpool(feat), 1)
        else:
            x4 = self.dcnv3_head_x4(stages[3].permute(0, 3, 1, 2))
            x3 = self.dcnv3_head_x3(stages[2].permute(0, 3, 1, 2))
            # [B, 1024, h3, w3] -> [B, h3*w3, 1024] tokens
            tokens = (x4 + x3).flatten(2).transpose(1, 2).contiguous()
            feat = self.fc_norm(self.clip_projector(tokens))
        return self.head(feat)
