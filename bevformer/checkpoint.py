"""Whole-model weights in: ``load_from`` (new runs), ``tools/train.py --load-from`` and the
checkpoint ``tools/test.py`` evaluates.

:func:`load_weights` accepts

- this project's checkpoints (mmengine: ``{"state_dict": ..., "meta": ..., ...}``);
- bare state dicts, and either with DDP ``module.`` prefixes;
- official BEVFormer v2 checkpoints (mmcv 1.x / mmdet3d 0.17 names), converted by
  ``bevformer.models.official.convert_if_official``;
- this project's checkpoints of an earlier state-dict layout (the model's ``layout_renames``;
  :func:`migrate_layout`), renamed to today's keys in their order;
- foreign files generally (e.g. the official R50 configs' ``fcos_r50_coco_2mmdet.pth``): with
  ``strict=False`` every tensor whose name and shape match is loaded, as mmcv's
  ``load_checkpoint(strict=False)`` does for the official ``load_from``; mmdet detector files
  (``backbone.*``, ``neck.*``, no key of the model's own parts) are renamed to
  ``img_backbone.*`` / ``img_neck.*`` first.

Files are read by :func:`backbones.safe_pickle.read_checkpoint` (no code runs on load). The
summary (:class:`LoadReport`: loaded, missing, unexpected, skipped by shape, skipped on purpose)
is always logged. :func:`load_model_weights` is the strict load of a model to evaluate or
visualise (``tools/test.py``, ``tools/visualize.py``, a run's ``load_from`` of a complete model).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from backbones.checkpoint import (
    CheckpointReadError,
    LoadReport,
    StateDictMismatchError,
    apply_state_dict,
    read_checkpoint_with_skipped,
)

__all__ = [
    "CheckpointReadError",
    "LoadReport",
    "StateDictMismatchError",
    "load_model_weights",
    "load_weights",
    "migrate_layout",
]


def _detect(raw: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, list[str]]:
    """(tensor mapping, format description, top-level entries that are not weights)."""
    if isinstance(raw.get("state_dict"), Mapping):
        extra = [k for k in raw if k != "state_dict"]
        return raw["state_dict"], "checkpoint with state_dict", extra
    if isinstance(raw.get("model"), Mapping):
        return raw["model"], "checkpoint with model", [k for k in raw if k != "model"]
    return raw, "state dict", []


def _convert_official(
    state: dict[str, Tensor], model: nn.Module, strict: bool
) -> tuple[dict[str, Tensor], str | None]:
    # imported here: the converter imports every model module, which plain loads do not need
    from bevformer.models.official import convert_if_official

    return convert_if_official(state, model, strict=strict)


def layout_renames(model: nn.Module) -> list[tuple[str, str]]:
    """``(old prefix, new prefix)`` pairs that bring keys of an earlier state-dict layout of
    ``model`` to today's (its class attribute ``layout_renames``); only pairs whose old first
    name is not a sub-module of the model today, so a current key is never renamed."""
    if is_model_wrapper(model):
        model = model.module
    children = {name for name, _ in model.named_children()}
    pairs = getattr(model, "layout_renames", ())
    return [(old, new) for old, new in pairs if old.split(".", 1)[0] not in children]


def migrate_layout(state: Mapping[str, Any], model: nn.Module) -> tuple[dict[str, Any], str | None]:
    """``(state with today's keys, description or None)`` for a state dict of ``model``'s
    class written in an earlier layout (e.g. ``encoder.*`` before the detector's BEV stage
    became ``bev``: ``bev.encoder.*``). Keys keep their order, so the parameter order -- by
    which an optimizer state is restored -- is that of the file. A state without old keys is
    returned as a copy with None."""
    active = [
        (old, new) for old, new in layout_renames(model) if any(k.startswith(old) for k in state)
    ]
    if not active:
        return dict(state), None
    out: dict[str, Any] = {}
    for key, value in state.items():
        old, new = next(((o, n) for o, n in active if key.startswith(o)), ("", ""))
        out[new + key[len(old) :]] = value
    renamed = ", ".join(f"{o}* -> {n}*" for o, n in active)
    return out, f"keys of an earlier checkpoint layout renamed ({renamed})"


# mmdet single-view detectors (FCOS, FCOS3D) name the parts the BEV detector calls img_*.
_MMDET_PARTS = {"backbone.": "img_backbone.", "neck.": "img_neck."}


def _from_mmdet_detector(
    state: dict[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], bool]:
    """``backbone.*``/``neck.*`` -> ``img_backbone.*``/``img_neck.*`` when no key names a
    sub-module of ``model`` and the model has those parts."""
    children = {name for name, _ in model.named_children()}
    if any(k.split(".", 1)[0] in children for k in state):
        return state, False
    if not {"img_backbone", "img_neck"} & children:
        return state, False
    if not any(k.startswith(tuple(_MMDET_PARTS)) for k in state):
        return state, False
    out = {}
    for k, v in state.items():
        old = next((p for p in _MMDET_PARTS if k.startswith(p)), None)
        out[_MMDET_PARTS[old] + k[len(old) :] if old else k] = v
    return out, True


def load_weights(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    strict: bool = False,
    logger: logging.Logger | str | None = None,
) -> LoadReport:
    """Load a whole-model checkpoint (formats in the module docstring) into ``model``.

    ``strict=True``: any missing, unexpected or shape-mismatched key raises
    :class:`StateDictMismatchError` (a ``ValueError`` with the ``report``) listing them, and
    nothing is loaded. ``strict=False``: the tensors that match by name and shape are loaded,
    the rest is reported; a file of which nothing fits is an error. The summary is logged
    through mmengine's ``print_log`` (``logger``: a ``logging.Logger``, a logger name, or the
    current mmengine logger), as a warning when the load was partial. Raises
    ``FileNotFoundError`` and :class:`CheckpointReadError` (not a checkpoint, truncated) for
    bad files.
    """
    if is_model_wrapper(model):
        model = model.module
    if isinstance(source, Mapping):
        raw, skipped_globals, name = source, [], "<state dict>"
    else:
        raw, skipped_globals = read_checkpoint_with_skipped(source)
        name = str(source)
    if not isinstance(raw, Mapping):
        raise CheckpointReadError(
            f"{name} holds a {type(raw).__name__}, not a checkpoint dict or state dict"
        )
    tensors, fmt, extra = _detect(raw)
    state = {k.removeprefix("module."): v for k, v in tensors.items() if isinstance(v, Tensor)}
    skipped = [f"{k} (not a tensor)" for k, v in tensors.items() if not isinstance(v, Tensor)]
    if not state:
        raise CheckpointReadError(
            f"{name} holds no tensors (top-level keys: {list(raw)[:10]}); expected a "
            "checkpoint with a state_dict or a state dict"
        )
    if any(k.startswith("module.") for k in tensors):
        fmt += ", DDP 'module.' prefix stripped"
    state, official = _convert_official(state, model, strict)
    if official:
        fmt = official
    state, migrated = migrate_layout(state, model)
    if migrated:
        fmt += f", {migrated}"
    state, renamed = _from_mmdet_detector(state, model)
    if renamed:
        fmt += ", mmdet detector names backbone./neck. -> img_backbone./img_neck."
    report = apply_state_dict(
        model,
        state,
        strict=strict,
        source=name,
        fmt=fmt,
        skipped=skipped,
        skipped_globals=skipped_globals,
    )
    if not report.loaded:
        raise StateDictMismatchError(
            f"no tensor of {name} ({fmt}) fits {type(model).__name__} by name and shape; "
            "nothing was loaded (a checkpoint of another architecture?):\n" + report.problems(),
            report,
        )
    if extra:
        report.format += f"; also holds {', '.join(map(str, extra))}"
    level = logging.INFO if report.complete else logging.WARNING
    print_log(report.summary(), logger=logger or "current", level=level)
    return report


def load_model_weights(
    model: nn.Module, path: str | os.PathLike, logger: logging.Logger | str | None = None
) -> LoadReport:
    """Strict :func:`load_weights` of the file ``path`` (this project's or an official BEVFormer
    v2 checkpoint) into ``model``, for evaluation: every parameter and buffer must be filled.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` listing (up to eight of
    each) the missing keys, unexpected keys and shape mismatches when the file does not fit
    the model; nothing is loaded then.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint {os.fspath(path)!r} does not exist; give the path of a .pth file "
            "written by tools/train.py or an official BEVFormer v2 checkpoint"
        )
    try:
        return load_weights(model, path, strict=True, logger=logger)
    except StateDictMismatchError as err:
        report = err.report
        missing, unexpected = sorted(report.missing), sorted(report.unexpected)
        shapes = [f"{k}: model {a} vs checkpoint {b}" for k, a, b in sorted(report.mismatched)]
        raise ValueError(
            f"checkpoint {os.fspath(path)} ({report.format}) does not fit this model (was it "
            f"trained with another config?): {len(missing)} missing keys {missing[:8]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:8]}, {len(shapes)} shape "
            f"mismatches {shapes[:8]}"
        ) from err
