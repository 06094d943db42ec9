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
- Resume checks (:func:`check_resume_checkpoint`, run by :meth:`BEVRunner.resume` for
  ``--resume CKPT`` and the auto-resume pick alike): before mmengine restores anything, the file
  is read without running code from it and must be a full training checkpoint (``meta``,
  ``optimizer``), of exactly this model (every key and shape), for the optimizer this config
  builds (parameter groups, parameters per group, state shapes) and its schedulers (count).
  A failed check raises with what differs and leaves the model, optimizer and counters as they
  were.
- torch >= 2.6 loads with ``weights_only=True`` by default; mmengine checkpoints hold a few
  non-tensor objects. :func:`register_checkpoint_globals` allows the NumPy types, and
  :class:`CheckpointStateHook` stores the message hub's ``HistoryBuffer`` as plain arrays,
  instead of turning the safety check off.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, Runner
from mmengine.runner.checkpoint import find_latest_checkpoint
from torch import Tensor, nn

from backbones.checkpoint import LoadReport, read_checkpoint_with_skipped
from bevformer.checkpoint import (
    CheckpointReadError,
    StateDictMismatchError,
    layout_renames,
    load_weights,
    migrate_layout,
)

__all__ = [
    "BEVRunner",
    "CheckpointStateHook",
    "ResumeCheckError",
    "check_resume_checkpoint",
    "ReproducibleHook",
    "iteration_seed",
    "optimizer_summary",
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


class ResumeCheckError(ValueError):
    """A checkpoint a run cannot resume from (weights only, another model or optimizer);
    raised before anything was restored."""


def _model_report(state: Mapping[str, Any], model: nn.Module, path: str) -> LoadReport:
    """Keys and shapes of ``state`` against ``model.state_dict()``, exactly (nothing loaded)."""
    own = model.state_dict()
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    report = LoadReport(source=path, format="checkpoint with state_dict")
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [
        (k, tuple(own[k].shape), tuple(v.shape))
        for k, v in state.items()
        if k in own and isinstance(v, Tensor) and own[k].shape != v.shape
    ]
    return report


def _optimizer_differences(saved: Any, optimizer: torch.optim.Optimizer) -> list[str]:
    """What keeps ``optimizer.load_state_dict(saved)`` from restoring every parameter's state:
    group count, parameters per group, then state tensor shapes (``torch.optim.Optimizer``
    maps the saved ids to parameters by position, group by group)."""
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    if not isinstance(groups, Sequence) or not all(
        isinstance(g, Mapping) and isinstance(g.get("params"), Sequence) for g in groups
    ):
        return ["the optimizer state has no list of param_groups with params"]
    saved_counts = [len(g["params"]) for g in groups]
    own_counts = [len(g["params"]) for g in optimizer.param_groups]
    if len(saved_counts) != len(own_counts):
        return [
            f"{len(saved_counts)} parameter groups in the checkpoint, {len(own_counts)} in the "
            f"optimizer the config builds ({sum(saved_counts)} vs {sum(own_counts)} parameters)"
        ]
    diffs = [
        f"group {i}: {a} parameters in the checkpoint, {b} in the config's optimizer"
        for i, (a, b) in enumerate(zip(saved_counts, own_counts, strict=True))
        if a != b
    ]
    if diffs:
        return diffs
    by_id = {
        pid: (i, p)
        for i, (g, own) in enumerate(zip(groups, optimizer.param_groups, strict=True))
        for pid, p in zip(g["params"], own["params"], strict=True)
    }
    state = saved.get("state", {})
    for pid, entry in state.items() if isinstance(state, Mapping) else ():
        if pid not in by_id:
            diffs.append(f"state for parameter id {pid}, which no parameter group lists")
            continue
        group, param = by_id[pid]
        for name, value in entry.items() if isinstance(entry, Mapping) else ():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != param.shape:
                diffs.append(
                    f"group {group}, parameter id {pid}: state {name!r} has shape "
                    f"{list(value.shape)}, the parameter {list(param.shape)}"
                )
    return diffs


def _check_parameter_order(state: Mapping[str, Any], model: nn.Module, path: str) -> None:
    """The parameters of ``state`` (a state dict, in the order the model that wrote it had)
    must come in ``model.named_parameters()`` order: torch restores an optimizer state by
    position, so another order would give each tensor another one's moments."""
    own = [name for name, _ in model.named_parameters()]
    params = set(own)
    saved = [str(k).removeprefix("module.") for k in state]
    saved = [k for k in saved if k in params]
    if saved == own:
        return
    first = next(i for i, (a, b) in enumerate(zip(saved, own, strict=True)) if a != b)
    raise ResumeCheckError(
        f"checkpoint {path}: its parameters are in another order than this model's (first "
        f"difference at parameter {first}: {saved[first]} in the checkpoint, {own[first]} in "
        "the model), and an optimizer state is restored by position, so it would give each "
        "tensor another one's moments; nothing was restored. Resume with the code version "
        f"that wrote it, or start a new run from its weights with --load-from {path}"
    )


def check_resume_checkpoint(
    checkpoint: Any,
    path: str,
    model: nn.Module,
    optim_wrapper: OptimWrapper | OptimWrapperDict | None,
    param_schedulers: Sequence[Any] | Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """Check that a run of ``model`` / ``optim_wrapper`` can resume from ``checkpoint`` (the
    object read from ``path``, an mmengine checkpoint dict), without restoring anything.

    In order: it must be a dict with ``meta`` (``epoch``, ``iter``) and ``optimizer`` (else it
    holds weights only: ``--load-from`` starts a new run from them), ``state_dict`` and
    ``message_hub``; every key and shape of ``state_dict`` (``module.`` stripped) must equal
    ``model.state_dict()``'s, after renaming the keys of an earlier layout
    (:func:`bevformer.checkpoint.migrate_layout`); the parameters must be in the model's
    order (an optimizer state is restored by position); the optimizer state must have the
    parameter groups, parameters per group and state tensor shapes of ``optim_wrapper``'s
    optimizer (per name for an ``OptimWrapperDict``; skipped when ``optim_wrapper`` is
    None); the checkpoint's ``param_schedulers`` must be as many as ``param_schedulers``
    (built or config entries; skipped when either is absent), since mmengine pairs them by
    position.

    Raises :class:`ResumeCheckError` (a ``ValueError``) naming what differs.
    """
    if not isinstance(checkpoint, Mapping):
        raise ResumeCheckError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict; a run resumes "
            "from the iter_*.pth / epoch_*.pth files training writes to its work dir"
        )
    needed = ("meta", "optimizer") if optim_wrapper is not None else ("meta",)
    if any(key not in checkpoint for key in needed):
        raise ResumeCheckError(
            f"{path} holds weights only (no optimizer state / meta), so a run cannot resume from "
            f"it; start a new run from its weights with --load-from {path}\n"
            f"  top-level keys of the file: {sorted(map(str, checkpoint))[:10]}"
        )
    meta = checkpoint["meta"]
    lacking = [k for k in ("state_dict", "message_hub") if k not in checkpoint]
    if not isinstance(meta, Mapping):
        lacking.append("meta as a dict")
    else:
        lacking += [f"meta[{k!r}]" for k in ("epoch", "iter") if k not in meta]
    if "state_dict" in checkpoint and not isinstance(checkpoint["state_dict"], Mapping):
        lacking.append("state_dict as a dict")
    if lacking:
        raise ResumeCheckError(
            f"{path} is not a complete mmengine training checkpoint (it lacks "
            f"{', '.join(lacking)}), so a run cannot resume from it; start a new run from its "
            f"weights with --load-from {path}"
        )
    state, _ = migrate_layout(checkpoint["state_dict"], model)
    report = _model_report(state, model, path)
    if not report.complete:
        origin = ""
        if isinstance(meta, Mapping) and "mmengine_version" not in meta:
            origin = (
                " It was not written by mmengine (an mmcv 1.x / official BEVFormer file?); "
                f"start a new run from its weights with --load-from {path}."
            )
        raise ResumeCheckError(
            f"checkpoint {path} does not fit this model (was it trained with another config?); "
            f"nothing was restored: {len(report.missing)} missing keys, "
            f"{len(report.unexpected)} unexpected keys, {len(report.mismatched)} shape "
            f"mismatches.{origin} Resume with the config the checkpoint was trained with, or "
            f"start a new run from its weights with --load-from {path}.\n" + report.problems()
        )
    if optim_wrapper is not None:
        _check_parameter_order(state, model, path)
        saved = checkpoint["optimizer"]
        if isinstance(optim_wrapper, OptimWrapperDict):
            names = sorted(optim_wrapper.optim_wrappers)
            found = sorted(saved) if isinstance(saved, Mapping) else []
            diffs = [] if found == names else [f"optimizers {found} in the checkpoint, {names}"]
            for name in names if not diffs else ():
                optimizer = optim_wrapper.optim_wrappers[name].optimizer
                diffs += [f"{name}: {d}" for d in _optimizer_differences(saved[name], optimizer)]
        else:
            diffs = _optimizer_differences(saved, optim_wrapper.optimizer)
        if diffs:
            more = f"\n  ... ({len(diffs) - 8} more)" if len(diffs) > 8 else ""
            raise ResumeCheckError(
                f"checkpoint {path}: its optimizer state does not fit the optimizer this config "
                "builds (was it trained with another optim_wrapper / paramwise_cfg?); nothing was "
                "restored. Resume with the config the checkpoint was trained with, or start a new "
                f"run from its weights with --load-from {path}.\n  " + "\n  ".join(diffs[:8]) + more
            )
    saved_schedulers = checkpoint.get("param_schedulers")
    if param_schedulers is None or saved_schedulers is None:
        return
    if isinstance(param_schedulers, Mapping) and isinstance(saved_schedulers, Mapping):
        pairs = [(f"{k}: ", saved_schedulers.get(k, []), v) for k, v in param_schedulers.items()]
    elif isinstance(param_schedulers, Sequence) and isinstance(saved_schedulers, Sequence):
        pairs = [("", saved_schedulers, param_schedulers)]
    else:
        pairs = []
    for name, saved_list, own in pairs:
        if len(saved_list) != len(own):
            raise ResumeCheckError(
                f"checkpoint {path}: {name}{len(saved_list)} parameter schedulers in the "
                f"checkpoint, {len(own)} in the config's param_scheduler (was it trained with "
                "another schedule?); nothing was restored. Resume with the config the checkpoint "
                f"was trained with, or start a new run from its weights with --load-from {path}."
            )


class _DropParamwiseLines(logging.Filter):
    """Drops mmengine's per-parameter ``paramwise_options -- NAME:lr=...`` lines (thousands for
    a layer-decay backbone), counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("paramwise_options -- "):
            self.dropped += 1
            return False
        return True


def optimizer_summary(
    optimizer: torch.optim.Optimizer, paramwise_lines: int = 0, model: nn.Module | None = None
) -> str:
    """One block describing the parameter groups: per distinct (lr, weight decay) pair, how many
    groups, tensors and parameters, the lr as a multiple of the optimizer's base lr. With
    ``model``, its parameters with ``requires_grad`` off (the model's ``frozen`` parts, which
    the optimizer does not hold) are counted on a line of their own."""
    base_lr = optimizer.defaults.get("lr") or 1.0
    rows: dict[tuple[float, float], list[int]] = {}
    for group in optimizer.param_groups:
        key = (round(group["lr"] / base_lr, 6), group.get("weight_decay", 0.0))
        row = rows.setdefault(key, [0, 0, 0])
        row[0] += 1
        row[1] += len(group["params"])
        row[2] += sum(p.numel() for p in group["params"])
    tensors = sum(r[1] for r in rows.values())
    numel = sum(r[2] for r in rows.values())
    lines = [
        f"optimizer {type(optimizer).__name__}: base lr {base_lr:g}, "
        f"{len(optimizer.param_groups)} parameter groups, {tensors} tensors, "
        f"{numel / 1e6:.2f} M parameters"
        + (f" ({paramwise_lines} per-parameter option lines not shown)" if paramwise_lines else "")
    ]
    for (mult, decay), (groups, count, size) in sorted(rows.items(), reverse=True):
        lines.append(
            f"  lr x{mult:g}, weight decay {decay:g}: {groups} groups, {count} tensors, "
            f"{size / 1e6:.2f} M parameters"
        )
    frozen = [p for p in model.parameters() if not p.requires_grad] if model is not None else []
    if frozen:
        lines.append(
            f"  frozen (requires_grad off, not in the optimizer): {len(frozen)} tensors, "
            f"{sum(p.numel() for p in frozen) / 1e6:.2f} M parameters"
        )
    return "\n".join(lines)


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

    def build_optim_wrapper(self, optim_wrapper: Any) -> OptimWrapper | OptimWrapperDict:
        """mmengine's optimizer, with one summary instead of a log line per parameter."""
        drop = _DropParamwiseLines()
        self.logger.addFilter(drop)
        try:
            wrapper = super().build_optim_wrapper(optim_wrapper)
        finally:
            self.logger.removeFilter(drop)
        if isinstance(wrapper, OptimWrapper):
            self.logger.info(optimizer_summary(wrapper.optimizer, drop.dropped, self.model))
        return wrapper

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

    def resume(
        self,
        filename: str,
        resume_optimizer: bool = True,
        resume_param_scheduler: bool = True,
        map_location: str | Callable = "default",
    ) -> None:
        """mmengine's resume, after :func:`check_resume_checkpoint` passed on the file (read on
        the CPU without running code from it). Raises ``FileNotFoundError``,
        :class:`CheckpointReadError` (not a checkpoint, truncated) and
        :class:`ResumeCheckError`; then nothing was restored."""
        picked = ""
        if self._resume and self._load_from is None:
            named_by = osp.join(self.work_dir, "last_checkpoint")
            picked = f"\n  (--resume without a path picked it: {named_by} names it)"
        try:
            checkpoint, _ = read_checkpoint_with_skipped(filename)
        except (FileNotFoundError, CheckpointReadError) as err:
            raise type(err)(f"cannot resume: {err}{picked}") from err
        if resume_optimizer:
            # what mmengine's resume does before loading the optimizer state (a built wrapper
            # is returned as it is)
            self.optim_wrapper = self.build_optim_wrapper(self.optim_wrapper)
        schedulers = self.param_schedulers if resume_param_scheduler else None
        model = self.model.module if is_model_wrapper(self.model) else self.model
        try:
            check_resume_checkpoint(
                checkpoint,
                str(filename),
                model,
                self.optim_wrapper if resume_optimizer else None,
                schedulers,
            )
        except ResumeCheckError as err:
            raise ResumeCheckError(f"{err}{picked}") from err
        _, migrated = migrate_layout(checkpoint["state_dict"], model)
        if migrated:
            self.logger.info(f"resuming from {filename}: {migrated}")
        del checkpoint  # mmengine reads the file again, onto the run's device
        super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)

    def load_checkpoint(
        self,
        filename: str,
        map_location: str | Callable = "cpu",
        strict: bool = False,
        revise_keys: Sequence[tuple[str, str]] = ((r"^module\.", ""),),
    ) -> dict:
        """mmengine's load (used by :meth:`resume`), with the keys of an earlier state-dict
        layout of the model renamed (:func:`bevformer.checkpoint.migrate_layout`)."""
        model = self.model.module if is_model_wrapper(self.model) else self.model
        renames = [(f"^{re.escape(old)}", new) for old, new in layout_renames(model)]
        return super().load_checkpoint(filename, map_location, strict, [*revise_keys, *renames])

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
