"""ResNet-50/101/152 backbone on torchvision, with the options of mmdet's ``ResNet``.

Paper: K. He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. The official
BEVFormer v2 R50 configs use mmdet ``ResNet(depth=50, out_indices=(1, 2, 3), frozen_stages=-1,
norm_cfg=SyncBN, norm_eval=False, style='caffe')``. Parameter names are torchvision's
(``conv1``, ``bn1``, ``layer{1..4}.{j}.conv{1,2,3}``, ``...downsample.{0,1}``), which are also
mmdet's, so either checkpoint loads without renaming.

Pretrained weights (``init_cfg=dict(type="Pretrained", checkpoint=PATH, prefix=None)``,
applied by ``init_weights()``; :func:`checkpoint_filter_fn` maps the files):

- torchvision ResNet files: ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...,
  ``fc.*`` (the classifier, dropped);
- mmdet's caffe-style ResNet (``open-mmlab://detectron2/resnet50_caffe`` =
  ``resnet50_msra-5891d200.pth``, written by mmdet ``tools/model_converters/
  detectron2pytorch.py``): ``{"state_dict": ...}`` with the same names, BatchNorm as a frozen
  affine (``running_mean`` 0, ``running_var`` 1) and no ``num_batches_tracked``;
- detector files holding the backbone under ``img_backbone.`` (BEVFormer, e.g. the
  ``fcos_r50_coco_2mmdet.pth`` of the official R50 configs) or ``backbone.`` (mmdet): only
  those keys are used.

``style='caffe'`` puts the stride-2 of a downsampling bottleneck on its first 1x1 conv
(mmdet/Detectron); ``style='pytorch'`` (torchvision's default) puts it on the 3x3 conv.

Input [B, 3, H, W] -> for each i in ``out_indices``: [B, (256, 512, 1024, 2048)[i], H/s, W/s]
with s = (4, 8, 16, 32)[i]; ``out_indices=(1, 2, 3)`` gives C3..C5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torchvision
from torch import Tensor, nn

from backbones.checkpoint import check_init_cfg, init_from_pretrained, unwrap_state_dict

__all__ = ["ResNetBackbone", "checkpoint_filter_fn"]

# Prefixes, in the order tried, under which a detector stores its backbone.
_BACKBONE_PREFIXES = ("img_backbone.", "backbone.")

_BUILDERS = {
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
    152: torchvision.models.resnet152,
}
_CHANNELS = (256, 512, 1024, 2048)
_STRIDES = (4, 8, 16, 32)


class ResNetBackbone(nn.Module):
    """Bottleneck ResNet returning NCHW stage outputs for ``out_indices`` (module docstring).

    ``frozen_stages = k >= 0`` freezes the stem and ``layer1..layer{k}``; ``norm_eval`` keeps
    every BatchNorm in eval mode during training (running statistics frozen).
    ``norm_layer='SyncBN'`` builds ``nn.SyncBatchNorm`` layers.
    """

    def __init__(
        self,
        depth: int = 50,
        out_indices: Sequence[int] = (1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        style: str = "pytorch",
        norm_layer: str = "BN",
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.init_cfg = check_init_cfg(init_cfg, type(self).__name__)
        if depth not in _BUILDERS:
            raise ValueError(f"depth must be one of {sorted(_BUILDERS)}, got {depth}.")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}.")
        if norm_layer not in ("BN", "SyncBN"):
            raise ValueError(f"norm_layer must be 'BN' or 'SyncBN', got {norm_layer!r}.")
        if not out_indices or any(not 0 <= i < 4 for i in out_indices):
            raise ValueError(f"out_indices must lie in [0, 4), got {out_indices}.")
        norm = nn.BatchNorm2d if norm_layer == "BN" else nn.SyncBatchNorm
        net = _BUILDERS[depth](weights=None, norm_layer=norm)
        self.depth = depth
        self.style = style
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        if style == "caffe":
            for layer in self.stages:
                for block in layer:
                    if block.conv2.stride != (1, 1):
                        block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
        self._freeze_stages()

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(_CHANNELS[i] for i in self.out_indices)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(_STRIDES[i] for i in self.out_indices)

    def init_weights(self) -> None:
        """Load ``init_cfg``'s pretrained file (no-op without one; the weights are made at
        construction). Called once by the detector's ``init_weights`` before training."""
        if self.init_cfg is not None:
            init_from_pretrained(self, self.init_cfg, checkpoint_filter_fn)
        self.is_init = True

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen: list[nn.Module] = [self.conv1, self.bn1, *self.stages[: self.frozen_stages]]
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i, layer in enumerate(self.stages[: max(self.out_indices) + 1]):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def checkpoint_filter_fn(
    checkpoint: Mapping[str, Any], model: nn.Module
) -> tuple[dict[str, Tensor], list[str]]:
    """torchvision / mmdet (caffe) / detector ResNet files -> ``model``'s keys (module doc).

    Returns the state dict and the keys left out on purpose: the torchvision classifier
    (``fc.*``), non-tensor entries, and in detector files everything outside the backbone.
    """
    tensors, skipped = unwrap_state_dict(checkpoint)
    for prefix in _BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in tensors):
            skipped += [k for k in tensors if not k.startswith(prefix)]
            tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            break
    skipped += [k for k in tensors if k.startswith("fc.")]
    return {k: v for k, v in tensors.items() if not k.startswith("fc.")}, skipped


# ---------------------------------------------------------------- official BEVFormer v2 keys
# Where this backbone's tensors sit in an official BEVFormer v2 checkpoint (fundamentalvision/
# BEVFormer ``bevformerv2-r50-*`` configs: mmdet ``ResNet`` as the detector's ``img_backbone``).
# mmdet names the stem, bottlenecks and downsample branches as torchvision does, with the same
# shapes, so only the prefix is removed. Rules are (regex matched at the start of the official
# key, replacement of the matched part), composed by ``bevformer.models.official``.
OFFICIAL_BEVFORMERV2_KEYS = ((r"^img_backbone\.", ""),)
