"""Shared fixtures of the engine and tools tests.

``tiny_dataroot``: a synthetic nuScenes dataroot (2 scenes x 4 keyframes, 160x90 images; the
first scene is in ``mini_train``, the second in ``mini_val``) with its info files, made once
per session. ``tiny_cfg(config, **options)``: the tiny config shrunk further through
``--cfg-options``-style keys (1 encoder + 1 decoder layer, 25x25 BEV, 64x160 images, 20 queries,
no workers) so that a training iteration takes a fraction of a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mmengine.config import Config
from tiny import REPO, TINY_CONFIG, TINY_OPTIONS, make_tiny_cfg  # noqa: F401  (tests/engine is on sys.path)


@pytest.fixture(scope="session")
def tiny_dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bevformer.data.infos import create_infos
    from bevformer.data.synthetic import generate

    root = generate(
        tmp_path_factory.mktemp("tiny") / "nuscenes",
        scenes=2,
        samples_per_scene=4,
        image_size=(160, 90),
        progress=False,
    )
    create_infos(str(root), "v1.0-mini", progress=False)
    return root


@pytest.fixture(scope="session")
def iteration_cfg(tiny_cfg):
    """``iteration_cfg(max_iters, config=TINY_CONFIG, **options)`` -> the shrunk config
    trained for ``max_iters`` iterations, without validation, checkpointing every iteration
    (iteration-based loop and logs)."""

    def make(max_iters: int, config: str = TINY_CONFIG, **options: Any) -> Config:
        cfg = tiny_cfg(config, **options)
        cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=10**6)
        cfg.val_cfg = None
        cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, by_epoch=False)
        cfg.log_processor.by_epoch = False
        return cfg

    return make


@pytest.fixture(scope="session")
def tiny_cfg(tiny_dataroot: Path):
    """``tiny_cfg(config=TINY_CONFIG, **options)`` -> the shrunk config on ``tiny_dataroot``."""

    def make(config: str = TINY_CONFIG, **options: Any) -> Config:
        return make_tiny_cfg(tiny_dataroot, config, **options)

    return make
