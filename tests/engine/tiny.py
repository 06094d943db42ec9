"""The shrunk tiny config of the engine tests (also used by ``conftest.py``'s fixtures).

``make_tiny_cfg(dataroot, config, **options)``: the tiny config shrunk further through
``--cfg-options``-style keys (1 encoder + 1 decoder layer, 25x25 BEV, 64x160 images, 20
queries, no workers) so that a training iteration takes a fraction of a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmengine.config import Config

from bevformer.engine.launch import load_config

TINY_CONFIG = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t1_12ep.py"
REPO = Path(__file__).resolve().parents[2]

TINY_OPTIONS: dict[str, Any] = {
    "model.img_backbone.depths": (1, 1, 1, 1),
    "model.bev.encoder.num_layers": 1,
    "model.bev.encoder.grid.bev_h": 25,
    "model.bev.encoder.grid.bev_w": 25,
    "model.pts_bbox_head.num_query": 20,
    "model.pts_bbox_head.num_decoder_layers": 1,
    "model.post_processor.max_num": 20,
    "train_dataloader.batch_size": 1,
    "train_dataloader.num_workers": 0,
    # index of CropResizeFlipImage in the tiny train pipeline (load, BDA, crop/resize/flip, ...)
    "train_dataloader.dataset.transforms.2.final_size": (64, 160),
    "val_dataloader.batch_size": 1,
    "val_dataloader.num_workers": 0,
    "val_dataloader.dataset.transforms.1.final_size": (64, 160),
    "test_dataloader.batch_size": 1,
    "test_dataloader.num_workers": 0,
    "test_dataloader.dataset.transforms.1.final_size": (64, 160),
    "base_batch_size": 1,
    "default_hooks.logger.interval": 1,
}


def make_tiny_cfg(dataroot: Path, config: str = TINY_CONFIG, **options: Any) -> Config:
    """``config`` on ``dataroot`` with :data:`TINY_OPTIONS` and ``options`` applied."""
    return load_config(str(REPO / config), {**TINY_OPTIONS, **options}, data_root=str(dataroot))
