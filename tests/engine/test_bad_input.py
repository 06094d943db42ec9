"""Bad input gives a clear error that says what to do; an interrupted save is never latest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny import REPO, TINY_CONFIG  # noqa: I001  (tests/engine is on sys.path)

from bevformer.builder import build_model
from bevformer.checkpoint import load_model_weights
from bevformer.engine.launch import build_runner, load_config
from bevformer.engine.metric import NuScenesMetric
from bevformer.visualization import render_results


def test_missing_config_and_unknown_key(tiny_cfg):
    with pytest.raises(FileNotFoundError, match="does not exist; configs live in"):
        load_config("projects/configs/bevformerv2/no_such_config.py")
    with pytest.raises(KeyError, match=r"'model.bev.encoder.num_layer'.*Keys at that level: \[.*"
                       r"'num_layers'"):  # fmt: skip
        tiny_cfg(**{"model.bev.encoder.num_layer": 1})


def test_checkpoint_of_another_model(tiny_cfg, tmp_path):
    model = build_model(tiny_cfg().model)
    other = build_model(tiny_cfg(**{"model.bev.encoder.num_layers": 2}).model)
    path = tmp_path / "other.pth"
    torch.save({"state_dict": other.state_dict(), "meta": {}}, path)
    with pytest.raises(ValueError, match=r"does not fit this model.*0 missing keys.*unexpected "
                       r"keys \['bev\.encoder\.layers\.1\."):  # fmt: skip
        load_model_weights(model, str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_weights(model, str(tmp_path / "none.pth"))


def test_dataroot_without_infos_names_the_file_and_the_command(tmp_path):
    empty = tmp_path / "empty_root"
    empty.mkdir()
    cfg = load_config(str(REPO / TINY_CONFIG), data_root=str(empty))
    with pytest.raises(FileNotFoundError) as err:
        build_runner(cfg, work_dir=str(tmp_path / "wd"))
    msg = str(err.value)
    assert f"{empty}/nuscenes_infos_temporal_train.json" in msg
    assert f"python tools/create_data.py --dataroot {empty} --version v1.0-mini" in msg
    with pytest.raises(FileNotFoundError, match="nuscenes_infos_temporal_val.json"):
        build_runner(cfg, work_dir=str(tmp_path / "wd"), for_training=False)


def test_train_cli_reports_missing_infos(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/train.py", TINY_CONFIG, "--data-root", str(tmp_path),
         "--work-dir", str(tmp_path / "wd")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "tools/create_data.py --dataroot" in proc.stderr, proc.stderr[-2000:]


def test_results_missing_samples(tiny_dataroot, tmp_path):
    info_file = str(tiny_dataroot / "nuscenes_infos_temporal_val.json")
    metric = NuScenesMetric(
        ann_file=info_file, data_root=str(tiny_dataroot), version="v1.0-mini",
        eval_set="mini_val", classes=["car"], out_dir=str(tmp_path),
    )  # fmt: skip
    tokens = list(metric._infos)
    assert len(tokens) == 4
    with pytest.raises(ValueError, match="submission lacks 1 of the split's 4 samples"):
        metric.compute_metrics([(t, []) for t in tokens[:3]])
    assert not (tmp_path / "results_nusc.json").exists()

    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"meta": {}, "results": {t: [] for t in tokens[:3]}}))
    with pytest.raises(ValueError, match="lacks 1 of the 4 samples to draw"):
        render_results(info_file, str(tiny_dataroot), str(tmp_path / "vis"), str(partial))
    # the first three are all there: drawing only those works
    paths = render_results(
        info_file, str(tiny_dataroot), str(tmp_path / "vis"), str(partial), max_samples=3
    )
    assert len(paths) == 3


def test_interrupted_checkpoint_write_is_never_latest(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg()
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2, val_interval=10**6)
    cfg.val_cfg = None
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, by_epoch=False)
    cfg.log_processor.by_epoch = False
    runner = build_runner(cfg, work_dir=str(tmp_path))

    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the checkpoint of iteration 2 dies half-way
            f.write(b"partial bytes")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        runner.train()
    assert (tmp_path / "last_checkpoint").read_text().endswith("iter_1.pth")
    assert sorted(p.name for p in tmp_path.iterdir() if "pth" in p.name) == [
        "iter_1.pth",
        "latest.pth",
    ]
    assert os.readlink(tmp_path / "latest.pth") == "iter_1.pth"  # never the broken one
    # the surviving checkpoint is complete and loads safely
    monkeypatch.setattr(torch, "save", real_save)
    state = torch.load(tmp_path / "iter_1.pth", weights_only=True)
    assert state["meta"]["iter"] == 1


def test_results_survive_an_unwritable_out_dir(tiny_dataroot, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    info_file = str(tiny_dataroot / "nuscenes_infos_temporal_val.json")
    metric = NuScenesMetric(
        ann_file=info_file, data_root=str(tiny_dataroot), version="v1.0-mini",
        eval_set="mini_val", classes=["car"], out_dir=str(blocker / "out"), run_eval=False,
    )  # fmt: skip
    tokens = list(metric._infos)
    entry = {"sample_token": tokens[0], "detection_name": "car", "detection_score": 0.5}
    metric.compute_metrics([(t, [entry] if t == tokens[0] else []) for t in tokens])
    with open(os.path.join(metric.out_dir, "results_nusc.json")) as f:
        written = json.load(f)
    assert metric.out_dir != str(blocker / "out")
    assert written["results"][tokens[0]] == [entry]  # nothing of the loop was lost
