"""Config loading and Runner construction shared by ``tools/train.py`` and ``tools/test.py``.

The schedule is defined for the config's ``base_batch_size`` (global batch: GPUs x samples per
GPU, 8 x 1 in the official BEVFormer v2 recipes). When the real global batch differs:
- the learning rate is scaled linearly with it (the linear scaling rule);
- iteration-based scheduler boundaries (the warm-up) are rescaled so they cover the same
  number of samples, and epoch-based ones stay in epochs;
so changing the number of GPUs does not silently change the schedule.
"""

from __future__ import annotations

import copy
import math
import os
import os.path as osp
from collections.abc import Sequence
from typing import Any

import torch
from mmengine.config import Config, DictAction
from mmengine.evaluator import Evaluator

from bevformer.builder import build_dataset, build_model
from bevformer.data.collate import collate
from bevformer.engine.loops import SceneSequentialSampler, StreamingTestLoop, StreamingValLoop
from bevformer.engine.metric import NuScenesMetric
from bevformer.engine.runner import (
    BEVRunner,
    CheckpointStateHook,
    ReproducibleHook,
    register_checkpoint_globals,
    seed_everything,
)

__all__ = [
    "DictAction",
    "build_metric",
    "build_runner",
    "check_info_files",
    "finish_distributed",
    "is_streaming",
    "load_config",
    "load_model_weights",
]


def _check_option_keys(cfg: Config, options: dict[str, Any], path: str) -> None:
    """Every ``--cfg-options`` key must name an existing entry of the config."""
    for dotted in options:
        node: Any = cfg.to_dict()
        walked = []
        for part in dotted.split("."):
            walked.append(part)
            if isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                known = sorted(node.keys()) if isinstance(node, dict) else []
                raise KeyError(
                    f"--cfg-options key {dotted!r}: {'.'.join(walked)!r} does not exist in "
                    f"{path}. Keys at that level: {known}"
                )


def _replace_prefix(node: Any, old: str, new: str) -> Any:
    if isinstance(node, str):
        return new + node[len(old) :] if node.startswith(old) else node
    if isinstance(node, dict):
        return type(node)({k: _replace_prefix(v, old, new) for k, v in node.items()})
    if isinstance(node, list | tuple):
        return type(node)(_replace_prefix(v, old, new) for v in node)
    return node


def load_config(
    path: str, options: dict[str, Any] | None = None, data_root: str | None = None
) -> Config:
    """Load a config file, point it at another dataroot, apply ``--cfg-options``.

    ``data_root`` replaces the config's ``data_root`` prefix in every path of the config
    (info files, image root, evaluator), so one flag moves a config to another dataset copy.
    ``--cfg-options`` keys must name entries that exist.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f"config file {path!r} does not exist; configs live in projects/configs/bevformerv2/"
        )
    cfg = Config.fromfile(path)
    if data_root is not None:
        old = cfg.get("data_root")
        if not old:
            raise KeyError(f"{path} has no top-level data_root to replace with {data_root!r}")
        new = data_root.rstrip("/") + ("/" if old.endswith("/") else "")
        cfg = Config(_replace_prefix(cfg.to_dict(), old, new), filename=cfg.filename)
    if options:
        _check_option_keys(cfg, options, path)
        cfg.merge_from_dict(options)
    return cfg


def scale_schedule(cfg: Config, world_size: int) -> tuple[int, float]:
    """Rescale the lr and iteration-based scheduler boundaries for the real global batch.

    Returns the global batch size and the factor applied (global / base).
    """
    per_gpu = cfg.train_dataloader.batch_size
    global_batch = per_gpu * world_size
    base = cfg.get("base_batch_size", global_batch)
    factor = global_batch / base
    cfg.optim_wrapper.optimizer.lr = cfg.optim_wrapper.optimizer.lr * factor
    for sched in cfg.get("param_scheduler", []) or []:
        if not sched.get("by_epoch", True):
            for key in ("begin", "end"):
                if key in sched and sched[key] is not None and sched[key] < 2**31:
                    sched[key] = max(1, math.ceil(sched[key] / factor)) if sched[key] else 0
    return global_batch, factor


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    """Load a training checkpoint's weights strictly, with an error listing mismatches."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    register_checkpoint_globals()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: model {tuple(own[k].shape)} vs checkpoint {tuple(state[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {path} does not fit this model (was it trained with another "
            f"config?): {len(missing)} missing keys {missing[:8]}, {len(unexpected)} "
            f"unexpected keys {unexpected[:8]}, {len(shapes)} shape mismatches {shapes[:8]}"
        )
    model.load_state_dict(state, strict=True)


