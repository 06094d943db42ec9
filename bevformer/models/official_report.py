"""Reporting for the official BEVFormer v2 checkpoint conversion
(:mod:`bevformer.models.official`): what was done (:class:`ConversionReport`), why a strict
conversion does not fit (:func:`check_fit`, one error listing everything, keys grouped by
module), and notes on differences that do not prevent the load (:func:`add_notes`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ConversionReport", "add_notes", "check_fit"]


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


def _group(keys: Sequence[str], limit: int = 12) -> str:
    """Keys summarised by module (up to the first index), e.g. ``bev.encoder.layers.3 (26)``
    (the BEV stage's modules sit one level deeper than the others)."""

    def module_of(key: str) -> str:
        parts = key.split(".")
        depth = 1 if parts[0] == "bev" else 0
        for i, part in enumerate(parts[:-1]):
            if part.isdigit():
                return ".".join(parts[: min(i + 1, 3 + depth)])
        return ".".join(parts[: min(len(parts) - 1, 2 + depth)] or parts)

    counts = Counter(module_of(k) for k in keys)
    shown = [f"{name} ({n})" for name, n in list(counts.items())[:limit]]
    more = f", ... {len(counts) - limit} more modules" if len(counts) > limit else ""
    return ", ".join(shown) + more + f"; e.g. {keys[0]}"


def check_fit(
    converted: dict[str, Tensor],
    own: Mapping[str, Tensor],
    unmapped: list[str],
    absent: dict[str, list[str]],
    hints: Mapping[str, str],
) -> None:
    """Raises one ``ValueError`` listing everything about a strict conversion that does not
    fit: ``unmapped`` official keys, official keys of components the model lacks (``absent``,
    by component, with its hint from ``hints``), model tensors the checkpoint lacks, tensors
    the model does not have, shape mismatches (with a group-DETR hint for the queries)."""
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
        hint = hints.get(attr) or "build the model from the matching config"
        problems.append(
            f"{len(keys)} official keys of model.{attr}, which the model does not have ("
            f"{hint}): " + _group(keys)
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
            "pts_bbox_head.group_detr=11 and, for t2/t8, model.bev.frames and a ResNetFusion as "
            "model.bev.fusion)"
        )


def add_notes(report: ConversionReport, sd: Mapping[str, Any], model: nn.Module) -> None:
    """Notes on what differs without preventing the load (the loss's ``code_weights``)."""
    official = sd.get("pts_bbox_head.code_weights")
    mine = getattr(getattr(model, "criterion", None), "code_weights", None)
    if isinstance(official, Tensor) and isinstance(mine, Tensor):
        if official.shape != mine.shape or not torch.allclose(official.float(), mine.float()):
            report.notes.append(
                f"the checkpoint's code_weights {[round(float(v), 4) for v in official]} "
                f"differ from the model config's {[round(float(v), 4) for v in mine]} (they "
                "weight the training loss only)"
            )
