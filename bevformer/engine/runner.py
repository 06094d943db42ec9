"""mmengine Runner glue: atomic checkpoints, exact resume, safe checkpoint loading.

- Checkpoints are written to a temporary name and renamed into place, so an interrupted run
  never leaves a truncated file under the name ``last_checkpoint`` points to.
- :class:`CheckpointStateHook` stores the Python, NumPy and torch RNG states in every
  checkpoint and restores them on resume, so a resumed run draws the same dropout masks as an
  uninterrupted one (data augmentation draws from per-sample generators, see
  ``bevformer/data/dataset.py``).
- torch >= 2.6 loads with ``weights_only=True`` by default; mmengine checkpoints hold a few
  non-tensor objects. :func:`register_checkpoint_globals` allows the NumPy types, and the
  hook stores the message hub's ``HistoryBuffer`` as plain arrays, instead of turning the
  safety check off.
"""

from __future__ import annotations

import os
import os.path as osp
import random
from typing import Any

import numpy as np
import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import Runner

__all__ = ["BEVRunner", "CheckpointStateHook", "register_checkpoint_globals"]


def register_checkpoint_globals() -> None:
    """Allow the NumPy types found in checkpoints under ``weights_only`` loading."""
    allowed: list[Any] = [
        np.ndarray,
        np.dtype,
        np.core.multiarray._reconstruct,
        np.core.multiarray.scalar,
        # NumPy pickles one dtype class per scalar type (``numpy.dtypes.Float64DType``, ...).
        *(type(np.dtype(t)) for t in np.sctypeDict.values()),
    ]
    torch.serialization.add_safe_globals(allowed)


def _buffers_to_plain(log_scalars: dict) -> dict:
    """mmengine's ``HistoryBuffer`` pickles bound methods (needs ``getattr`` to unpickle,
    which ``weights_only`` rightly refuses): store its data instead."""
    out = {}
    for key, buf in log_scalars.items():
        if isinstance(buf, HistoryBuffer):
            log, count = buf.data
            buf = {_BUFFER_TAG: True, "log": log, "count": count, "max_length": buf.max_length}
        out[key] = buf
    return out


def _plain_to_buffers(log_scalars: dict) -> dict:
    return {
        key: HistoryBuffer(v["log"], v["count"], v["max_length"])
        if isinstance(v, dict) and v.get(_BUFFER_TAG)
        else v
        for key, v in log_scalars.items()
    }


_BUFFER_TAG = "__history_buffer__"


class CheckpointStateHook(Hook):
    """Makes checkpoints loadable with ``weights_only=True`` and resumes RNG states exactly.

    - the message hub's ``HistoryBuffer`` objects are stored as plain arrays and rebuilt on
      load (before mmengine hands them to the message hub);
    - the Python, NumPy and torch RNG states are stored, and restored just before the first
      iteration after a resume, i.e. after the train loop has created its dataloader iterator
      and skipped the batches already trained on (both of which draw random numbers).
    """

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._pending: dict | None = None

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        hub = checkpoint.get("message_hub")
        if isinstance(hub, dict) and "log_scalars" in hub:
            hub["log_scalars"] = _buffers_to_plain(hub["log_scalars"])
        version, py_state, gauss = random.getstate()
        _, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["rng_state"] = {
            "python": (version, list(py_state), gauss),
            "numpy": (keys, int(pos), int(has_gauss), float(cached)),
            "torch": torch.get_rng_state(),
        }

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        hub = checkpoint.get("message_hub")
        if isinstance(hub, dict) and "log_scalars" in hub:
            hub["log_scalars"] = _plain_to_buffers(hub["log_scalars"])
        self._pending = checkpoint.get("rng_state")

    def restore_rng(self) -> None:
        """Apply the RNG states of the loaded checkpoint (once)."""
        if self._pending is None:
            return
        version, py_state, gauss = self._pending["python"]
        random.setstate((version, tuple(py_state), gauss))
        np.random.set_state(("MT19937", *self._pending["numpy"]))
        torch.set_rng_state(self._pending["torch"])
        self._pending = None

    def before_train_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None) -> None:
        self.restore_rng()


class BEVRunner(Runner):
    """mmengine ``Runner`` whose checkpoints are written atomically."""

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
        tmp_name = f".{filename}.tmp"
        super().save_checkpoint(out_dir, tmp_name, *args, **kwargs)
        os.replace(osp.join(out_dir, tmp_name), osp.join(out_dir, filename))
