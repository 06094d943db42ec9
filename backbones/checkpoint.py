"""Reading checkpoints without running their code, and loading them with a report.

Reading (:func:`read_checkpoint`, :func:`read_pickle`). A checkpoint is a pickle, and a pickle
can name any importable function and call it while it is read. Every file is therefore first
read with ``torch.load(weights_only=True)``. Files written by mmcv 1.x / mmdet 2.x often hold
more than tensors in their ``meta`` (an ``mmcv.Config``, NumPy scalars, a history buffer),
which ``weights_only`` refuses; those are re-read with a restricted unpickler that builds only
tensors/storages, numbers, strings, containers and NumPy arrays/scalars (:data:`ALLOWED_GLOBALS`)
and turns every other global into an inert :class:`SkippedGlobal` placeholder that records
its ``module.name`` and the arguments it was given, without ever importing or calling it. The
names skipped are reported in one warning. A file that is no checkpoint at all (random bytes,
a truncated download) raises :class:`CheckpointReadError`.

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

import io
import logging
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.logging import print_log
from torch import Tensor, nn

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
    "read_pickle",
    "unwrap_state_dict",
]

# Where the official files named in configs come from (file name -> where to get it).
KNOWN_WEIGHTS = {
    "internimage_xl_22k_192to384.pth": (
        "https://huggingface.co/OpenGVLab/InternImage/resolve/main/internimage_xl_22k_192to384.pth"
    ),
    "fcos_r50_coco_2mmdet.pth": (
        "the 'R50' link in the Backbone column of the BEVFormer v2 table of the "
        "fundamentalvision/BEVFormer README (https://drive.google.com/file/d/"
        "1JTVcrFcOFdPp7rtZ6K__SfF0Np15vXL7/view)"
    ),
    "resnet50_msra-5891d200.pth": (
        "https://download.openmmlab.com/pretrain/third_party/resnet50_msra-5891d200.pth "
        "(mmdet's open-mmlab://detectron2/resnet50_caffe)"
    ),
}


class CheckpointReadError(ValueError):
    """The file exists but is not a readable checkpoint (random bytes, truncated, ...)."""


class StateDictMismatchError(ValueError):
    """A strict load found missing, unexpected or mismatched keys; ``report`` lists them."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


def download_hint(path: str | os.PathLike) -> str:
    """' Download it from URL.' for the official files in :data:`KNOWN_WEIGHTS`, else ''."""
    where = KNOWN_WEIGHTS.get(Path(path).name)
    return f" Download it from {where}." if where else ""


# ---------------------------------------------------------------------------------------------
# Restricted unpickling


class SkippedGlobal:
    """Inert stand-in for an object whose class or function the reader refused to import.

    ``global_name`` is the ``module.name`` the pickle asked for; ``args``, ``state`` and
    ``items`` keep what the pickle passed to it (already restricted themselves). Nothing of the
    original class is ever imported or run.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> SkippedGlobal:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<skipped {self.global_name}>"


def _numpy_globals() -> dict[str, Any]:
    found: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    # NumPy 1.x pickles name numpy.core, NumPy 2.x numpy._core; both reach the same functions.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[f"{module}._reconstruct"] = np.core.multiarray._reconstruct
        found[f"{module}.scalar"] = np.core.multiarray.scalar
    dtypes = getattr(np, "dtypes", None)
    for name in dir(dtypes) if dtypes is not None else ():
        obj = getattr(dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            found[f"numpy.dtypes.{name}"] = obj
    return found


def _torch_globals() -> dict[str, Any]:
    found: dict[str, Any] = {
        "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
        "torch.device": torch.device,
        "torch.Size": torch.Size,
    }
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype) or (
            name.endswith("Storage") and isinstance(obj, type) and name != "TypedStorage"
        ):
            found[f"torch.{name}"] = obj
    return found


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (str -> bytes only)."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode called with non-string arguments")
    return text.encode(encoding)


ALLOWED_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "builtins.slice": slice,
    "builtins.bytearray": bytearray,
    "_codecs.encode": _encode,
    **_numpy_globals(),
    **_torch_globals(),
}
"""The only globals the restricted reader hands to a pickle: containers, NumPy array/scalar
reconstruction, torch tensor/storage rebuilding, dtypes and devices. Anything else becomes a
:class:`SkippedGlobal`."""


class _RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` returns an allowed object or a placeholder class; never imports."""

    def __init__(self, file: io.BufferedIOBase, storages: _ZipStorages | None) -> None:
        super().__init__(file)
        self.storages = storages
        self.skipped: dict[str, type[SkippedGlobal]] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[full]
        if full not in self.skipped:
            self.skipped[full] = type(name, (SkippedGlobal,), {"global_name": full})
        return self.skipped[full]

    def persistent_load(self, pid: Any) -> Any:
        if self.storages is None:
            raise pickle.UnpicklingError(f"persistent id {pid!r} in a plain pickle")
        return self.storages.load(pid)


