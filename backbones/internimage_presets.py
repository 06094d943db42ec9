"""Official InternImage variants T/S/B/L/XL/H as config dicts and factory functions.

Hyper-parameters are those of the official classification configs
(OpenGVLab/InternImage ``classification/configs/internimage_{t,s,b}_1k_224.yaml``,
``internimage_{l,xl}_22kto1k_384.yaml``, ``internimage_h_22kto1k_640.yaml``). Parameter counts
of the classification models (1k head), as in the official table: T 30M, S 50M, B 97M, L 223M,
XL 335M, H 1.08B (H with its CLIP-style attention-pooling head).

Every factory builds a backbone (no classification head) unless ``num_classes`` is given; any
keyword overrides the preset, e.g. ``internimage_xl(out_indices=(1, 2, 3), with_cp=True)``.
"""

from __future__ import annotations

from typing import Any

from backbones.internimage import InternImage

__all__ = [
    "INTERNIMAGE_CONFIGS",
    "build_internimage",
    "internimage_t",
    "internimage_s",
    "internimage_b",
    "internimage_l",
    "internimage_xl",
    "internimage_h",
]

INTERNIMAGE_CONFIGS: dict[str, dict[str, Any]] = {
    "t": dict(
        channels=64,
        depths=(4, 4, 18, 4),
        groups=(4, 8, 16, 32),
        layer_scale=None,
        offset_scale=1.0,
        post_norm=False,
        drop_path_rate=0.1,
    ),
    "s": dict(
        channels=80,
        depths=(4, 4, 21, 4),
        groups=(5, 10, 20, 40),
        layer_scale=1e-5,
        offset_scale=1.0,
        post_norm=True,
        drop_path_rate=0.4,
    ),
    "b": dict(
        channels=112,
        depths=(4, 4, 21, 4),
        groups=(7, 14, 28, 56),
        layer_scale=1e-5,
        offset_scale=1.0,
        post_norm=True,
        drop_path_rate=0.5,
    ),
    "l": dict(
        channels=160,
        depths=(5, 5, 22, 5),
        groups=(10, 20, 40, 80),
        layer_scale=1e-5,
        offset_scale=2.0,
        post_norm=True,
        drop_path_rate=0.1,
    ),
    "xl": dict(
        channels=192,
        depths=(5, 5, 24, 5),
        groups=(12, 24, 48, 96),
        layer_scale=1e-5,
        offset_scale=2.0,
        post_norm=True,
        drop_path_rate=0.2,
    ),
    "h": dict(
        channels=320,
        depths=(6, 6, 32, 6),
        groups=(10, 20, 40, 80),
        layer_scale=None,
        offset_scale=1.0,
        post_norm=False,
        dw_kernel_size=5,
        res_post_norm=True,
        level2_post_norm=True,
        level2_post_norm_block_ids=(5, 11, 17, 23, 29),
        center_feature_scale=True,
        use_clip_projector=True,
        drop_path_rate=0.2,
    ),
}


def build_internimage(variant: str, **overrides: Any) -> InternImage:
    """InternImage of a preset ('t', 's', 'b', 'l', 'xl', 'h') with keyword overrides."""
    key = variant.lower()
    if key not in INTERNIMAGE_CONFIGS:
        raise ValueError(
            f"Unknown InternImage variant {variant!r}; expected one of {list(INTERNIMAGE_CONFIGS)}."
        )
    return InternImage(**{**INTERNIMAGE_CONFIGS[key], **overrides})


def internimage_t(**overrides: Any) -> InternImage:
    """InternImage-T (30M params with the 1k head)."""
    return build_internimage("t", **overrides)


def internimage_s(**overrides: Any) -> InternImage:
    """InternImage-S (50M)."""
    return build_internimage("s", **overrides)


def internimage_b(**overrides: Any) -> InternImage:
    """InternImage-B (97M)."""
    return build_internimage("b", **overrides)


def internimage_l(**overrides: Any) -> InternImage:
    """InternImage-L (223M)."""
    return build_internimage("l", **overrides)


def internimage_xl(**overrides: Any) -> InternImage:
    """InternImage-XL (335M), the BEVFormer v2 backbone of this project."""
    return build_internimage("xl", **overrides)


def internimage_h(**overrides: Any) -> InternImage:
    """InternImage-H (1.08B with the attention-pooling head)."""
    return build_internimage("h", **overrides)
