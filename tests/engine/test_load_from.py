"""``load_from`` / ``--load-from`` and a backbone's ``init_cfg`` set the weights before the first
training step (``load_from`` last, so it wins), log what they loaded, and fail clearly."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from mmengine.hooks import Hook

from bevformer.builder import build_model
from bevformer.checkpoint import StateDictMismatchError, load_model_weights, load_weights
from bevformer.engine.launch import build_runner
from bevformer.engine.runner import seed_everything


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class FirstStep(Hook):
    """Keeps the model's weights as the first training iteration sees them, and the log."""

    priority = "VERY_HIGH"

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.log = Records()

    def before_run(self, runner) -> None:
        runner.logger.addHandler(self.log)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}

    def after_run(self, runner) -> None:
        runner.logger.removeHandler(self.log)


def _perturbed(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's weights plus noise, so that every float tensor differs from any init."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }


def _train(cfg, work_dir: Path, **kwargs) -> FirstStep:
    runner = build_runner(cfg, work_dir=str(work_dir), **kwargs)
    probe = FirstStep()
    runner.register_hook(probe)
    runner.train()
    assert probe.state is not None
    return probe


def test_init_cfg_then_load_from_before_the_first_step(iteration_cfg, tmp_path):
    cfg = iteration_cfg(1)
    seed_everything(7)
    source = build_model(cfg.model)
    backbone = {k: v for k, v in _perturbed(source.img_backbone, 1).items()}
    whole = _perturbed(source, 2)
    # load_from leaves the last backbone stage to init_cfg and overrides the rest of it
    whole = {k: v for k, v in whole.items() if not k.startswith("img_backbone.levels.3.")}
    backbone_file, whole_file = tmp_path / "backbone_1k.pth", tmp_path / "whole.pth"
    torch.save({"model": backbone}, backbone_file)
    torch.save({"state_dict": whole, "meta": {"epoch": 12}}, whole_file)
    cfg.model.img_backbone.init_cfg = dict(type="Pretrained", checkpoint=str(backbone_file))
    cfg.load_from = str(whole_file)

    probe = _train(cfg, tmp_path / "run")
    state = probe.state
    key = "levels.3.blocks.0.dcn.offset.weight"
    assert torch.equal(state[f"img_backbone.{key}"], backbone[key])  # from init_cfg
    for key in ("img_backbone.patch_embed.conv1.weight", "img_neck.fpn_convs.0.conv.weight"):
        assert torch.equal(state[key], whole[key]), key  # load_from wins, neck from load_from
    head = [k for k in whole if k.startswith("pts_bbox_head.") and whole[k].is_floating_point()]
    assert head and all(torch.equal(state[k], whole[k]) for k in head)

    init_lines = [m for m in probe.log.messages if "backbone_1k.pth" in m]
    load_lines = [
        m for m in probe.log.messages if m.startswith(f"loaded weights from {whole_file}")
    ]
    assert len(init_lines) == 1 and "model.img_backbone.init_cfg" in init_lines[0]
    assert len(load_lines) == 1
    assert f"{len(whole)} tensors loaded" in load_lines[0] and "missing keys" in load_lines[0]


def test_flag_wins_over_the_config(iteration_cfg, tmp_path):
    cfg = iteration_cfg(1)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": build_model(cfg.model).state_dict()}, path)
    cfg.load_from = str(tmp_path / "not_this_one.pth")
    runner = build_runner(cfg, work_dir=str(tmp_path / "run"), load_from=str(path))
    assert runner._weights_from == str(path) and runner._weights_origin == "--load-from"
    assert runner._load_from is None  # mmengine's own load_from stays unused


def test_missing_file_names_the_key(iteration_cfg, tmp_path):
    cfg = iteration_cfg(1)
    cfg.load_from = str(tmp_path / "ckpts" / "fcos_r50_coco_2mmdet.pth")
    with pytest.raises(FileNotFoundError) as err:
        build_runner(cfg, work_dir=str(tmp_path / "run"))
    msg = str(err.value)
    assert msg.startswith("load_from (config key)") and "fcos_r50_coco_2mmdet.pth" in msg
    assert "drive.google.com" in msg and "--cfg-options load_from=None" in msg
    with pytest.raises(FileNotFoundError, match=r"^--load-from: checkpoint .*none\.pth"):
        build_runner(cfg, work_dir=str(tmp_path / "run"), load_from=str(tmp_path / "none.pth"))


def test_checkpoint_of_another_architecture(tiny_cfg, tmp_path):
    model = build_model(tiny_cfg().model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(StateDictMismatchError, match="missing keys") as err:
        load_weights(model, str(path), strict=True)
    assert "fc.weight" in str(err.value) and err.value.report.loaded == []
    with pytest.raises(StateDictMismatchError, match=r"no tensor of .*resnet18\.pth .*fits"):
        load_weights(model, str(path), strict=False)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_model_weights(model, str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_strict_load_from_in_a_run(iteration_cfg, tmp_path):
    cfg = iteration_cfg(1)
    partial = {k: v for k, v in build_model(cfg.model).state_dict().items() if "img_neck" not in k}
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": partial}, path)
    cfg.load_from, cfg.load_from_strict = str(path), True
    runner = build_runner(cfg, work_dir=str(tmp_path / "run"))
    with pytest.raises(
        ValueError, match=r"(?s)load_from \(config key\) = .*load_from_strict.*img_neck"
    ):
        runner.train()


def test_resume_ignores_load_from(iteration_cfg, tmp_path):
    work_dir = tmp_path / "run"
    _train(iteration_cfg(1), work_dir)
    resumed_from = torch.load(work_dir / "iter_1.pth", map_location="cpu", weights_only=True)

    cfg = iteration_cfg(1)
    cfg.train_cfg.max_iters = 2
    other = tmp_path / "other.pth"
    torch.save({"state_dict": _perturbed(build_model(cfg.model), 3)}, other)
    cfg.load_from = str(other)
    probe = _train(cfg, work_dir, resume=True)
    key = "img_neck.fpn_convs.0.conv.weight"
    assert torch.equal(probe.state[key], resumed_from["state_dict"][key])
    assert any("ignored: the run resumes from" in m for m in probe.log.messages)


def test_mmdet_detector_names_load_into_the_image_parts(tiny_cfg):
    model = build_model(tiny_cfg().model)
    parts = {
        k: v + 1.0
        for k, v in model.state_dict().items()
        if k.startswith(("img_backbone.", "img_neck.")) and v.is_floating_point()
    }
    mmdet = {k.replace("img_backbone.", "backbone.").replace("img_neck.", "neck."): v
             for k, v in parts.items()}  # fmt: skip
    mmdet["bbox_head.conv_cls.weight"] = torch.zeros(10, 256, 3, 3)  # an FCOS head: unused
    report = load_weights(model, {"state_dict": mmdet, "meta": {}})
    assert "mmdet detector names" in report.format
    assert sorted(report.loaded) == sorted(parts)
    assert report.unexpected == ["bbox_head.conv_cls.weight"]
    for k, v in parts.items():
        assert torch.equal(model.state_dict()[k], v), k
