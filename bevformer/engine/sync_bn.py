"""Synchronised BatchNorm for multi-process training: the config's top-level ``sync_bn``.

The official BEVFormer v2 trains with SyncBN in the ResNet-50 backbone
(``norm_cfg=dict(type='SyncBN')``), in the perspective head's towers (DD3D ``norm='SyncBN'``)
and in ``ResNetFusion``: under DDP their batch statistics are computed over the images of every
GPU, not per GPU. Here the modules are built with plain ``nn.BatchNorm2d`` and the training
launcher converts them, as mmdetection3d 1.x configs do with ``sync_bn = "torch"``:

- ``sync_bn = "torch"`` (or ``True``) and a multi-GPU run (world size > 1, CUDA): every
  BatchNorm of the model becomes ``torch.nn.SyncBatchNorm``
  (``SyncBatchNorm.convert_sync_batchnorm``, parameters and running statistics kept) before the
  model is wrapped in DDP.
- one process: plain BatchNorm (nothing to synchronise).
- several CPU processes (gloo): plain BatchNorm with a warning; torch's SyncBatchNorm refuses CPU
  tensors in training once a process group exists ("SyncBatchNorm expected input tensor to be
  on GPU"), so each process normalises with its own batch statistics.
- ``sync_bn = None`` / ``False``: plain BatchNorm.

Where plain BatchNorm is kept on CPU, SyncBatchNorm layers the model built directly (a
``norm_layer="SyncBN"`` option) are turned back into BatchNorm for the same reason. What was
done is logged either way. mmengine's ``Runner`` reads the same ``sync_bn`` key when it wraps a
distributed model; where plain BatchNorm is kept the key is set to None in the config handed to
the Runner so that it does not convert after all (where the model was converted, the Runner's
own conversion re-wraps the same parameters and changes nothing).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import torch
from mmengine.logging import print_log
from mmengine.model import revert_sync_batchnorm
from torch import nn

__all__ = ["SYNC_BN_CHOICES", "apply_sync_bn", "count_batchnorms", "sync_bn_mode"]

SYNC_BN_CHOICES = (None, False, True, "torch")


def sync_bn_mode(value: Any) -> str | None:
    """The config's ``sync_bn`` value -> ``"torch"`` (convert) or None (keep BatchNorm)."""
    if value is None or value is False:
        return None
    if value is True or value == "torch":
        return "torch"
    raise ValueError(
        f"sync_bn must be one of {SYNC_BN_CHOICES} ('torch' converts BatchNorm to "
        f"torch.nn.SyncBatchNorm in multi-GPU training), got {value!r}; mmcv's SyncBN ('mmcv') "
        "is not available in this project"
    )


def count_batchnorms(model: nn.Module) -> tuple[int, int]:
    """(plain BatchNorm layers, SyncBatchNorm layers) of ``model``."""
    sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    total = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return total - sync, sync


def apply_sync_bn(
    model: nn.Module,
    cfg: MutableMapping[str, Any],
    *,
    world_size: int,
    distributed: bool | None = None,
    training: bool = True,
    device_type: str | None = None,
) -> nn.Module:
    """Prepare the BatchNorm layers of ``model`` for a run of ``world_size`` processes.

    ``cfg`` is the run's config (its top-level ``sync_bn``, see the module docstring);
    ``distributed`` whether the run starts a process group (a launcher other than ``"none"``;
    default: ``world_size > 1``); ``device_type`` the device the processes train on (default:
    ``"cuda"`` when available, else ``"cpu"``). Test runs (``training=False``) normalise with
    running statistics and are left as they are. Returns the model (a converted copy of each
    BatchNorm, the same parameters); raises ``ValueError`` for an unknown ``sync_bn``. Sets
    ``cfg["sync_bn"]`` to None where plain BatchNorm is kept in a distributed run.
    """
    mode = sync_bn_mode(cfg.get("sync_bn"))
    if not training:
        return model
    if distributed is None:
        distributed = world_size > 1
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    plain, sync = count_batchnorms(model)
    if mode == "torch" and world_size > 1 and device_type != "cpu":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        print_log(
            f"sync_bn='torch': {plain} BatchNorm layers converted to torch.nn.SyncBatchNorm "
            f"(statistics over the {world_size} processes)",
            logger="current",
        )
        return model
    if device_type == "cpu" and sync:
        model = revert_sync_batchnorm(model)
        print_log(
            f"{sync} SyncBatchNorm layers turned back into BatchNorm: torch's SyncBatchNorm does "
            "not train on CPU tensors",
            logger="current",
            level=logging.WARNING,
        )
    if distributed:
        cfg["sync_bn"] = None  # mmengine's Runner would convert on its own (also on CPU)
    if world_size > 1:
        if mode == "torch":
            print_log(
                f"sync_bn='torch' ignored on CPU: {world_size} processes each normalise with "
                "their own batch statistics (torch's SyncBatchNorm needs GPU tensors)",
                logger="current",
                level=logging.WARNING,
            )
        else:
            print_log(
                f"sync_bn off: {world_size} processes each normalise with their own batch "
                "statistics",
                logger="current",
            )
    else:
        print_log(
            f"one process: {plain + sync} BatchNorm layers normalise with the batch's statistics"
            + (" (sync_bn applies to multi-GPU runs)" if mode else ""),
            logger="current",
        )
    return model
