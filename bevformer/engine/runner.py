"""mmengine Runner glue: atomic checkpoints, exact resume, safe checkpoint loading.

- Checkpoints are written to a temporary name and renamed into place, so an interrupted run
  never leaves a truncated file under the name ``last_checkpoint`` points to.
- :class:`RNGStateHook` stores the Python, NumPy and torch RNG states in every checkpoint and
  restores them on resume, so a resumed run draws the same augmentations and dropout masks as
  an uninterrupted one.
- torch >= 2.6 loads with ``weights_only=True`` by default; mmengine checkpoints hold a few
  non-tensor objects (the message hub's ``HistoryBuffer``, NumPy arrays and RNG states).
  :func:`register_checkpoint_globals` allows exactly those types instead of turning the
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
from mmengine.runner import Runner

__all__ = ["BEVRunner", "RNGStateHook", "register_checkpoint_globals"]


def register_checkpoint_globals() -> None:
    """Allow the non-tensor types of mmengine checkpoints under ``weights_only`` loading."""
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed: list[Any] = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        np.core.multiarray._reconstruct,
        np.core.multiarray.scalar,
        # NumPy stores one dtype class per scalar type (``numpy.dtypes.Float64DType``, ...).
        *(type(np.dtype(t)) for t in np.sctypeDict.values()),
    ]
    torch.serialization.add_safe_globals(allowed)


class RNGStateHook(Hook):
    """Saves and restores the RNG states of Python, NumPy and torch with the checkpoint."""

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        np_state = np.random.get_state()
        checkpoint["rng_state"] = {
            "python": list(random.getstate()[1]) + [random.getstate()[2]],
            "python_version": random.getstate()[0],
            "numpy": {
                "keys": np_state[1],
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "torch": torch.get_rng_state(),
        }

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        state = checkpoint.get("rng_state")
        if state is None:
            runner.logger.warning("checkpoint has no RNG state: the resumed run is not exact")
            return
        py = state["python"]
        random.setstate((state["python_version"], tuple(py[:-1]), py[-1]))
        np_state = state["numpy"]
        np.random.set_state(
            (
                "MT19937",
                np_state["keys"],
                np_state["pos"],
                np_state["has_gauss"],
                np_state["cached_gaussian"],
            )
        )
        torch.set_rng_state(state["torch"])


class BEVRunner(Runner):
    """mmengine ``Runner`` whose checkpoints are written atomically."""

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
        tmp_name = f".{filename}.tmp"
        super().save_checkpoint(out_dir, tmp_name, *args, **kwargs)
        os.replace(osp.join(out_dir, tmp_name), osp.join(out_dir, filename))
