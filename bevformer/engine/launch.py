"""Config loading and Runner construction shared by ``tools/train.py`` and ``tools/test.py``;
the model loading of the analysis tools (``tools/temporal_report.py``, ``tools/velocity_probe.py``).

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
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from mmengine.config import Config, DictAction
from mmengine.evaluator import Evaluator
from mmengine.logging import print_log

from backbones.checkpoint import download_hint
from bevformer.builder import build_dataset, build_model
from bevformer.checkpoint import load_model_weights
from bevformer.data.collate import collate
from bevformer.data.infos import CAMERA_NAMES, resolve_path
from bevformer.engine.amp import CPUBFloat16OptimWrapper, cpu_supports_bfloat16
from bevformer.engine.loops import SceneSequentialSampler, StreamingTestLoop, StreamingValLoop
from bevformer.engine.metric import NuScenesMetric
from bevformer.engine.runner import (
    BEVRunner,
    CheckpointStateHook,
    ReproducibleHook,
    register_checkpoint_globals,
    seed_everything,
)
from bevformer.engine.sync_bn import apply_sync_bn
from bevformer.evaluation.results import MAX_BOXES_PER_SAMPLE

__all__ = [
    "DictAction",
    "build_metric",
    "build_runner",
    "check_max_boxes",
    "check_info_files",
    "finish_distributed",
    "is_streaming",
    "load_config",
]


# Set once at the top level of a config, written into these nodes by ``load_config``:
# top-level key -> {node: key of the node}.
_DATASET_NODES = ("train_dataloader.dataset", "val_dataloader.dataset", "test_dataloader.dataset")
_EVALUATOR_NODES = ("val_evaluator", "test_evaluator")
_PROPAGATED = {
    "data_root": {
        **dict.fromkeys(_DATASET_NODES, "data_root"),
        **dict.fromkeys(_EVALUATOR_NODES, "data_root"),
    },
    "version": {
        **dict.fromkeys(_DATASET_NODES, "expected_version"),
        **dict.fromkeys(_EVALUATOR_NODES, "version"),
    },
}


# Sections whose contents mmengine interprets (hooks, loops, logging, environment): new keys
# may be added there with --cfg-options without the explicit "+" (mmengine validates them).
MMENGINE_SECTIONS = (
    "default_hooks",
    "custom_hooks",
    "env_cfg",
    "log_processor",
    "visualizer",
    "randomness",
    "train_cfg",
    "val_cfg",
    "test_cfg",
    "optim_wrapper",
)
NEW_KEY_PREFIX = "+"


def _split_new_keys(options: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Strip the ``+`` of keys the user adds on purpose; return the options and those keys."""
    plain, added = {}, set()
    for key, value in options.items():
        if key.startswith(NEW_KEY_PREFIX):
            key = key[len(NEW_KEY_PREFIX) :]
            added.add(key)
        plain[key] = value
    return plain, added


# model config keys of the layout before the BEV and perspective stages were modules (state-dict
# layout 1, bevformer.models.detector.LAYOUT_RENAMES) -> where they are now
MOVED_MODEL_KEYS = {
    "model.encoder": "model.bev.encoder",
    "model.fusion": "model.bev.fusion",
    "model.frames": "model.bev.frames",
    "model.temporal": "model.bev.temporal",
    "model.mono_head": "model.perspective.mono_head",
    "model.hybrid_queries": "model.perspective.hybrid",
    "model.num_mono_levels": "model.perspective.num_levels",
    "model.mono_cameras": "model.perspective.cameras",
    "model.mono_loss_weight": "model.perspective.loss_weight",
}


def moved_key_hint(dotted: str) -> str:
    """`` (moved: use NEW)`` when ``dotted`` starts with a model key of the earlier layout,
    else ""."""
    for old, new in MOVED_MODEL_KEYS.items():
        if dotted == old or dotted.startswith(old + "."):
            return f" ({old} moved to {new}: use {new + dotted[len(old) :]})"
    return ""


