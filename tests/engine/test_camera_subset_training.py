"""The model's ``camera_names`` reach every dataset of a run: a model for five cameras trains on
six-camera infos (the unlisted camera is dropped by name)."""

from __future__ import annotations

import pytest
import torch
from mmengine.hooks import Hook

from bevformer.data.infos import CAMERA_NAMES
from bevformer.engine.launch import build_runner

DATASET_NODES = ("train_dataloader", "val_dataloader", "test_dataloader")
FIVE = [c for c in CAMERA_NAMES if c != "CAM_BACK"]


def test_model_camera_names_reach_every_dataset_node(tiny_cfg):
    cfg = tiny_cfg()
    assert list(cfg.model.bev.encoder.camera_names) == list(CAMERA_NAMES)
    assert "num_cams" not in cfg.model.bev.encoder
    for loader in DATASET_NODES:
        assert list(cfg[loader].dataset.camera_names) == list(CAMERA_NAMES)
    cfg = tiny_cfg(**{"model.bev.encoder.camera_names": FIVE})
    for loader in DATASET_NODES:
        assert list(cfg[loader].dataset.camera_names) == FIVE
    # a dataset node that names other cameras is overruled by the model, with a warning
    with pytest.warns(UserWarning, match="replaced by the model's model.bev.encoder.camera_names"):
        cfg = tiny_cfg(**{"+train_dataloader.dataset.camera_names": ["CAM_FRONT"]})
    assert list(cfg.train_dataloader.dataset.camera_names) == list(CAMERA_NAMES)


class _FirstBatch(Hook):
    def __init__(self) -> None:
        self.batch: dict | None = None
        self.embeds: torch.Tensor | None = None

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.batch = data_batch
        self.embeds = runner.model.bev.encoder.cams_embeds.detach().clone()


def test_a_five_camera_model_trains_a_step_on_six_camera_infos(tiny_cfg, tiny_dataroot, tmp_path):
    info = (tiny_dataroot / "nuscenes_infos_temporal_train.json").read_text()
    assert all(f'"{c}"' in info for c in CAMERA_NAMES)  # the infos have all six cameras
    cfg = tiny_cfg(**{"model.bev.encoder.camera_names": FIVE})
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=1, val_interval=10**6)
    cfg.val_cfg = None
    cfg.log_processor.by_epoch = False
    runner = build_runner(cfg, work_dir=str(tmp_path))
    probe = _FirstBatch()
    runner.register_hook(probe)
    runner.train()

    model = runner.model
    assert model.camera_names == tuple(FIVE) and model.bev.encoder.cams_embeds.shape[0] == 5
    assert probe.batch is not None and probe.batch["img"].shape[2] == 5
    assert [m.camera_names for m in probe.batch["meta"]] == [tuple(FIVE)] * len(probe.batch["meta"])
    assert all("CAM_BACK/" not in p for m in probe.batch["meta"] for p in m.image_paths[-1])
    # the step updated the five camera embeddings
    assert not torch.equal(model.bev.encoder.cams_embeds.detach(), probe.embeds)
