"""Kill-and-resume gives the same loss curve, and training logs every term to TensorBoard.

Iteration-based: 5 iterations uninterrupted vs. stopped after iteration 3 (checkpoint, mid
pass: the train split has 4 samples, batch 1) and resumed to 5; iteration 5 starts the second
pass, so the dataloader restart and the per-epoch augmentation seed are covered too. Every
loss term of iterations 4 and 5 must be bit-identical. CPU ops run single-threaded so that
reductions have one order.
"""

from __future__ import annotations

import glob
import os
import os.path as osp
from pathlib import Path

import pytest
import torch
from loss_recorder import LossRecorder  # tests/engine is on sys.path

from bevformer.engine.launch import build_runner


def _train(tiny_cfg, work_dir: Path, max_iters: int, resume: bool = False) -> LossRecorder:
    cfg = tiny_cfg()
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=10**6)
    cfg.val_cfg = None
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=3, by_epoch=False)
    cfg.log_processor.by_epoch = False
    runner = build_runner(cfg, work_dir=str(work_dir), resume=resume)
    recorder = LossRecorder()
    runner.register_hook(recorder)
    runner.train()
    return recorder


@pytest.mark.slow
def test_resume_reproduces_the_loss_curve(tiny_cfg, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full = _train(tiny_cfg, tmp_path / "full", max_iters=5)
        _train(tiny_cfg, tmp_path / "cut", max_iters=3)  # "killed" after iteration 3
        resumed = _train(tiny_cfg, tmp_path / "cut", max_iters=5, resume=True)
    finally:
        torch.set_num_threads(threads)

    assert sorted(full.losses) == [1, 2, 3, 4, 5]
    assert sorted(resumed.losses) == [4, 5]  # it did not redo iterations 1-3
    for it in (4, 5):
        assert resumed.losses[it] == full.losses[it], f"iteration {it} differs"
        assert set(full.losses[it]) >= {"loss_cls", "loss_bbox"}
    # the loss moved between iterations (the comparison above is not between constants)
    assert full.losses[4]["loss_bbox"] != full.losses[5]["loss_bbox"]

    # atomic checkpoints: the final names only, no temporary file left behind
    cut = tmp_path / "cut"
    assert (cut / "last_checkpoint").read_text().endswith("iter_5.pth")
    assert sorted(p.name for p in cut.glob("iter_*.pth")) == ["iter_3.pth", "iter_5.pth"]
    assert os.readlink(cut / "latest.pth") == "iter_5.pth"  # mmdetection's name for the newest
    assert not list(cut.glob(".*.tmp"))

    # TensorBoard: an events file with every loss term and the learning rate
    events = glob.glob(str(tmp_path / "full" / "*" / "vis_data" / "**" / "events.out.*"),
                       recursive=True)  # fmt: skip
    assert events, f"no TensorBoard events file under {tmp_path / 'full'}"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(osp.dirname(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "loss_cls", "loss_bbox", "lr"} <= tags, tags
    assert [e.step for e in acc.Scalars("loss_cls")] == [1, 2, 3, 4, 5]


def _train_epochs(tiny_cfg, work_dir: Path, max_epochs: int, resume: bool = False):
    cfg = tiny_cfg(**{"train_cfg.max_epochs": max_epochs, "train_cfg.val_interval": 1})
    runner = build_runner(cfg, work_dir=str(work_dir), resume=resume)
    recorder = LossRecorder()
    runner.register_hook(recorder)
    runner.train()
    return recorder


@pytest.mark.slow
def test_epoch_resume_after_validation(tiny_cfg, tmp_path):
    """Epoch-based: stopped after epoch 1 (checkpoint, then validation with NDS) and resumed
    for epoch 2, the losses of epoch 2 (iterations 5-8) equal the uninterrupted run's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full = _train_epochs(tiny_cfg, tmp_path / "full", max_epochs=2)
        _train_epochs(tiny_cfg, tmp_path / "cut", max_epochs=1)
        resumed = _train_epochs(tiny_cfg, tmp_path / "cut", max_epochs=2, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert sorted(full.losses) == list(range(1, 9))
    assert sorted(resumed.losses) == [5, 6, 7, 8]
    for it in (5, 6, 7, 8):
        assert resumed.losses[it] == full.losses[it], f"iteration {it} differs"
    # validation ran after each epoch and wrote its files under the work dir
    assert (tmp_path / "cut" / "nuscenes_eval" / "metrics_summary_flat.json").is_file()
