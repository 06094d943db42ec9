"""Loading checkpoints with a report; the official InternImage formats.

Reading (:func:`read_checkpoint`, :func:`read_pickle`, re-exported here) lives in
:mod:`backbones.safe_pickle`: no code from a file runs while it is read.

Loading (:func:`apply_state_dict`): names and shapes are compared first, then what fits is
loaded; the result is a :class:`LoadReport` (loaded, missing, unexpected, shape-mismatched and
deliberately skipped keys) whose ``summary()`` is what gets logged.

InternImage files (:func:`load_internimage_checkpoint`) may be

- classification checkpoints of OpenGVLab/InternImage: ``{"model": state_dict, ...}``;
- detection / segmentation checkpoints (mmdet/mmseg): ``{"state_dict": ...}`` whose backbone
  keys carry a ``backbone.`` prefix (neck and head keys are ignored);
- Hugging Face ``OpenGVLab/internimage_*`` weights: keys prefixed ``model.`` and the layer
  scales named ``layer_scale1/2`` instead of ``gamma1/2`` (``.bin``/``.pth``, or
  ``.safetensors`` when the ``safetensors`` package is installed);
- this project's detector checkpoints (``img_backbone.`` prefix) and plain state dicts.

A ``module.`` prefix (DDP) is stripped. Classifier-head keys are dropped when the model has no
such head (official ``InternImage.init_weights`` loads with ``strict=False`` for the same
reason).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmengine.logging import print_log
from torch import Tensor, nn

from backbones.safe_pickle import (
    ALLOWED_GLOBALS,
    KNOWN_WEIGHTS,
    CheckpointReadError,
    SkippedGlobal,
    _warn_skipped,
    download_hint,
    read_checkpoint,
    read_checkpoint_with_skipped,
    read_pickle,
)

__all__ = [
    "ALLOWED_GLOBALS",
    "KNOWN_WEIGHTS",
    "CheckpointReadError",
    "LoadReport",
    "SkippedGlobal",
    "StateDictMismatchError",
    "apply_state_dict",
    "check_init_cfg",
    "download_hint",
    "extract_backbone_state_dict",
    "init_from_pretrained",
    "internimage_filter_fn",
    "load_internimage_checkpoint",
    "read_checkpoint",
    "read_checkpoint_with_skipped",
    "read_pickle",
    "unwrap_state_dict",
]


class StateDictMismatchError(ValueError):
    """A strict load found missing, unexpected or mismatched keys; ``report`` lists them."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------------------------------------
# Loading with a report