def check_model_layout(cfg: Config, path: str) -> None:
    """Refuses a config whose model node still has keys of the earlier layout (e.g. a
    user's config with ``model.encoder``), naming where each one moved."""
    model = cfg.get("model") or {}
    moved = [key for key in MOVED_MODEL_KEYS if key.split(".", 1)[1] in model]
    if moved:
        where = ", ".join(f"{key} -> {MOVED_MODEL_KEYS[key]}" for key in moved)
        raise ValueError(
            f"{path}: the model config has keys of the earlier layout ({where}); the encoder, "
            "fusion, frames and temporal mode now sit in model.bev (TemporalBEV), the "
            "perspective head and hybrid queries in model.perspective (PerspectiveStage): move "
            "them there (checkpoints of the earlier layout still load unchanged)"
        )


def _check_option_keys(
    cfg: Config, options: dict[str, Any], path: str, added: set[str] = frozenset()
) -> None:
    """Every ``--cfg-options`` key must name an existing entry of the config, except keys
    added on purpose (``+key=value``) and new keys inside an existing mmengine section
    (:data:`MMENGINE_SECTIONS`); a typo elsewhere is an error naming the keys that exist."""
    node_keys = {
        f"{node}.{key}": top for top, nodes in _PROPAGATED.items() for node, key in nodes.items()
    }
    for dotted in options:
        if dotted in added:
            continue
        if dotted in node_keys:
            top = node_keys[dotted]
            raise KeyError(
                f"--cfg-options key {dotted!r}: {dotted.rsplit('.', 1)[1]} is taken from the "
                f"top-level {top!r} of the config; set that instead (--cfg-options "
                f"{top}=...{' or --data-root DIR' if top == 'data_root' else ''})"
            )
        node: Any = cfg.to_dict()
        walked = []
        for part in dotted.split("."):
            walked.append(part)
            if isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            elif len(walked) > 1 and walked[0] in MMENGINE_SECTIONS and isinstance(node, dict):
                break  # a new key inside an mmengine section: mmengine checks it
            else:
                known = sorted(node.keys()) if isinstance(node, dict) else []
                raise KeyError(
                    f"--cfg-options key {dotted!r}: {'.'.join(walked)!r} does not exist in "
                    f"{path}{moved_key_hint(dotted)}. Keys at that level: {known}. To add a "
                    "key the config does not "
                    f"set, prefix it with '{NEW_KEY_PREFIX}' (--cfg-options "
                    f"{NEW_KEY_PREFIX}{dotted}=...); inside mmengine's sections "
                    f"({', '.join(MMENGINE_SECTIONS)}) new keys need no prefix"
                )


