"""Official BEVFormer v2 checkpoints (fundamentalvision/BEVFormer ``bevformerv2-r50-*``, mmdet3d
0.17 / mmcv 1.x) converted into this project's :class:`~bevformer.models.detector.BEVFormerV2`.

The official detector nests everything BEV-related under ``pts_bbox_head``
(``transformer.encoder``, ``transformer.decoder``, ``transformer.fusion``, ``bev_embedding``,
``positional_encoding``) and calls the perspective head ``fcos3d_bbox_head``; this project
splits them into ``bev.encoder``, ``bev.fusion`` (:class:`~bevformer.models.bev.TemporalBEV`),
``pts_bbox_head`` and ``perspective.mono_head``
(:class:`~bevformer.models.perspective.stage.PerspectiveStage`). Each component's official-name
map lives at the bottom of the module it describes (``OFFICIAL_BEVFORMERV2_KEYS``: rules of a
regex matched at the start of the official key and the replacement of the matched part; timm's
``checkpoint_filter_fn`` pattern); this module composes them and then

- reorders every class-indexed tensor from the official class order (the configs'
  alphabetical ``class_names``, also stored as the checkpoint's ``meta["CLASSES"]``) to the
  project's (:data:`bevformer.structures.boxes.CLASSES`): the last Linear of every
  classification branch, the perspective head's class logits and its class-specific 3D
  predictors, whose output channel ``c * K + k`` is component c of class k in both code bases;
- reshapes DD3D's ``[1]`` ``Scale``/``Offset`` parameters to this head's 0-d scalars;
- drops the official tensors with no counterpart (``pts_bbox_head.code_weights``, a config
  value; FCOS3D's depth-prior buffers, which only initialise parameters the checkpoint carries);
- refuses, with one error naming them, official keys that no rule maps, official components the
  model lacks, model tensors the checkpoint lacks and shape mismatches (e.g. a checkpoint of
  another config: other frames, fewer layers, another backbone).

Other layouts agree tensor for tensor (checked against the official modules): the decoder's
``nn.MultiheadAttention`` ``in_proj_weight``, ``query_embedding`` rows as (query_pos, query), the
positional encoding's (column, row) halves, the deformable attentions' offset layouts and the
encoder layers' norm order.

    converted, report = convert_official_bevformerv2(checkpoint["state_dict"], model)
    model.load_state_dict(converted, strict=True)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from backbones import fpn as fpn_module
from backbones import resnet as resnet_module
from bevformer.models import encoder as encoder_module
from bevformer.models import head as head_module
from bevformer.models import temporal as temporal_module
from bevformer.models.official_report import ConversionReport, add_notes, check_fit
from bevformer.models.perspective import head as perspective_module
from bevformer.structures.boxes import CLASSES

__all__ = [
    "OFFICIAL_V2_CLASSES",
    "ConversionReport",
    "convert_if_official",
    "convert_official_bevformerv2",
    "is_official_bevformerv2",
]

OFFICIAL_V2_CLASSES = head_module.OFFICIAL_V2_CLASSES

# Key prefixes that only the official layout has (this project has none of them).
_OFFICIAL_ONLY_PREFIXES = ("pts_bbox_head.transformer.", "fcos3d_bbox_head.")

Rules = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Component:
    """One sub-module of the project's detector and where its tensors are in the official one."""

    attr: str
    kind: type
    keys: Rules
    dropped: tuple[str, ...] = ()
    class_channels: Callable[[Any], dict[str, int]] | None = None
    scalars: str | None = None
    hint: str = ""