def check_info_files(cfg: Config, keys: Sequence[str]) -> None:
    """Every ``info_file`` the given dataloaders read must exist; else say how to make it."""
    for key in keys:
        loader = cfg.get(key)
        info_file = (loader or {}).get("dataset", {}).get("info_file")
        if info_file and not osp.isfile(info_file):
            dataroot = loader["dataset"].get("dataroot") or osp.dirname(info_file) or "."
            version = cfg.get("version", "v1.0-trainval")
            raise FileNotFoundError(
                f"{key} reads the info file {info_file}, which does not exist. Create the info "
                f"files with: python tools/create_data.py --dataroot {dataroot.rstrip('/')} "
                f"--version {version} (or point the config at another dataroot with "
                "--data-root)"
            )


def _dataloader(cfg: Config | None) -> dict | None:
    if cfg is None:
        return None
    loader = copy.deepcopy(dict(cfg))
    loader["dataset"] = build_dataset(loader["dataset"])
    loader["collate_fn"] = collate
    return loader


def is_streaming(cfg: Config) -> bool:
    """Whether the config's detector carries a temporal state between samples."""
    return cfg.model.get("temporal", "fusion") == "streaming"


def _streaming_eval(loader: dict, loop_cfg: dict | None, loop_type: type) -> tuple[dict, dict]:
    """Batch size 1, whole scenes in order per rank, the state-carrying loop."""
    loader = dict(loader, batch_size=1, sampler=dict(type=SceneSequentialSampler))
    loader.pop("batch_sampler", None)
    loop = dict(loop_cfg or {})
    loop["type"] = loop_type
    return loader, loop


def build_metric(cfg: dict, **overrides: Any) -> Evaluator:
    """Build the evaluator (one :class:`NuScenesMetric`) from ``val_evaluator`` /
    ``test_evaluator``."""
    args = {k: v for k, v in dict(cfg).items() if k != "type"}
    if cfg.get("type", "NuScenesMetric") != "NuScenesMetric":
        raise ValueError(f"unknown metric type {cfg['type']!r}; expected 'NuScenesMetric'")
    args.update(overrides)
    return Evaluator([NuScenesMetric(**args)])


def _own(evaluator_cfg: Any) -> dict:
    """The evaluator's own ``out_dir`` when the config sets one."""
    out_dir = dict(evaluator_cfg).get("out_dir")
    return {"out_dir": out_dir} if out_dir else {}


def _env_cfg(cfg: Config) -> dict:
    """NCCL on GPUs, gloo on CPU-only machines, whatever the config says otherwise."""
    env = copy.deepcopy(dict(cfg.get("env_cfg", {}) or {}))
    dist_cfg = dict(env.get("dist_cfg", {}) or {})
    if not torch.cuda.is_available():
        dist_cfg["backend"] = "gloo"
    dist_cfg.setdefault("backend", "nccl")
    env["dist_cfg"] = dist_cfg
    return env


def _cpu_distributed(cfg: Config) -> dict:
    """DDP without GPUs: mmengine's ``init_dist`` and default wrapper assume CUDA devices
    (``torch.cuda.set_device(LOCAL_RANK)``, ``device_ids=[LOCAL_RANK]``). Start the gloo
    process group here (mmengine then skips its own) and wrap without device ids."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo")
    return dict(
        type="MMDistributedDataParallel",
        device_ids=None,
        broadcast_buffers=False,
        find_unused_parameters=cfg.get("find_unused_parameters", False),
    )


def finish_distributed() -> None:
    """Wait for every rank, then tear the process group down (no-op in one process): a rank
    that exits while others still evaluate must not take the group down under them."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _world_size(launcher: str) -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if launcher != "none" else 1