def _node(cfg: Config, dotted: str) -> Any:
    """The config node at ``dotted`` (``val_dataloader.dataset``), or None where absent."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict | Config) else None
        if node is None:
            return None
    return node


def _propagate_top_level(cfg: Config, file_values: dict[str, Any], path: str) -> None:
    """Write the top-level ``data_root`` and ``version`` into the dataset and evaluator nodes.

    The top-level value always wins. A node that names another value than the config file's
    own top-level one (a hand-written node) is overwritten with a warning; a config dumped by
    a run, whose nodes carry the values written here, loads without one and follows
    ``--data-root`` like any other.

    The model's cameras (``model.bev.encoder.camera_names``, by default the encoder's default
    :data:`~bevformer.data.infos.CAMERA_NAMES`) are written into every dataset node as its
    ``camera_names`` in the same way, so that training, test, streaming and visualisation stack
    the info file's images in the order of the model's camera embeddings.
    """
    encoder = _node(cfg, "model.bev.encoder")
    if encoder is not None:
        names = list(encoder.get("camera_names") or CAMERA_NAMES)
        for dotted in _DATASET_NODES:
            node = _node(cfg, dotted)
            if node is None:
                continue
            own = node.get("camera_names")
            if own is not None and list(own) != names:
                warnings.warn(
                    f"{path}: {dotted}.camera_names = {list(own)} is replaced by the model's "
                    f"model.bev.encoder.camera_names = {names}; the cameras are set once, in the "
                    "model's encoder",
                    stacklevel=3,
                )
            node["camera_names"] = names
    for top, nodes in _PROPAGATED.items():
        value = cfg.get(top)
        for dotted, key in nodes.items():
            node = _node(cfg, dotted)
            if node is None:
                continue
            if value is None:
                if top == "data_root" and node.get(key) is None:
                    raise KeyError(
                        f"{path} has no top-level data_root, which {dotted} needs (its paths "
                        "are relative to it): add data_root = 'data/nuscenes/...' to the "
                        "config or pass --data-root DIR"
                    )
                continue
            own = node.get(key)
            if own is not None and own != value and own != file_values.get(top):
                warnings.warn(
                    f"{path}: {dotted}.{key} = {own!r} is replaced by the top-level {top} = "
                    f"{value!r}; the dataroot and version are set once, at the top level of "
                    "a config",
                    stacklevel=3,
                )
            node[key] = value


def checked_options(cfg: Config, options: dict[str, Any] | None, path: str) -> dict[str, Any]:
    """``--cfg-options`` for ``cfg`` (loaded from ``path``) with the ``+`` of added keys
    stripped, after checking that every other key names an existing entry (``KeyError`` naming
    the keys that exist otherwise). Merge them with ``cfg.merge_from_dict``."""
    options, added = _split_new_keys(dict(options or {}))
    if options:
        _check_option_keys(cfg, options, path, added)
    return options


def load_config(
    path: str, options: dict[str, Any] | None = None, data_root: str | None = None
) -> Config:
    """Load a config file, apply ``--cfg-options``, point it at ``data_root`` (``--data-root``).

    One rule for the dataroot: the config's top-level ``data_root`` (and ``version``, the
    nuScenes version it holds) is the only one. After ``_base_`` inheritance,
    ``--cfg-options`` and ``--data-root``, it is written into every dataset node
    (``{train,val,test}_dataloader.dataset``: ``data_root``, ``expected_version``) and
    evaluator node (``{val,test}_evaluator``: ``data_root``, ``version``), whose paths
    (``info_file``, ``ann_file``) are relative to it. So ``--data-root DIR``,
    ``--cfg-options data_root=DIR`` and a child config ``_base_ = [...]; data_root = "DIR"``
    all move every path, whatever the config sets; giving ``--data-root`` and a different
    ``--cfg-options data_root`` at once is an error. ``--cfg-options`` keys must name entries
    that exist (new keys: ``+key=value``, or any key inside an mmengine section such as
    ``env_cfg``); node keys set from the top level are refused with the key to use instead.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f"config file {path!r} does not exist; configs live in projects/configs/bevformerv2/"
        )
    cfg = Config.fromfile(path)
    file_values = {top: cfg.get(top) for top in _PROPAGATED}
    options = checked_options(cfg, options, path)
    if data_root is not None:
        other = options.get("data_root")
        if other is not None and str(other).rstrip("/") != str(data_root).rstrip("/"):
            raise ValueError(
                f"--data-root {data_root!r} and --cfg-options data_root={other!r} disagree; "
                "give the dataroot once"
            )
        options["data_root"] = data_root
    if options:
        cfg.merge_from_dict(options)
    check_model_layout(cfg, path)
    _propagate_top_level(cfg, file_values, path)
    return cfg


def add_model_arguments(parser: Any, data_root_help: str) -> None:
    """The arguments of the tools that analyse a trained model (``tools/temporal_report.py``,
    ``tools/velocity_probe.py``): ``config``, ``checkpoint`` ('none': the random weights),
    ``--data-root`` (required) and ``--cfg-options`` (the training's)."""
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="a checkpoint, or 'none' for the random weights")
    parser.add_argument("--data-root", required=True, help=data_root_help)
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="the training's --cfg-options"
    )


def load_model_for_analysis(args: Any) -> tuple[Config, torch.nn.Module]:
    """(config, model in eval mode) from the :func:`add_model_arguments` of ``args``: the
    config through :func:`load_config`, the checkpoint's weights loaded strictly
    (``load_model_weights``: every parameter filled, or an error)."""
    cfg = load_config(args.config, args.cfg_options, data_root=args.data_root)
    model = build_model(cfg.model)
    if args.checkpoint != "none":
        load_model_weights(model, args.checkpoint)
    return cfg, model.eval()