_COMPONENTS = (
    _Component(
        "img_backbone",
        resnet_module.ResNetBackbone,
        resnet_module.OFFICIAL_BEVFORMERV2_KEYS,
        hint="the official BEVFormer v2 models use a ResNet-50 (bevformerv2_r50_* configs)",
    ),
    _Component("img_neck", fpn_module.FPN, fpn_module.OFFICIAL_BEVFORMERV2_KEYS),
    _Component("bev.encoder", encoder_module.BEVEncoder, encoder_module.OFFICIAL_BEVFORMERV2_KEYS),
    _Component(
        "bev.fusion",
        temporal_module.ResNetFusion,
        temporal_module.OFFICIAL_BEVFORMERV2_KEYS,
        hint="the checkpoint fuses several frames (official t2/t8): use the config "
        "bevformerv2_r50_1600x640_t2_24ep.py or ..._t8_24ep.py",
    ),
    _Component(
        "pts_bbox_head",
        head_module.BEVFormerHead,
        head_module.OFFICIAL_BEVFORMERV2_KEYS,
        dropped=head_module.OFFICIAL_BEVFORMERV2_DROPPED,
        class_channels=head_module.official_class_channels,
    ),
    _Component(
        "perspective.mono_head",
        perspective_module.PerspectiveHead,
        perspective_module.OFFICIAL_BEVFORMERV2_KEYS,
        dropped=perspective_module.OFFICIAL_BEVFORMERV2_DROPPED,
        class_channels=perspective_module.official_class_channels,
        scalars=perspective_module.OFFICIAL_BEVFORMERV2_SCALARS,
        hint="the checkpoint has the perspective head (fcos3d_bbox_head, on in every official "
        "config): set model.perspective as the bevformerv2 configs do",
    ),
)


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    """``model``'s sub-module at the dotted ``path``, None where a part is missing or None."""
    module: Any = model
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _unwrap(state: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    """A state dict or an mmcv checkpoint -> (state dict without ``module.``, meta CLASSES)."""
    classes = None
    if isinstance(state.get("state_dict"), Mapping):
        meta = state.get("meta")
        if isinstance(meta, Mapping) and isinstance(meta.get("CLASSES"), (list, tuple)):
            classes = tuple(str(c) for c in meta["CLASSES"])
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}, classes


def is_official_bevformerv2(state: Mapping[str, Any]) -> bool:
    """True when ``state`` (a state dict or an mmcv checkpoint dict) has the official BEVFormer
    layout: keys under ``pts_bbox_head.transformer.`` or ``fcos3d_bbox_head.``, which this
    project's detector never has (``img_backbone.`` / ``img_neck.`` are shared by both)."""
    sd, _ = _unwrap(state)
    return any(k.startswith(_OFFICIAL_ONLY_PREFIXES) for k in sd)


def _map_key(rules: Rules, key: str) -> str | None:
    for pattern, repl in rules:
        match = re.match(pattern, key)
        if match:
            return match.expand(repl) + key[match.end() :]
    return None


def _class_order(official: Sequence[str], classes: Sequence[str], num_classes: int) -> Tensor:
    """Index into the official class axis for each project class."""
    if sorted(official) != sorted(classes) or len(set(official)) != len(official):
        raise ValueError(
            f"the checkpoint's classes {list(official)} are not a permutation of the model's "
            f"{list(classes)}; convert with official_classes/classes that name the same classes"
        )
    if len(classes) != num_classes:
        raise ValueError(
            f"the model predicts {num_classes} classes but {len(classes)} class names were "
            f"given ({list(classes)}); build the model with num_classes={len(classes)}"
        )
    return torch.tensor([list(official).index(name) for name in classes])


def _permute_classes(value: Tensor, channels: int, order: Tensor, key: str) -> Tensor:
    """Output axis ``c * K + k`` (official class k) -> ``c * K + i`` (project class i)."""
    K = order.numel()
    if value.shape[0] != channels * K:
        raise ValueError(
            f"{key}: expected {channels} x {K} class-indexed outputs, found {value.shape[0]}; "
            "the checkpoint was trained with another number of classes"
        )
    # [C*K, ...] -> [C, K, ...], classes reordered, -> [C*K, ...]
    return value.reshape(channels, K, *value.shape[1:])[:, order].reshape(value.shape)


