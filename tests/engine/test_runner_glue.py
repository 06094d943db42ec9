"""Runner glue: config overrides, schedule scaling, checkpoint loading, result merging."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging.history_buffer import HistoryBuffer

from bevformer.checkpoint import load_model_weights
from bevformer.engine.launch import build_runner, load_config, scale_schedule
from bevformer.engine.metric import merge_results
from bevformer.engine.runner import (
    CheckpointStateHook,
    iteration_seed,
    register_checkpoint_globals,
    seed_everything,
)


def _cfg() -> Config:
    return Config(
        dict(
            base_batch_size=8,
            train_dataloader=dict(batch_size=1),
            optim_wrapper=dict(optimizer=dict(type="AdamW", lr=4e-4)),
            param_scheduler=[
                dict(type="LinearLR", by_epoch=False, begin=0, end=2000),
                dict(type="MultiStepLR", by_epoch=True, milestones=[20]),
            ],
            model=dict(type="X", embed_dims=256),
        )
    )


def test_scale_schedule_keeps_samples_per_phase():
    from mmengine.logging import MMLogger

    cfg = _cfg()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        global_batch, factor = scale_schedule(cfg, world_size=2)  # 2 x 1 = 2 of base 8
    finally:
        logger.removeHandler(handler)
    logged = "\n".join(records)
    assert (
        "lr scaling: base batch 8, global batch 2 (2 process(es) x 1), factor 0.25: lr " in logged
    )
    assert "0.0004 -> 0.0001" in logged
    assert global_batch == 2 and factor == pytest.approx(0.25)
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1e-4)
    # 2000 iterations of 8 samples = 8000 iterations of 2 samples
    assert cfg.param_scheduler[0].end == 8000
    assert cfg.param_scheduler[1].milestones == [20]  # epochs are unchanged


def test_scale_schedule_identity_at_base_batch():
    cfg = _cfg()
    cfg.train_dataloader.batch_size = 4
    _, factor = scale_schedule(cfg, world_size=2)
    assert factor == 1.0
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(4e-4)
    assert cfg.param_scheduler[0].end == 2000


def test_cfg_options_must_name_existing_keys(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("model = dict(type='X', embed_dims=256)\nlr = 1.0\n")
    cfg = load_config(str(path), {"model.embed_dims": 128})
    assert cfg.model.embed_dims == 128
    with pytest.raises(KeyError, match="model.embed_dim"):
        load_config(str(path), {"model.embed_dim": 128})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(str(tmp_path / "missing.py"))


def test_merge_results_drops_sampler_padding_repeats():
    parts = [("a", [1]), ("b", [2]), ("a", [1]), ("c", [])]
    merged = merge_results(parts)
    assert list(merged) == ["a", "b", "c"]
    assert merged["c"] == []


def test_checkpoint_objects_load_with_weights_only(tmp_path):
    register_checkpoint_globals()
    buf = HistoryBuffer()
    buf.update(1.5)
    buf.update(2.5)
    ckpt = {"message_hub": {"log_scalars": {"train/loss": buf}}, "arr": np.arange(3.0)}
    hook = CheckpointStateHook()
    hook.before_save_checkpoint(None, ckpt)
    path = tmp_path / "c.pth"
    torch.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)
    hook.after_load_checkpoint(None, loaded)
    restored = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(restored, HistoryBuffer)
    assert restored.current() == 2.5 and restored.mean() == 2.0
    np.testing.assert_array_equal(loaded["arr"], np.arange(3.0))


def test_iteration_seed_is_a_function_of_seed_rank_iteration():
    a = iteration_seed(0, 0, 5)
    assert a == iteration_seed(0, 0, 5)
    assert len({a, iteration_seed(1, 0, 5), iteration_seed(0, 1, 5), iteration_seed(0, 0, 6)}) == 4
    assert 0 <= a < 2**63
    seed_everything(a)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.rand(7)  # whatever ran in between
    seed_everything(a)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_dataset_augmentation_rng_follows_seed_epoch_index(tmp_path):
    from bevformer.data.dataset import NuScenesTemporalDataset

    ds = NuScenesTemporalDataset.__new__(NuScenesTemporalDataset)  # only the RNG part
    ds.set_seed(3)
    ds.set_epoch(2)
    expected = np.random.default_rng([3, 2, 7]).random()
    assert ds.aug_rng(7).random() == expected
    ds.set_epoch(3)
    assert ds.aug_rng(7).random() != expected
    assert ds._aug_state().is_shared()  # persistent workers see set_epoch


def test_load_model_weights_lists_mismatches(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    path = tmp_path / "other.pth"
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(ValueError, match=r"unexpected keys \['2.bias', '2.weight'\]") as err:
        load_model_weights(model, str(path))
    assert "0.weight: model (4, 3) vs checkpoint (5, 3)" in str(err.value)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": model.state_dict()}, good)
    load_model_weights(model, str(good))


def built_optimizer_and_log(runner) -> tuple[object, str]:
    """``runner.build_optim_wrapper`` -> (the wrapper, what the runner's logger printed)."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    runner.logger.addHandler(handler)
    try:
        wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    finally:
        runner.logger.removeHandler(handler)
    return wrapper, "\n".join(records)


def test_optimizer_is_logged_as_a_summary_not_per_parameter(tiny_cfg, tmp_path):
    runner = build_runner(tiny_cfg(), work_dir=str(tmp_path))
    wrapper, text = built_optimizer_and_log(runner)
    assert "paramwise_options --" not in text
    n_groups = len(wrapper.optimizer.param_groups)
    assert f"{n_groups} parameter groups" in text and "per-parameter option lines not shown" in text
    # the base schedule gives the backbone half the lr: both multipliers are listed
    assert "lr x1, weight decay" in text and "lr x0.5, weight decay" in text


def test_frozen_parts_are_logged_apart_from_the_trained_groups(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"model.frozen": ["img_backbone"]})
    runner = build_runner(cfg, work_dir=str(tmp_path))
    _, text = built_optimizer_and_log(runner)
    backbone = list(runner.model.img_backbone.parameters())
    assert backbone and not any(p.requires_grad for p in backbone)
    assert f"frozen (requires_grad off, not in the optimizer): {len(backbone)} tensors" in text
    # the backbone was the only part at half the lr: no trained group is left at x0.5
    assert "lr x1, weight decay" in text and "lr x0.5" not in text