def scale_schedule(cfg: Config, world_size: int) -> tuple[int, float]:
    """Rescale the lr and iteration-based scheduler boundaries for the real global batch.

    Returns the global batch size and the factor applied (global / base).
    """
    per_gpu = cfg.train_dataloader.batch_size
    global_batch = per_gpu * world_size
    base = cfg.get("base_batch_size", global_batch)
    factor = global_batch / base
    lr = cfg.optim_wrapper.optimizer.lr
    cfg.optim_wrapper.optimizer.lr = lr * factor
    print_log(
        f"lr scaling: base batch {base}, global batch {global_batch} ({world_size} process(es) "
        f"x {per_gpu}), factor {factor:g}: lr {lr:g} -> {lr * factor:g}",
        logger="current",
    )
    for sched in cfg.get("param_scheduler", []) or []:
        if not sched.get("by_epoch", True):
            for key in ("begin", "end"):
                if key in sched and sched[key] is not None and sched[key] < 2**31:
                    sched[key] = max(1, math.ceil(sched[key] / factor)) if sched[key] else 0
    return global_batch, factor


def check_info_files(cfg: Config, keys: Sequence[str]) -> None:
    """Before anything is built: every ``info_file`` the given dataloaders read must exist
    (else say how to make it), and the evaluator paired with a dataloader (``val_dataloader``
    with ``val_evaluator``, ``test_dataloader`` with ``test_evaluator``) must score the info
    file that dataloader reads. Paths are resolved against the nodes' ``data_root``."""
    for key in keys:
        loader = cfg.get(key)
        dataset = (loader or {}).get("dataset", {})
        if not dataset.get("info_file"):
            continue
        data_root = dataset.get("data_root") or ""
        info_file = resolve_path(data_root, dataset["info_file"])
        if data_root and not osp.isdir(data_root):
            raise FileNotFoundError(
                f"the dataroot {data_root} ({key}) does not exist; check the path given to "
                "--data-root / data_root (a nuScenes dataroot holds samples/ and the "
                "v1.0-* tables)"
            )
        if not osp.isfile(info_file):
            version = dataset.get("expected_version") or cfg.get("version", "v1.0-trainval")
            hint = ""
            if data_root and str(dataset["info_file"]).startswith(data_root):
                hint = (
                    f" (info_file {dataset['info_file']!r} already starts with the data_root: "
                    "info_file is relative to data_root, drop the prefix)"
                )
            raise FileNotFoundError(
                f"{key} reads the info file {info_file}, which does not exist{hint}. Create the "
                f"info files with: python tools/create_data.py --dataroot "
                f"{(data_root or '.').rstrip('/')} --version {version} (or point the config "
                "at another dataroot with --data-root)"
            )
        evaluator = cfg.get(key.replace("_dataloader", "_evaluator"))
        if key == "train_dataloader" or not evaluator or not evaluator.get("ann_file"):
            continue
        ann_file = resolve_path(evaluator.get("data_root") or "", evaluator["ann_file"])
        if osp.realpath(ann_file) != osp.realpath(info_file):
            name = key.replace("_dataloader", "_evaluator")
            raise ValueError(
                f"{name} scores {ann_file} but {key} reads {info_file}; the metric must score "
                f"the samples the dataloader reads: set {name}.ann_file to "
                f"{dataset['info_file']!r}"
            )


def _dataloader(cfg: Config | None) -> dict | None:
    """The dataloader config with its dataset built; logs what the dataset reads."""
    if cfg is None:
        return None
    loader = copy.deepcopy(dict(cfg))
    dataset = build_dataset(loader["dataset"])
    describe = getattr(dataset, "summary", None)
    print_log(
        f"dataset {type(dataset).__name__}: "
        + (describe() if callable(describe) else f"{len(dataset)} samples"),
        logger="current",
    )
    loader["dataset"] = dataset
    loader["collate_fn"] = collate
    return loader


def is_streaming(cfg: Config) -> bool:
    """Whether the config's detector carries a temporal state between samples."""
    return (cfg.model.get("bev") or {}).get("temporal", "fusion") == "streaming"


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