def convert_official_bevformerv2(
    state: Mapping[str, Tensor],
    model: nn.Module,
    *,
    official_classes: Sequence[str] | None = None,
    classes: Sequence[str] = CLASSES,
    strict: bool = True,
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Official BEVFormer v2 tensors -> a state dict that ``model.load_state_dict(...,
    strict=True)`` accepts, and a :class:`ConversionReport`.

    ``state``: the official ``state_dict`` (or the whole mmcv checkpoint dict, whose
    ``meta["CLASSES"]`` then gives the official class order); ``model``: this project's
    ``BEVFormerV2`` built from the config matching the checkpoint. ``official_classes``
    defaults to the checkpoint's ``meta["CLASSES"]``, else the official configs' alphabetical
    order; ``classes`` is the model's class order. The input is not modified; renamed tensors
    are shared with it, permuted and reshaped ones are new.

    Raises ``ValueError`` listing everything that does not fit (module docstring) and
    ``TypeError`` when a sub-module of the model is of another kind than the official one.
    ``strict=False`` raises neither (the class lists must still agree): official keys that no
    rule maps or whose module the model lacks (or has of another kind) go to
    ``report.skipped``, and missing or mismatched tensors are left for the loader to report.
    """
    sd, meta_classes = _unwrap(state)
    official_classes = tuple(official_classes or meta_classes or OFFICIAL_V2_CLASSES)
    head = getattr(model, "pts_bbox_head", None)
    num_classes = int(getattr(head, "num_classes", len(classes)))
    order = _class_order(official_classes, classes, num_classes)
    report = ConversionReport(
        official_keys=len(sd), official_classes=official_classes, classes=tuple(classes)
    )

    present: dict[str, nn.Module] = {}
    for comp in _COMPONENTS:
        module = _submodule(model, comp.attr)
        if module is None or (not strict and not isinstance(module, comp.kind)):
            continue
        if not isinstance(module, comp.kind):
            hint = f" ({comp.hint})" if comp.hint else ""
            raise TypeError(
                f"model.{comp.attr} is a {type(module).__name__}, the official BEVFormer v2 "
                f"checkpoint holds a {comp.kind.__name__}{hint}; build the model from the config "
                "the checkpoint was trained with"
            )
        present[comp.attr] = module

    converted: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unmapped: list[str] = []
    absent: dict[str, list[str]] = {}
    for key, value in sd.items():
        comp, name = None, None
        for candidate in _COMPONENTS:
            if key in candidate.dropped:
                comp = candidate
                break
            name = _map_key(candidate.keys, key)
            if name is not None:
                comp = candidate
                break
        if comp is None or not isinstance(value, Tensor):
            unmapped.append(key)
            continue
        if name is None:
            report.dropped.append(key)
            continue
        if comp.attr not in present:
            absent.setdefault(comp.attr, []).append(key)
            continue
        target = f"{comp.attr}.{name}"
        if target in converted:
            raise ValueError(f"official keys {origin[target]} and {key} both map to {target}")
        origin[target] = key
        if target != key:
            report.renamed.append((key, target))
        converted[target] = value

    own = model.state_dict()
    for comp in _COMPONENTS:
        if comp.attr not in present:
            continue
        prefix = comp.attr + "."
        if comp.class_channels is not None:
            for name, channels in comp.class_channels(present[comp.attr]).items():
                key = prefix + name
                fits = key in own and converted.get(key, own[key]).shape == own[key].shape
                if key in converted and (strict or fits):
                    converted[key] = _permute_classes(converted[key], channels, order, key)
                    report.permuted.append(key)
        if comp.scalars is not None:
            for key, value in converted.items():
                if not key.startswith(prefix) or not re.fullmatch(comp.scalars, key[len(prefix) :]):
                    continue
                if key in own and value.shape != own[key].shape and value.numel() == 1:
                    converted[key] = value.reshape(own[key].shape)
                    report.reshaped.append(key)

    if strict:
        check_fit(converted, own, unmapped, absent, {c.attr: c.hint for c in _COMPONENTS})
    else:
        report.skipped = unmapped + [k for keys in absent.values() for k in keys]
    add_notes(report, sd, model)
    return converted, report


def convert_if_official(
    state: dict[str, Tensor], model: nn.Module, *, strict: bool = True
) -> tuple[dict[str, Tensor], str | None]:
    """``(converted state dict, one-line description)`` for an official BEVFormer v2 layout,
    else ``(state, None)`` unchanged. Errors and ``strict`` as
    :func:`convert_official_bevformerv2`."""
    if not is_official_bevformerv2(state):
        return state, None
    converted, report = convert_official_bevformerv2(state, model, strict=strict)
    return converted, report.summary()
