"""Layer-wise learning-rate decay for InternImage backbones, as an mmengine constructor.

Semantics of the official ``CustomLayerDecayOptimizerConstructor``
(OpenGVLab/InternImage ``detection/mmcv_custom/custom_layer_decay_optimizer_constructor.py``,
itself from BEiT), with the backbone found under ``backbone_prefix`` (``img_backbone.`` in this
project's detector). With ``num_layers`` = the number of blocks (39 for XL) and
N = num_layers + 2, every trainable parameter gets a layer id:

    stem (``patch_embed``)                       0
    block b of stage s                           1 + sum(depths[:s]) + b
    ``levels.s.downsample`` / ``levels.s.norm``  1 + sum(depths[:s+1])   (stage 3: like stage 2)
    everything outside the backbone              N - 1

and the learning rate ``base_lr * layer_decay_rate ** (N - 1 - layer_id)``: the heads keep the
base lr, the last backbone block gets ``rate``, the stem ``rate ** (N - 1)``. Parameters whose
name contains one of ``offset_keys`` (default the official ``sampling_offsets`` and
``reference_points``) are further scaled by ``offset_lr_scale``. Weight decay is 0 for 1-D
parameters (norms, biases, layer scales), for names ending in ``.bias`` or containing ``norm``
or ``sampling_offsets``; otherwise the optimizer's ``weight_decay``. ``custom_keys`` multiply
on top, as mmengine's ``lr_mult`` / ``decay_mult`` (longest matching key wins).

Deliberate differences from the official constructor: ``depths`` defaults to the backbone's
own; ``level_embeds`` (a BEVFormer transformer parameter) is not sent to layer 0, only
backbone parameters get backbone layer ids; InternImage-H's ``levels.2.post_norms.k`` take the
id of the block they follow (the official code reads ``k`` as a block index).

Config::

    optim_wrapper = dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=2e-4, weight_decay=0.05),
        constructor="LayerDecayOptimWrapperConstructor",
        paramwise_cfg=dict(num_layers=39, layer_decay_rate=0.9, offset_lr_scale=0.01,
                           backbone_prefix="img_backbone."))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

__all__ = ["LayerDecayOptimWrapperConstructor", "get_layer_id"]


def get_layer_id(
    name: str,
    num_max_layer: int,
    depths: Sequence[int],
    backbone_prefix: str = "img_backbone.",
    post_norm_block_ids: dict[int, Sequence[int]] | None = None,
) -> int:
    """Layer id of the parameter ``name`` (table in the module docstring).

    ``num_max_layer`` is N = num_layers + 2; ``post_norm_block_ids`` maps a stage to the block
    ids after which it has extra norms (InternImage-H).
    """
    if not name.startswith(backbone_prefix):
        return num_max_layer - 1
    parts = name[len(backbone_prefix) :].split(".")
    if parts[0] == "patch_embed":
        return 0
    if parts[0] != "levels":
        return num_max_layer - 1
    stage = int(parts[1])
    if parts[2] in ("downsample", "norm"):
        return 1 + sum(depths[: min(stage, len(depths) - 2) + 1])
    if parts[2] == "blocks":
        block = int(parts[3])
    elif parts[2] == "post_norms":
        block = (post_norm_block_ids or {}).get(stage, [])[int(parts[3])]
    else:
        return num_max_layer - 1
    return 1 + sum(depths[:stage]) + block


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine optimizer-wrapper constructor with InternImage layer-wise lr decay.

    ``paramwise_cfg`` keys: ``num_layers`` (int, required), ``layer_decay_rate`` (float,
    required), ``offset_lr_scale`` (1.0), ``backbone_prefix`` ("img_backbone."), ``depths``
    (default: the backbone's ``depths``), ``offset_keys`` (("sampling_offsets",
    "reference_points")), ``custom_keys`` ({}). Each parameter group records ``lr_scale`` and
    ``param_names``.
    """

    def add_params(
        self,
        params: list[dict[str, Any]],
        module: nn.Module,
        prefix: str = "",
        is_dcn_module: int | float | None = None,
    ) -> None:
        cfg = self.paramwise_cfg
        for key in ("num_layers", "layer_decay_rate"):
            if key not in cfg:
                raise KeyError(
                    f"LayerDecayOptimWrapperConstructor needs paramwise_cfg['{key}'], found keys "
                    f"{sorted(cfg)}; e.g. num_layers=39 (XL blocks), layer_decay_rate=0.9."
                )
        num_max_layer = int(cfg["num_layers"]) + 2
        rate = float(cfg["layer_decay_rate"])
        offset_lr_scale = float(cfg.get("offset_lr_scale", 1.0))
        backbone_prefix = cfg.get("backbone_prefix", "img_backbone.")
        offset_keys = tuple(cfg.get("offset_keys", ("sampling_offsets", "reference_points")))
        custom_keys = cfg.get("custom_keys", {})
        sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)

        backbone = _find_submodule(module, backbone_prefix)
        depths = cfg.get("depths", getattr(backbone, "depths", None))
        if depths is None:
            raise KeyError(
                f"No 'depths' in paramwise_cfg and no module with a 'depths' attribute at "
                f"'{backbone_prefix}'; set paramwise_cfg['depths'] or 'backbone_prefix'."
            )
        post_norm_ids = {
            i: list(level.post_norm_block_ids)
            for i, level in enumerate(getattr(backbone, "levels", []))
            if getattr(level, "post_norm_block_ids", None)
        }
        base_wd = self.base_wd or 0.0

        groups: dict[str, dict[str, Any]] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = (
                param.ndim == 1
                or name.endswith(".bias")
                or "norm" in name
                or "relative_position" in name
                or "sampling_offsets" in name
            )
            layer_id = get_layer_id(name, num_max_layer, depths, backbone_prefix, post_norm_ids)
            scale = rate ** (num_max_layer - 1 - layer_id)
            is_offset = any(k in name for k in offset_keys)
            if is_offset:
                scale *= offset_lr_scale
            custom = next((k for k in sorted_keys if k in name), None)
            lr_mult = custom_keys[custom].get("lr_mult", 1.0) if custom else 1.0
            decay_mult = custom_keys[custom].get("decay_mult", 1.0) if custom else 1.0
            group_name = (
                f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
                + ("_offset" if is_offset else "")
                + (f"_{custom}" if custom else "")
            )
            if group_name not in groups:
                groups[group_name] = {
                    "params": [],
                    "param_names": [],
                    "lr": self.base_lr * scale * lr_mult,
                    "weight_decay": 0.0 if no_decay else base_wd * decay_mult,
                    "lr_scale": scale * lr_mult,
                    "group_name": group_name,
                }
            groups[group_name]["params"].append(param)
            groups[group_name]["param_names"].append(name)
        params.extend(groups.values())


def _find_submodule(module: nn.Module, prefix: str) -> nn.Module | None:
    path = prefix.rstrip(".")
    try:
        return module.get_submodule(path) if path else module
    except AttributeError:
        return None
