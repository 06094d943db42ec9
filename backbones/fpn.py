"""Feature Pyramid Network neck with mmdetection's module names and options.

Paper: T.-Y. Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017. Behaviour
and parameter names follow mmdet's ``FPN`` (``lateral_convs.i.conv.*``, ``fpn_convs.i.conv.*``),
so mmdet FPN weights load unchanged; there are no norm layers and no activations apart from the
optional ReLU before extra convs, as in the BEVFormer v2 configs.

For inputs C_i [B, C_in_i, H_i, W_i] (i = start_level .. end_level):

    lateral_i = conv1x1(C_i)                                   [B, C, H_i, W_i]
    lateral_i += nearest_upsample(lateral_{i+1}, size of i)    top-down, coarsest first
    P_i = conv3x3(lateral_i)
    extra levels (num_outs > number of inputs used), each a stride-2 conv3x3 on
      'on_input': the last used input, 'on_lateral': the last lateral, 'on_output': the last P,
      then on the previous extra output (ReLU first when ``relu_before_extra_convs``);
      without ``add_extra_convs``: max-pool 1x1 stride 2 of the last output.

BEVFormer v2 (``bevformerv2-r50-t1-base-24ep.py``): in_channels (512, 1024, 2048) = C3..C5,
out 256, start_level 0, ``add_extra_convs='on_output'``, ``num_outs=5``,
``relu_before_extra_convs=True``: P3..P7 at strides 8, 16, 32, 64, 128.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN"]

_EXTRA_MODES = ("on_input", "on_lateral", "on_output")


class ConvModule(nn.Module):
    """A bare conv under the attribute name ``conv`` (mmcv ``ConvModule`` key layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """FPN: list of NCHW maps -> ``num_outs`` maps with ``out_channels`` (module docstring)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        start_level: int = 0,
        end_level: int = -1,
        add_extra_convs: bool | str = False,
        relu_before_extra_convs: bool = False,
        in_strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.start_level = start_level
        if end_level in (-1, self.num_ins - 1):
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ValueError(
                    f"num_outs={num_outs} is smaller than the {self.num_ins - start_level} "
                    "inputs used; raise num_outs or set end_level."
                )
        else:
            self.backbone_end_level = end_level + 1
            if not (end_level < self.num_ins and num_outs == end_level - start_level + 1):
                raise ValueError(
                    f"With end_level={end_level}, num_outs must be {end_level - start_level + 1} "
                    f"and end_level < {self.num_ins}; got num_outs={num_outs}."
                )
        if add_extra_convs is True:  # mmdet: True means 'on_input'
            add_extra_convs = "on_input"
        if add_extra_convs and add_extra_convs not in _EXTRA_MODES:
            raise ValueError(
                f"add_extra_convs must be False, True or one of {_EXTRA_MODES}, "
                f"got {add_extra_convs!r}."
            )
        self.add_extra_convs = add_extra_convs

        used = range(start_level, self.backbone_end_level)
        self.lateral_convs = nn.ModuleList(
            ConvModule(in_channels[i], out_channels, 1) for i in used
        )
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3) for _ in used)
        extra_levels = num_outs - self.backbone_end_level + start_level
        if add_extra_convs and extra_levels >= 1:
            for i in range(extra_levels):
                in_ch = out_channels
                if i == 0 and add_extra_convs == "on_input":
                    in_ch = in_channels[self.backbone_end_level - 1]
                self.fpn_convs.append(ConvModule(in_ch, out_channels, 3, stride=2))
        self._out_channels = (out_channels,) * num_outs
        self._strides: tuple[int, ...] | None = None
        if in_strides is not None:
            s = list(in_strides[start_level : self.backbone_end_level])
            while len(s) < num_outs:
                s.append(s[-1] * 2)
            self._strides = tuple(s)
        self.init_weights()

    def init_weights(self) -> None:
        """mmdet's FPN init: Xavier-uniform conv weights, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self._out_channels

    @property
    def strides(self) -> tuple[int, ...]:
        """Output strides; known when built with ``in_strides`` (see ``from_backbone``)."""
        if self._strides is None:
            raise AttributeError("FPN strides are unknown: pass in_strides or use from_backbone.")
        return self._strides

    @classmethod
    def from_backbone(cls, backbone: nn.Module, **kwargs) -> FPN:
        """An FPN whose inputs are the declared outputs of ``backbone``."""
        strides = getattr(backbone, "strides", None)
        return cls(in_channels=backbone.out_channels, in_strides=strides, **kwargs)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != self.num_ins:
            raise ValueError(f"FPN expects {self.num_ins} input maps, got {len(inputs)}.")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        # Top-down pathway, coarsest level first.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        n = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n)]
        if self.num_outs > n:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - n):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == "on_input":
                    source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == "on_lateral":
                    source = laterals[-1]
                else:
                    source = outs[-1]
                outs.append(self.fpn_convs[n](source))
                for i in range(n + 1, self.num_outs):
                    prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](prev))
        return outs


# ---------------------------------------------------------------- official BEVFormer v2 keys
# Where this neck's tensors sit in an official BEVFormer v2 checkpoint: mmdet ``FPN`` as the
# detector's ``img_neck``, with this module's names and shapes (``lateral_convs.i.conv``,
# ``fpn_convs.i.conv``). Rules as in ``backbones.resnet.OFFICIAL_BEVFORMERV2_KEYS``.
OFFICIAL_BEVFORMERV2_KEYS = ((r"^img_neck\.", ""),)
