"""Official BEVFormer v2 checkpoints (fundamentalvision/BEVFormer ``bevformerv2-r50-*``, mmdet3d
0.17 / mmcv 1.x) converted into this project's :class:`~bevformer.models.detector.BEVFormerV2`.

The official detector nests everything BEV-related under ``pts_bbox_head`` (``transformer.encoder``,
``transformer.decoder``, ``transformer.fusion``, ``bev_embedding``, ``positional_encoding``) and
calls the perspective head ``fcos3d_bbox_head``; this project splits them into ``encoder``,
``fusion``, ``pts_bbox_head`` and ``mono_head``. Each component's official-name map lives at the
bottom of the module it describes (``OFFICIAL_BEVFORMERV2_KEYS``: rules of a regex matched at the
start of the official key and the replacement of the matched part; timm's
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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from backbones import fpn as fpn_module
from backbones import resnet as resnet_module
from bevformer.models import encoder as encoder_module
from bevformer.models import head as head_module
from bevformer.models import temporal as temporal_module
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
    _Component("encoder", encoder_module.BEVEncoder, encoder_module.OFFICIAL_BEVFORMERV2_KEYS),
    _Component(
        "fusion",
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
        "mono_head",
        perspective_module.PerspectiveHead,
        perspective_module.OFFICIAL_BEVFORMERV2_KEYS,
        dropped=perspective_module.OFFICIAL_BEVFORMERV2_DROPPED,
        class_channels=perspective_module.official_class_channels,
        scalars=perspective_module.OFFICIAL_BEVFORMERV2_SCALARS,
        hint="the checkpoint has the perspective head (fcos3d_bbox_head, on in every official "
        "config): set model.mono_head as the bevformerv2 configs do",
    ),
)


@dataclass
class ConversionReport:
    """What :func:`convert_official_bevformerv2` did, key by key (project keys unless noted)."""

    official_keys: int = 0
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (official, project)
    permuted: list[str] = field(default_factory=list)  # class rows reordered
    reshaped: list[str] = field(default_factory=list)  # official [1] -> 0-d scalar
    dropped: list[str] = field(default_factory=list)  # official keys left out on purpose
    skipped: list[str] = field(default_factory=list)  # strict=False: official keys not fitting
    official_classes: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the counts."""
        kept = self.official_keys - len(self.dropped)
        kept -= len(self.skipped)
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (
            f"official BEVFormer v2 checkpoint converted: {self.official_keys} keys -> {kept} "
            f"({len(self.renamed)} renamed, {len(self.permuted)} class-permuted, "
            f"{len(self.reshaped)} reshaped, {len(self.dropped)} dropped{skipped})"
        )

    def format(self) -> str:
        """The summary, the class orders, every dropped key and the notes."""
        lines = [
            self.summary(),
            f"  official class order: {', '.join(self.official_classes)}",
            f"  project class order:  {', '.join(self.classes)}",
        ]
        lines += [f"  dropped: {key}" for key in self.dropped]
        lines += [f"  skipped (does not fit the model): {key}" for key in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


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


def _group(keys: Sequence[str], limit: int = 12) -> str:
    """Keys summarised by module (up to the first index), e.g. ``encoder.layers.3 (26)``."""

    def module_of(key: str) -> str:
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part.isdigit():
                return ".".join(parts[: min(i + 1, 3)])
        return ".".join(parts[: min(len(parts) - 1, 2)] or parts)

    counts = Counter(module_of(k) for k in keys)
    shown = [f"{name} ({n})" for name, n in list(counts.items())[:limit]]
    more = f", ... {len(counts) - limit} more modules" if len(counts) > limit else ""
    return ", ".join(shown) + more + f"; e.g. {keys[0]}"


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
        module = getattr(model, comp.attr, None)
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
        _check_fit(converted, own, unmapped, absent)
    else:
        report.skipped = unmapped + [k for keys in absent.values() for k in keys]
    _add_notes(report, sd, model)
    return converted, report


def _check_fit(
    converted: dict[str, Tensor],
    own: Mapping[str, Tensor],
    unmapped: list[str],
    absent: dict[str, list[str]],
) -> None:
    problems = []
    if unmapped:
        hint = ""
        if any("can_bus_mlp" in k for k in unmapped):
            hint = " (can_bus_mlp: this looks like a BEVFormer v1 checkpoint, not v2)"
        problems.append(
            f"{len(unmapped)} official keys that no BEVFormer v2 rule maps{hint}: "
            + _group(unmapped)
        )
    for attr, keys in absent.items():
        comp = next(c for c in _COMPONENTS if c.attr == attr)
        problems.append(
            f"{len(keys)} official keys of model.{attr}, which the model does not have ("
            f"{comp.hint or 'build the model from the matching config'}): " + _group(keys)
        )
    missing = [k for k in own if k not in converted]
    if missing:
        problems.append(f"{len(missing)} model tensors the checkpoint lacks: " + _group(missing))
    unexpected = [k for k in converted if k not in own]
    if unexpected:
        problems.append(
            f"{len(unexpected)} checkpoint tensors the model does not have: " + _group(unexpected)
        )
    shapes = [
        f"{k}: model {list(own[k].shape)} vs checkpoint {list(v.shape)}"
        for k, v in converted.items()
        if k in own and v.shape != own[k].shape
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: " + "; ".join(shapes[:12]))
    query = "pts_bbox_head.query_embedding.weight"
    if query in converted and query in own and converted[query].shape != own[query].shape:
        rows, mine = converted[query].shape[0], own[query].shape[0]
        problems.append(
            f"{query} has {rows} rows and the model {mine}: num_query x group_detr differs "
            "(official t1-base: 900 x 1; t1/t2/t8: 900 x 11); set pts_bbox_head.group_detr"
        )
    if problems:
        raise ValueError(
            "the official BEVFormer v2 checkpoint does not fit this model:\n- "
            + "\n- ".join(problems)
            + "\nBuild the model from the config matching the checkpoint (official "
            "bevformerv2-r50-t1-base-24ep: projects/configs/bevformerv2/"
            "bevformerv2_r50_1600x640_t1-base_24ep.py; other official configs: the same with "
            "pts_bbox_head.group_detr=11 and, for t2/t8, frames and a ResNetFusion)"
        )


def _add_notes(report: ConversionReport, sd: Mapping[str, Any], model: nn.Module) -> None:
    official = sd.get("pts_bbox_head.code_weights")
    mine = getattr(getattr(model, "criterion", None), "code_weights", None)
    if isinstance(official, Tensor) and isinstance(mine, Tensor):
        if official.shape != mine.shape or not torch.allclose(official.float(), mine.float()):
            report.notes.append(
                f"the checkpoint's code_weights {[round(float(v), 4) for v in official]} "
                f"differ from the model config's {[round(float(v), 4) for v in mine]} (they "
                "weight the training loss only)"
            )


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