class _ZipStorages:
    """The storages of a torch zip checkpoint, read on demand from ``PREFIX/data/KEY``."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        self.archive, self.prefix = archive, prefix
        self.cache: dict[str, Any] = {}

    def load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:]
        if not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if storage_type is torch.UntypedStorage:
            dtype = torch.uint8
        elif isinstance(storage_type, type) and storage_type.__module__.startswith("torch"):
            with warnings.catch_warnings():  # legacy typed storage classes warn on access
                warnings.simplefilter("ignore")
                dtype = storage_type.dtype
        else:
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        if key not in self.cache:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes for {numel} items")
            # copied out of the bytearray so that the tensors own their memory
            untyped = (
                torch.frombuffer(raw, dtype=torch.uint8).clone().untyped_storage()
                if raw
                else torch.UntypedStorage(0)
            )
            self.cache[key] = torch.storage.TypedStorage(
                wrap_storage=untyped, dtype=dtype, _internal=True
            )
        return self.cache[key]


# Everything torch and the unpickler raise on bytes that are not a (complete) checkpoint.
_NOT_A_CHECKPOINT = (
    pickle.UnpicklingError,
    EOFError,
    IndexError,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
    RuntimeError,
    OverflowError,
    MemoryError,
    UnicodeDecodeError,
    struct.error,
    zipfile.BadZipFile,
    OSError,  # torch's zip reader on a truncated file: "[Errno 22] Invalid argument"
)
_REAL_OS_ERRORS = (PermissionError, FileNotFoundError, IsADirectoryError)


def _restricted_load(data: bytes, storages: _ZipStorages | None) -> tuple[Any, list[str]]:
    unpickler = _RestrictedUnpickler(io.BytesIO(data), storages)
    obj = unpickler.load()
    return obj, sorted(unpickler.skipped)


def _read_zip(path: Path) -> tuple[Any, list[str]]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointReadError(f"{len(pickles)} data.pkl records in the zip")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
            raise CheckpointReadError("written on a big-endian machine, which is unsupported")
        return _restricted_load(archive.read(pickles[0]), _ZipStorages(archive, prefix))


def _warn_skipped(path: Path, skipped: list[str]) -> None:
    if skipped:
        warnings.warn(
            f"{path}: {len(skipped)} kind(s) of Python object in the file were not loaded (a "
            f"pickle can run code) and are kept as inert placeholders: {', '.join(skipped)}. "
            "Tensors and plain values were read normally.",
            stacklevel=3,
        )


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}.{download_hint(path)}")
    return path


def read_checkpoint_with_skipped(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """:func:`read_checkpoint` without the warning: ``(object, skipped global names)``."""
    path = _check_file(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(
                f"{path} is a safetensors file but the 'safetensors' package is not installed; "
                "install it (pip install safetensors) or pass a .bin/.pth file."
            ) from e
        return load_file(str(path), device="cpu"), []
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except _NOT_A_CHECKPOINT as first:
        if isinstance(first, _REAL_OS_ERRORS):
            raise
        if not zipfile.is_zipfile(path):
            # random bytes, a truncated download, or a legacy (pre-zip) file holding objects
            # (torch's own unpickling message advises weights_only=False: not repeated here)
            detail = "" if isinstance(first, pickle.UnpicklingError) else str(first).strip()
            detail = (detail.splitlines() or [""])[0][:120]
            raise CheckpointReadError(
                f"not a checkpoint (or truncated): {path} (torch.load: {type(first).__name__}"
                f"{': ' + detail if detail else ''}). Re-download the file, or check that the "
                "path names a .pth/.pt checkpoint."
            ) from first
        try:
            return _read_zip(path)
        except _REAL_OS_ERRORS:
            raise
        except _NOT_A_CHECKPOINT as e:
            raise CheckpointReadError(
                f"not a checkpoint (or truncated): {path} ({type(e).__name__}: {e}). "
                "Re-download the file, or check that the path names a .pth/.pt checkpoint."
            ) from e


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a torch checkpoint on the CPU without running code from it.

    ``torch.load(weights_only=True)`` first; a zip-format file that holds other Python objects
    is re-read with the restricted unpickler (module docstring), which warns once naming the
    globals it replaced by :class:`SkippedGlobal`. ``.safetensors`` files are read with the
    ``safetensors`` package.

    Raises ``FileNotFoundError`` (no such file) and :class:`CheckpointReadError` (a subclass of
    ``ValueError``: random bytes, a truncated file, a legacy non-zip file holding objects).
    """
    obj, skipped = read_checkpoint_with_skipped(path)
    _warn_skipped(Path(path), skipped)
    return obj


def read_pickle(path: str | os.PathLike) -> Any:
    """Read a plain pickle file (e.g. the official ``nuscenes_infos_*.pkl``) without running
    code from it: same restrictions and warning as :func:`read_checkpoint`, no torch storages.

    Raises ``FileNotFoundError`` and :class:`CheckpointReadError` (not a complete pickle).
    """
    path = _check_file(path)
    data = path.read_bytes()
    try:
        obj, skipped = _restricted_load(data, None)
    except _NOT_A_CHECKPOINT as e:
        raise CheckpointReadError(
            f"not a pickle file (or truncated): {path} ({type(e).__name__}: {e})"
        ) from e
    _warn_skipped(path, skipped)
    return obj


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
