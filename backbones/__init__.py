"""Image backbones and neck: InternImage (T/S/B/L/XL/H, DCNv3), ResNet, FPN.

Plain PyTorch modules: this package imports nothing from ``bevformer``. The detector's
builder (``bevformer.builder``) registers ``InternImage``, ``ResNetBackbone`` and ``FPN`` under
those names for configs. Importing ``backbones.layer_decay`` registers
``LayerDecayOptimWrapperConstructor`` in mmengine's ``OPTIM_WRAPPER_CONSTRUCTORS``. See
``backbones/README.md``.
"""

from backbones.checkpoint import extract_backbone_state_dict, load_internimage_checkpoint
from backbones.dcnv3 import DCNv3
from backbones.fpn import FPN
from backbones.internimage import InternImage
from backbones.internimage_presets import (
    INTERNIMAGE_CONFIGS,
    build_internimage,
    internimage_b,
    internimage_h,
    internimage_l,
    internimage_s,
    internimage_t,
    internimage_xl,
)
from backbones.layer_decay import LayerDecayOptimWrapperConstructor
from backbones.resnet import ResNetBackbone

__all__ = [
    "DCNv3",
    "FPN",
    "INTERNIMAGE_CONFIGS",
    "InternImage",
    "LayerDecayOptimWrapperConstructor",
    "ResNetBackbone",
    "build_internimage",
    "extract_backbone_state_dict",
    "internimage_b",
    "internimage_h",
    "internimage_l",
    "internimage_s",
    "internimage_t",
    "internimage_xl",
    "load_internimage_checkpoint",
]
