"""Checkpoints of the earlier state-dict layout (layout 1: the detector's ``encoder``,
``fusion``, ``mono_head`` and ``hybrid_queries`` at its top level, before the BEV stage became
``bev`` and the perspective stage ``perspective``) load and resume unchanged.

``tests/models/data/layout1_t2-hybrid_keys.json`` holds the state-dict keys, in order, that the
layout-1 detector had for the shrunk t2-hybrid config (every kind of part: backbone, neck,
encoder, fusion, head, perspective head, hybrid queries). The tests write a layout-1 file from
a checkpoint of today's model by those keys and then load, strictly, and resume from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from loss_recorder import LossRecorder  # tests/engine is on sys.path

from backbones.checkpoint import read_checkpoint
from bevformer.builder import build_model
from bevformer.checkpoint import load_weights, migrate_layout
from bevformer.engine.launch import build_runner

LAYOUT1 = Path(__file__).resolve().parents[1] / "models" / "data" / "layout1_t2-hybrid_keys.json"
CONFIG = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2-hybrid_12ep.py"


def _layout1_keys() -> list[str]:
    data = json.loads(LAYOUT1.read_text())
    assert data["layout"] == 1
    return data["keys"]


def test_layout1_keys_become_todays_keys_in_todays_order(tiny_cfg):
    model = build_model(tiny_cfg(CONFIG).model)
    old = _layout1_keys()
    assert "encoder.bev_embedding.weight" in old and "fusion.proj.weight" in old
    migrated, note = migrate_layout(dict.fromkeys(old), model)
    assert list(migrated) == list(model.state_dict())
    for old, new in [
        ("encoder", "bev.encoder"),
        ("fusion", "bev.fusion"),
        ("mono_head", "perspective.mono_head"),
        ("hybrid_queries", "perspective.hybrid"),
    ]:
        assert f"{old}.* -> {new}.*" in note
    # the parameters alone too: an optimizer state follows them by position
    params = {name for name, _ in model.named_parameters()}
    assert [k for k in migrated if k in params] == [n for n, _ in model.named_parameters()]
    # today's keys are left alone
    same, none = migrate_layout(model.state_dict(), model)
    assert none is None and list(same) == list(model.state_dict())


@pytest.fixture(scope="module")
def checkpoints(iteration_cfg, tmp_path_factory) -> tuple[Path, Path]:
    """(today's checkpoint after 2 iterations of the shrunk t2-hybrid config, the same
    checkpoint written in layout 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        work_dir = tmp_path_factory.mktemp("layout")
        runner = build_runner(iteration_cfg(2, CONFIG), work_dir=str(work_dir))
        runner.train()
    finally:
        torch.set_num_threads(threads)
    today = work_dir / "iter_2.pth"
    checkpoint = read_checkpoint(today)
    state = checkpoint["state_dict"]
    old = _layout1_keys()
    assert len(old) == len(state)
    # by position: the layout-1 keys are today's keys in the same order (test above)
    checkpoint["state_dict"] = {o: state[n] for o, n in zip(old, state, strict=True)}
    layout1 = work_dir / "layout1.pth"
    torch.save(checkpoint, layout1)
    return today, layout1


def test_layout1_checkpoint_loads_strictly(tiny_cfg, checkpoints):
    today, layout1 = checkpoints
    model = build_model(tiny_cfg(CONFIG).model)
    report = load_weights(model, layout1, strict=True)
    assert report.complete and "earlier checkpoint layout" in report.format
    expected = read_checkpoint(today)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_resuming_a_layout1_checkpoint_continues_the_same_run(iteration_cfg, checkpoints, tmp_path):
    today, layout1 = checkpoints
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, path in (("today", today), ("layout1", layout1)):
            runner = build_runner(
                iteration_cfg(3, CONFIG), work_dir=str(tmp_path / name), resume=str(path)
            )
            recorder = LossRecorder()
            runner.register_hook(recorder)
            runner.train()
            losses.append(recorder.losses)
    finally:
        torch.set_num_threads(threads)
    # iteration 3 after the resume: bit-identical, so every weight and every AdamW moment
    # landed on its own tensor
    assert list(losses[0]) == list(losses[1]) == [3]
    assert losses[0][3] == losses[1][3]