def _new_run_weights(cfg: Config, load_from: str | None, resume: str | bool) -> dict[str, Any]:
    """The whole-model weights a new training run starts from: ``--load-from`` (``load_from``
    argument) wins over the config's top-level ``load_from``; ``load_from_strict`` (default
    False, as mmengine) makes any key or shape difference an error. The file must exist
    unless the run resumes (then it is ignored, with a log line, when the run starts)."""
    origin = "--load-from" if load_from is not None else "load_from (config key)"
    path = load_from if load_from is not None else cfg.get("load_from")
    if not path:
        return {}
    if not resume and not osp.isfile(path):
        fix = (
            "pass an existing file to --load-from"
            if load_from is not None
            else "set load_from to an existing file, or train without it: "
            "--cfg-options load_from=None"
        )
        raise FileNotFoundError(
            f"{origin}: checkpoint {path} does not exist.{download_hint(path)} To start "
            f"elsewhere, {fix}."
        )
    return dict(
        weights_from=str(path),
        weights_origin=origin,
        weights_strict=bool(cfg.get("load_from_strict", False)),
    )


def check_max_boxes(cfg: Config) -> None:
    """The post-processor's top-k (``max_num``) must fit the nuScenes evaluation's limit of
    :data:`~bevformer.evaluation.results.MAX_BOXES_PER_SAMPLE` boxes per sample: refused when
    the config is loaded, not after the whole test loop."""
    max_num = (cfg.model.get("post_processor") or {}).get("max_num")
    if max_num is not None and max_num > MAX_BOXES_PER_SAMPLE:
        raise ValueError(
            f"model.post_processor.max_num = {max_num}: the nuScenes detection evaluation "
            f"accepts at most {MAX_BOXES_PER_SAMPLE} boxes per sample; set max_num <= "
            f"{MAX_BOXES_PER_SAMPLE} (official: 300)"
        )


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
    """Build the Runner for training (``for_training``) or testing from a loaded config.

    Weights: for training, ``load_from`` (``--load-from``, else the config's ``load_from``) is
    loaded by :class:`BEVRunner` after ``init_weights`` (so it wins over a backbone's
    ``init_cfg``) and before the first iteration of a new run, and ignored when the run
    resumes; mmengine's own ``load_from`` argument only carries the ``--resume`` checkpoint.
    For testing, ``load_from`` is the checkpoint to evaluate, loaded strictly here.
    """
    if amp and not torch.cuda.is_available() and not cpu_supports_bfloat16():
        # CPU: bfloat16 autocast (CPUBFloat16OptimWrapper); emulated bfloat16 is slower than
        # float32, so refuse here, before anything is built
        raise ValueError(
            "--amp without a CUDA device trains in bfloat16 autocast on the CPU, which needs "
            "bfloat16 instructions (AVX512-BF16 or AMX) and this CPU has none; train in "
            "float32 without --amp"
        )
    check_max_boxes(cfg)
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
    weights: dict[str, Any] = {}
    if for_training:
        weights = _new_run_weights(cfg, load_from, resume)
    elif load_from:
        load_model_weights(model, load_from)
    # BatchNorm -> SyncBatchNorm for multi-GPU training (config ``sync_bn``), before DDP wraps it
    model = apply_sync_bn(
        model,
        cfg,
        world_size=_world_size(launcher),
        distributed=launcher != "none",
        training=for_training,
    )
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
        **weights,
    )
    if for_training:
        global_batch, factor = scale_schedule(cfg, _world_size(launcher))
        optim_wrapper = copy.deepcopy(dict(cfg.optim_wrapper))
        if amp and torch.cuda.is_available():
            bf16 = torch.cuda.is_bf16_supported()
            optim_wrapper["type"] = "AmpOptimWrapper"
            optim_wrapper["dtype"] = "bfloat16" if bf16 else "float16"
            if not bf16:
                optim_wrapper["loss_scale"] = "dynamic"
            precision = f"mixed precision: {optim_wrapper['dtype']} autocast on CUDA"
        elif amp:
            optim_wrapper["type"] = CPUBFloat16OptimWrapper.__name__
            precision = (
                "mixed precision: bfloat16 autocast on the CPU (convolutions, matrix products, "
                "softmax and norms in bfloat16; geometry, deformable sampling, parameters, "
                "gradients and AdamW in float32)"
            )
        else:
            precision = "precision: float32 (--amp for mixed precision)"
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
    runner = BEVRunner(**kwargs)
    if for_training:
        runner.logger.info(precision)  # into the run's log file
    return runner