@dataclass
class LoadReport:
    """What a weight load did. Key names are the model's (after any renaming).

    ``mismatched`` holds ``(key, model shape, checkpoint shape)``; ``skipped`` the checkpoint
    keys left out on purpose (classifier heads, non-tensor entries); ``skipped_globals`` the
    Python objects of the file that were not loaded (see :func:`read_checkpoint`).
    """

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    skipped_globals: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every model tensor loaded and every checkpoint tensor used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self, limit: int | None = 20) -> str:
        """Missing, unexpected and shape-mismatched keys, one block each (at most ``limit``
        names per block; ``None``: all)."""

        def names(keys: list[str]) -> str:
            more = f", ... ({len(keys) - limit} more)" if limit and len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        lines = []
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {names(self.unexpected)}")
        if self.mismatched:
            lines.append(f"  shape mismatches ({len(self.mismatched)}), model vs checkpoint:")
            lines += [
                f"    {k}: model {list(a)} vs checkpoint {list(b)}"
                for k, a, b in self.mismatched[:limit]
            ]
            if limit and len(self.mismatched) > limit:
                lines.append(f"    ... ({len(self.mismatched) - limit} more)")
        return "\n".join(lines)

    def summary(self) -> str:
        """Multi-line account: source, format, counts, then the problem keys."""
        head = (
            f"loaded weights from {self.source} ({self.format}): {len(self.loaded)} tensors "
            f"loaded, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} skipped by shape, {len(self.skipped)} skipped on purpose"
        )
        lines = [head]
        if self.skipped:
            lines.append(f"  skipped on purpose: {', '.join(self.skipped[:20])}")
        if self.skipped_globals:
            lines.append(f"  objects not loaded: {', '.join(self.skipped_globals)}")
        problems = self.problems()
        return "\n".join(lines + ([problems] if problems else []))


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors of a checkpoint (under ``state_dict``/``model`` when there), ``module.``
    stripped, and the names of the non-tensor entries left out."""
    sd: Mapping[str, Any] = checkpoint
    for container in ("state_dict", "model"):
        if isinstance(sd.get(container), Mapping):
            sd = sd[container]
            break
    tensors = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, Tensor)}
    others = [str(k) for k, v in sd.items() if not isinstance(v, Tensor)]
    return tensors, others


def apply_state_dict(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    strict: bool,
    source: str,
    fmt: str,
    skipped: Iterable[str] = (),
    skipped_globals: Iterable[str] = (),
) -> LoadReport:
    """Compare ``state`` with ``model.state_dict()`` by name and shape, then load what fits.

    BatchNorm ``num_batches_tracked`` counters absent from the file do not count as missing
    (files converted from Caffe/Detectron have none). With ``strict=True`` any missing,
    unexpected or mismatched key raises ``ValueError`` listing them and nothing is loaded.
    """
    own = model.state_dict()
    report = LoadReport(
        source=source, format=fmt, skipped=list(skipped), skipped_globals=list(skipped_globals)
    )
    report.missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [
        (k, tuple(own[k].shape), tuple(v.shape))
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if strict and not report.complete:
        raise StateDictMismatchError(
            f"checkpoint {source} ({fmt}) does not match {type(model).__name__} "
            f"({len(own)} model keys, {len(state)} checkpoint keys); nothing was loaded:\n"
            + report.problems(limit=None),
            report,
        )
    bad = {k for k, _, _ in report.mismatched}
    loadable = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(loadable, strict=False)
    report.loaded = list(loadable)
    return report


_INIT_CFG_KEYS = {"type", "checkpoint", "prefix", "map_location"}


def check_init_cfg(init_cfg: Mapping[str, Any] | None, owner: str) -> dict[str, Any] | None:
    """Validate a backbone's ``init_cfg`` when the module is built (the file is not read).

    Accepted: ``None`` (keep the weights made at construction) or mmengine's
    ``dict(type="Pretrained", checkpoint=PATH, prefix=None)``.
    """
    if init_cfg is None:
        return None
    cfg = dict(init_cfg)
    if cfg.get("type") != "Pretrained" or "checkpoint" not in cfg:
        raise ValueError(
            f"{owner} init_cfg must be None or dict(type='Pretrained', checkpoint=PATH, "
            f"prefix=None); got {cfg}. Other initialisations are done at construction."
        )
    unknown = sorted(set(cfg) - _INIT_CFG_KEYS)
    if unknown:
        raise ValueError(f"{owner} init_cfg has unknown key(s) {unknown}; known: {_INIT_CFG_KEYS}")
    return cfg


def init_from_pretrained(
    module: nn.Module,
    init_cfg: Mapping[str, Any],
    filter_fn: Any,
    config_key: str = "model.img_backbone.init_cfg",
) -> LoadReport:
    """Apply ``init_cfg=dict(type="Pretrained", checkpoint, prefix)`` to ``module``.

    ``prefix`` (mmengine ``PretrainedInit``): only keys starting with it are used, with it
    stripped. ``filter_fn(state, module) -> (state, skipped keys)`` maps the official names to
    the module's. Loads what fits (``strict=False``, as mmengine) and logs the summary; a
    missing file, or a file of which no tensor fits, raises an error naming ``config_key``.
    """
    owner = type(module).__name__
    path = Path(init_cfg["checkpoint"])
    todo = (
        f"Set {config_key}.checkpoint to the file, or {config_key}=None to start from random "
        f"weights (--cfg-options {config_key}=None)."
    )
    if not path.is_file():
        raise FileNotFoundError(
            f"{owner} init_cfg: pretrained checkpoint {path} does not exist.{download_hint(path)} "
            + todo
        )
    raw, skipped_globals = read_checkpoint_with_skipped(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not a state dict. {todo}")
    prefix = init_cfg.get("prefix")
    if prefix:
        tensors, _ = unwrap_state_dict(raw)
        raw = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not raw:
            raise ValueError(
                f"{owner} init_cfg: no key of {path} starts with prefix {prefix!r}; first keys: "
                f"{list(tensors)[:5]}. Fix {config_key}.prefix."
            )
    state, skipped = filter_fn(raw, module)
    report = apply_state_dict(
        module,
        state,
        strict=False,
        source=str(path),
        fmt=f"pretrained {owner}",
        skipped=skipped,
        skipped_globals=skipped_globals,
    )
    if not report.loaded:
        raise ValueError(
            f"{owner} init_cfg: no tensor of {path} fits the model (wrong file?); nothing was "
            f"loaded.\n{report.problems()}\n{todo}"
        )
    level = logging.INFO if report.complete else logging.WARNING
    print_log(f"{config_key}: {report.summary()}", logger="current", level=level)
    return report


# ---------------------------------------------------------------------------------------------
# InternImage

# Prefixes, in the order tried, under which a larger model stores the backbone.
_BACKBONE_PREFIXES = ("img_backbone.", "backbone.", "model.")
# Top-level modules that only the classification models have.
_HEAD_PREFIXES = (
    "conv_head.",
    "head.",
    "clip_projector.",
    "dcnv3_head_x4.",
    "dcnv3_head_x3.",
    "fc_norm.",
)
_HF_LAYER_SCALE = re.compile(r"^(levels\.\d+\.blocks\.\d+\.)layer_scale([12])$")


def extract_backbone_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Backbone weights under the official InternImage key names (heads not yet dropped)."""
    tensors, _ = unwrap_state_dict(checkpoint)
    if not tensors:
        raise ValueError(
            "The checkpoint holds no tensors at the top level or under 'state_dict'/'model'; "
            f"top-level keys: {list(checkpoint)[:10]}. Pass an InternImage state dict."
        )
    for prefix in _BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            break
    # Hugging Face names the layer scales layer_scale1/2; the official code gamma1/2.
    return {_HF_LAYER_SCALE.sub(r"\1gamma\2", k): v for k, v in tensors.items()}