def build_runner(
    cfg: Config,
    *,
    work_dir: str | None = None,
    resume: str | bool = False,
    amp: bool = False,
    launcher: str = "none",
    load_from: str | None = None,
    for_training: bool = True,
    metric_overrides: dict[str, Any] | None = None,
) -> BEVRunner:
    """Build the Runner for training (``for_training``) or testing from a loaded config."""
    register_checkpoint_globals()
    cfg = copy.deepcopy(cfg)
    work_dir = (
        work_dir
        or cfg.get("work_dir")
        or osp.join("work_dirs", osp.splitext(osp.basename(cfg.filename or "config"))[0])
    )
    cfg.work_dir = work_dir
    streaming = is_streaming(cfg)
    check_info_files(
        cfg, ["train_dataloader", "val_dataloader"] if for_training else ["test_dataloader"]
    )
    randomness = dict(cfg.get("randomness", dict(seed=0)))
    if randomness.get("seed") is not None:
        # the model is built here, before the Runner seeds: seed first so that two runs of
        # one config start from the same weights
        seed_everything(int(randomness["seed"]))
    model = build_model(cfg.model)
    if load_from:
        load_model_weights(model, load_from)
    # the metric writes its submission and summary under the work dir unless told otherwise
    eval_dir = dict(out_dir=osp.join(work_dir, "nuscenes_eval"))

    if launcher != "none" and not torch.cuda.is_available():
        cfg.model_wrapper_cfg = _cpu_distributed(cfg)  # the Runner reads it from the config

    kwargs: dict[str, Any] = dict(
        model=model,
        work_dir=work_dir,
        launcher=launcher,
        env_cfg=_env_cfg(cfg),
        default_hooks=cfg.get("default_hooks"),
        custom_hooks=[*cfg.get("custom_hooks", []), CheckpointStateHook(), ReproducibleHook()],
        visualizer=cfg.get("visualizer"),
        log_processor=cfg.get("log_processor"),
        log_level=cfg.get("log_level", "INFO"),
        randomness=randomness,
        default_scope=None,
        cfg=cfg,
    )
    if for_training:
        global_batch, factor = scale_schedule(cfg, _world_size(launcher))
        optim_wrapper = copy.deepcopy(dict(cfg.optim_wrapper))
        if amp:
            bf16 = (not torch.cuda.is_available()) or torch.cuda.is_bf16_supported()
            optim_wrapper["type"] = "AmpOptimWrapper"
            optim_wrapper["dtype"] = "bfloat16" if bf16 else "float16"
            if not bf16:
                optim_wrapper["loss_scale"] = "dynamic"
        kwargs.update(
            train_dataloader=_dataloader(cfg.train_dataloader),
            train_cfg=cfg.train_cfg,
            optim_wrapper=optim_wrapper,
            param_scheduler=cfg.get("param_scheduler"),
            resume=bool(resume),
            load_from=resume if isinstance(resume, str) else None,
        )
        if cfg.get("val_dataloader") is not None and cfg.get("val_cfg") is not None:
            val_loader, val_cfg = _dataloader(cfg.val_dataloader), dict(cfg.val_cfg)
            if streaming:
                val_loader, val_cfg = _streaming_eval(val_loader, val_cfg, StreamingValLoop)
            val_overrides = {**eval_dir, **_own(cfg.val_evaluator)}
            kwargs.update(
                val_dataloader=val_loader,
                val_cfg=val_cfg,
                val_evaluator=build_metric(cfg.val_evaluator, **val_overrides),
            )
        cfg.setdefault("global_batch_size", global_batch)
        cfg.setdefault("lr_scale_factor", factor)
    else:
        test_loader, test_cfg = _dataloader(cfg.test_dataloader), dict(cfg.get("test_cfg", {}))
        if streaming:
            test_loader, test_cfg = _streaming_eval(test_loader, test_cfg, StreamingTestLoop)
        overrides = {**eval_dir, **_own(cfg.test_evaluator), **(metric_overrides or {})}
        kwargs.update(
            test_dataloader=test_loader,
            test_cfg=test_cfg,
            test_evaluator=build_metric(cfg.test_evaluator, **overrides),
        )
    return BEVRunner(**kwargs)
