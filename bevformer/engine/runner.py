"""mmengine Runner glue: atomic checkpoints, exact resume, safe checkpoint loading, weights in.

- Checkpoints are written to a temporary name and renamed into place, so an interrupted run
  never leaves a truncated file under the name ``last_checkpoint`` points to (mmengine's
  ``CheckpointHook`` writes ``last_checkpoint`` only after the save returned).
- Exact resume (:class:`ReproducibleHook`): randomness never depends on how far a process got.
  Data augmentation draws from ``default_rng([seed, epoch, index])`` per sample (the dataset's
  ``set_seed`` / ``set_epoch``, called here before each epoch's iterator is created), and the
  model's randomness (dropout, GridMask: the torch RNG) is re-seeded before every iteration
  from ``(seed, rank, iteration)``. A run resumed at iteration k therefore draws exactly what
  the uninterrupted run drew from iteration k + 1 on, whatever happened in between
  (validation, DataLoader restarts, workers).
- Weights of a new run (:class:`BEVRunner`): ``model.init_weights()`` (backbone ``init_cfg``
  ``Pretrained`` files) runs once at the start of training, then the whole-model
  ``load_from`` file is loaded over it; both log what they loaded. A resumed run skips both:
  the resumed checkpoint restores every weight.
- torch >= 2.6 loads with ``weights_only=True`` by default; mmengine checkpoints hold a few
  non-tensor objects. :func:`register_checkpoint_globals` allows the NumPy types, and
  :class:`CheckpointStateHook` stores the message hub's ``HistoryBuffer`` as plain arrays,
  instead of turning the safety check off.
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
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, Runner
from mmengine.runner.checkpoint import find_latest_checkpoint

from bevformer.checkpoint import CheckpointReadError, StateDictMismatchError, load_weights

__all__ = [
    "BEVRunner",
    "CheckpointStateHook",
    "ReproducibleHook",
    "iteration_seed",
    "register_checkpoint_globals",
    "seed_everything",
]


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
    """Makes checkpoints loadable with ``weights_only=True``: the message hub's
    ``HistoryBuffer`` objects are stored as plain arrays and rebuilt on load (before mmengine
    hands them to the message hub)."""

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        hub = checkpoint.get("message_hub")
        if isinstance(hub, dict) and "log_scalars" in hub:
            hub["log_scalars"] = _buffers_to_plain(hub["log_scalars"])

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        hub = checkpoint.get("message_hub")
        if isinstance(hub, dict) and "log_scalars" in hub:
            hub["log_scalars"] = _plain_to_buffers(hub["log_scalars"])


def iteration_seed(seed: int, rank: int, iteration: int) -> int:
    """A well-mixed 63-bit seed for one iteration of one rank."""
    words = np.random.SeedSequence([int(seed), int(rank), int(iteration)]).generate_state(2)
    return (int(words[0]) << 31 ^ int(words[1])) & (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _sampler(loader: Any) -> Any:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        return sampler
    batch_sampler = getattr(loader, "batch_sampler", None)
    return getattr(batch_sampler, "sampler", None)


class ReproducibleHook(Hook):
    """Makes training randomness a function of (seed, epoch, iteration) only.

    - ``before_train``: the train dataset gets the run's seed (``runner.seed``, the one
      mmengine stores in and resumes from checkpoints) and the epoch; the train DataLoader gets
      a private ``torch.Generator``, so creating its iterator no longer draws from the global
      torch RNG.
    - ``before_train_epoch`` (``EpochBasedTrainLoop`` calls it right before it creates the
      epoch's iterator): ``dataset.set_epoch(runner.epoch)``. ``IterBasedTrainLoop`` creates
      its iterator when the loop is built and restarts it itself when a finite sampler runs
      out, after calling ``sampler.set_epoch``; that call is forwarded to the dataset. (With
      ``InfiniteSampler`` the whole run is epoch 0: every pass over the data repeats the
      augmentations; use ``DefaultSampler`` with iteration-based schedules.)
    - ``before_train_iter``: the global generators are seeded from
      ``(seed, rank, iteration)``.
    """

    priority = "VERY_LOW"

    def before_train(self, runner: Runner) -> None:
        loader = runner.train_loop.dataloader
        dataset = loader.dataset
        if hasattr(dataset, "set_seed"):
            dataset.set_seed(runner.seed)
            dataset.set_epoch(runner.epoch)
        loader.generator = torch.Generator().manual_seed(int(runner.seed))
        sampler = _sampler(loader)
        if isinstance(runner.train_loop, IterBasedTrainLoop) and sampler is not None:
            original = sampler.set_epoch

            def set_epoch(epoch: int) -> None:
                original(epoch)
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)

            sampler.set_epoch = set_epoch

    def before_train_epoch(self, runner: Runner) -> None:
        dataset = runner.train_loop.dataloader.dataset
        if isinstance(runner.train_loop, EpochBasedTrainLoop) and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(runner.epoch)

    def before_train_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None) -> None:
        seed_everything(iteration_seed(runner.seed, runner.rank, runner.iter))


class BEVRunner(Runner):
    """mmengine ``Runner`` whose checkpoints are written atomically and which starts a new run
    from ``weights_from`` (the ``load_from`` / ``--load-from`` file, named by
    ``weights_origin`` in errors and logs; ``weights_strict``: every key must match).

    mmengine's own ``load_from`` argument is used for ``--resume CKPT`` only.
    """

    def __init__(
        self,
        *args: Any,
        weights_from: str | None = None,
        weights_origin: str = "load_from",
        weights_strict: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._weights_from = weights_from
        self._weights_origin = weights_origin
        self._weights_strict = weights_strict

    def _resume_source(self) -> str | None:
        """The checkpoint this run resumes from (None: a new run), as mmengine decides it."""
        if not self._resume:
            return None
        return self._load_from or find_latest_checkpoint(self.work_dir)

    def _init_model_weights(self) -> None:
        if self._resume_source() is not None:
            self.logger.info("init_weights skipped: the resumed checkpoint restores every weight")
            return
        super()._init_model_weights()

    def load_or_resume(self) -> None:
        """mmengine's resume; on a new run, then the ``weights_from`` file (after
        ``init_weights``, which :meth:`train` calls first)."""
        if self._has_loaded:
            return
        resume_from = self._resume_source()
        super().load_or_resume()
        if not self._weights_from:
            return
        origin, path = self._weights_origin, self._weights_from
        if resume_from is not None:
            self.logger.warning(
                f"{origin} = {path} ignored: the run resumes from {resume_from}, which restores "
                "the whole model"
            )
            return
        model = self.model.module if is_model_wrapper(self.model) else self.model
        try:
            load_weights(model, path, strict=self._weights_strict, logger=self.logger)
        except StateDictMismatchError as err:
            raise StateDictMismatchError(
                f"{origin} = {path} (load_from_strict=True): {err}", err.report
            ) from err
        except (FileNotFoundError, CheckpointReadError) as err:
            raise type(err)(f"{origin} = {path}: {err}") from err
        self._has_loaded = True

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
        tmp_name = f".{filename}.tmp"
        tmp_path = osp.join(out_dir, tmp_name)
        try:
            super().save_checkpoint(out_dir, tmp_name, *args, **kwargs)
        except BaseException:
            if osp.exists(tmp_path):
                os.remove(tmp_path)
            raise
        os.replace(tmp_path, osp.join(out_dir, filename))
        # mmdetection habit: ``latest.pth`` names the newest checkpoint (a relative symlink,
        # replaced atomically), next to mmengine's ``last_checkpoint`` text file
        link_tmp = osp.join(out_dir, ".latest.pth.tmp")
        if osp.lexists(link_tmp):
            os.remove(link_tmp)
        try:
            os.symlink(filename, link_tmp)
            os.replace(link_tmp, osp.join(out_dir, "latest.pth"))
        except OSError:  # file systems without symlinks: last_checkpoint still names it
            if osp.lexists(link_tmp):
                os.remove(link_tmp)
