"""Reading checkpoints and pickles without running their code.

A checkpoint is a pickle, and a pickle can name any importable function and call it while it
is read. Every file is therefore first read with ``torch.load(weights_only=True)``. Files
written by mmcv 1.x / mmdet 2.x often hold more than tensors in their ``meta`` (an
``mmcv.Config``, NumPy scalars, a history buffer), which ``weights_only`` refuses; those are
re-read with a restricted unpickler that builds only tensors/storages, numbers, strings,
containers and NumPy arrays/scalars (:data:`ALLOWED_GLOBALS`) and turns every other global into
an inert :class:`SkippedGlobal` placeholder that records its ``module.name`` and the arguments
it was given, without ever importing or calling it. The names skipped are reported in one
warning. A file that is no checkpoint at all (random bytes, a truncated download) raises
:class:`CheckpointReadError`. The same reader opens plain pickles (:func:`read_pickle`, e.g.
the official BEVFormer ``.pkl`` info files).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ALLOWED_GLOBALS",
    "KNOWN_WEIGHTS",
    "CheckpointReadError",
    "SkippedGlobal",
    "download_hint",
    "read_checkpoint",
    "read_checkpoint_with_skipped",
    "read_pickle",
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


def download_hint(path: str | os.PathLike) -> str:
    """' Download it from URL.' for the official files in :data:`KNOWN_WEIGHTS`, else ''."""
    where = KNOWN_WEIGHTS.get(Path(path).name)
    return f" Download it from {where}." if where else ""


class CheckpointReadError(ValueError):
    """The file exists but is not a readable checkpoint (random bytes, truncated, ...)."""


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


# torch's weights_only refusals name the global: "Unsupported global: GLOBAL a.b" or
# "unsupported GLOBAL a.b whose module a is blocked"
_UNSUPPORTED = re.compile(r"unsupported (?:global: )?GLOBAL ([\w.]+)", re.IGNORECASE)


def _read_legacy(path: Path, first: BaseException) -> Any | None:
    """A legacy (pre-zip, ``_use_new_zipfile_serialization=False``) torch file whose objects
    are all in :data:`ALLOWED_GLOBALS` (e.g. NumPy scalars in an mmcv ``meta``): read by
    ``torch.load(weights_only=True)`` with those globals allowed. ``None`` when the file is not
    such a pickle at all; a :class:`CheckpointReadError` naming the object when it holds one
    outside the list (the legacy layout cannot be read object by object)."""
    if not isinstance(first, pickle.UnpicklingError) or not _UNSUPPORTED.search(str(first)):
        return None
    allowed = [(obj, name) for name, obj in ALLOWED_GLOBALS.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _UNSUPPORTED.search(str(err))
        raise CheckpointReadError(
            f"{path} is in torch's legacy (pre-1.6, non-zip) format and holds a Python object "
            f"({found.group(1) if found else 'unknown'}) besides tensors, numbers, strings, "
            "containers and NumPy arrays, which cannot be skipped in that format. Re-save its "
            "weights once where you trust the file: torch.save(<the loaded file>['state_dict'], "
            "NEW.pth)."
        ) from err


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
            legacy = _read_legacy(path, first)
            if legacy is not None:
                return legacy, []
            detail = "" if isinstance(first, pickle.UnpicklingError) else str(first).strip()
            detail = (detail.splitlines() or [""])[0]
            detail = detail if len(detail) <= 200 else detail[:200].rsplit(" ", 1)[0] + " ..."
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