def internimage_filter_fn(
    checkpoint: Mapping[str, Any], model: nn.Module
) -> tuple[dict[str, Tensor], list[str]]:
    """Official InternImage files -> (``model``'s key names, classifier keys dropped)."""
    ckpt_sd = extract_backbone_state_dict(checkpoint)
    own = model.state_dict()
    dropped = [
        k
        for prefix in _HEAD_PREFIXES
        if not any(m.startswith(prefix) for m in own)
        for k in ckpt_sd
        if k.startswith(prefix)
    ]
    return {k: v for k, v in ckpt_sd.items() if k not in set(dropped)}, dropped


def _variant_hint(model_sd: Mapping[str, Tensor], ckpt_sd: Mapping[str, Tensor]) -> str:
    key = "patch_embed.conv2.weight"
    if key in model_sd and key in ckpt_sd:
        m, c = model_sd[key].shape[0], ckpt_sd[key].shape[0]
        if m != c:
            return (
                f"\nThe checkpoint is an InternImage with channels={c}, the model has "
                f"channels={m}: build the matching variant (backbones.INTERNIMAGE_CONFIGS)."
            )
    return ""


def load_internimage_report(
    model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, Any], strict: bool
) -> LoadReport:
    """:func:`load_internimage_checkpoint` returning the full :class:`LoadReport`."""
    if isinstance(path_or_state_dict, Mapping):
        raw, globals_, source = path_or_state_dict, [], "<state dict>"
    else:
        raw, globals_ = read_checkpoint_with_skipped(path_or_state_dict)
        source = str(path_or_state_dict)
    ckpt_sd, dropped = internimage_filter_fn(raw, model)
    try:
        return apply_state_dict(
            model,
            ckpt_sd,
            strict=strict,
            source=source,
            fmt="InternImage",
            skipped=dropped,
            skipped_globals=globals_,
        )
    except StateDictMismatchError as e:
        hint = _variant_hint(model.state_dict(), ckpt_sd)
        raise StateDictMismatchError(f"{e}{hint}", e.report) from e


def load_internimage_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    strict: bool = True,
) -> dict[str, list[str]]:
    """Load official InternImage weights into ``model`` (formats in the module docstring).

    With ``strict=True`` (default) any missing key, unexpected key or shape mismatch raises a
    ``ValueError`` listing all of them, and nothing is loaded. With ``strict=False`` the
    matching tensors are loaded, the problems are warned about and returned. Returns
    ``{"missing": [...], "unexpected": [...], "mismatched": [...], "dropped": [...]}`` where
    ``dropped`` are the classifier-head keys left out because the model has no head.
    """
    report = load_internimage_report(model, path_or_state_dict, strict)
    _warn_skipped(Path(report.source), report.skipped_globals)
    if not report.complete:
        warnings.warn(
            "Partial InternImage checkpoint load (strict=False):\n" + report.problems(),
            stacklevel=2,
        )
    return {
        "missing": report.missing,
        "unexpected": report.unexpected,
        "mismatched": [k for k, _, _ in report.mismatched],
        "dropped": report.skipped,
    }
