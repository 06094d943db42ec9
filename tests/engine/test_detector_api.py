"""``bevformer.apis.Detector``: keyframes one at a time give the boxes of the batch path, with
one backbone pass per keyframe, for a fusion model and a streaming model; a new scene starts
over; bad keyframes are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bevformer.apis import Detector
from bevformer.builder import build_dataset, build_model
from bevformer.data.collate import collate

T2 = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2_12ep.py"
T2_STREAM = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2-stream_12ep.py"


def _checkpoint(cfg, path: Path) -> Path:
    torch.manual_seed(0)
    torch.save({"state_dict": build_model(cfg.model).state_dict()}, path)
    return path


def _count_backbone_calls(model) -> list[int]:
    calls = [0]
    model.img_backbone.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def _batch_path(detector: Detector, cfg, streaming: bool) -> tuple[list[dict], int]:
    """Every test item through ``forward(mode="predict")`` (with the state carried from item
    to item when streaming, as the streaming test loop does) and the backbone passes."""
    dataset = build_dataset(cfg.test_dataloader.dataset)
    model = detector.model
    calls = _count_backbone_calls(model)
    results, state = [], None
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = collate([dataset[i]])
            if streaming:
                out, state = model(**batch, mode="predict", prev_state=state, return_state=True)
            else:
                out = model(**batch, mode="predict")
            results.append(out[0])
    return results, calls[0]


@pytest.mark.parametrize("config", [T2, T2_STREAM], ids=["fusion", "streaming"])
def test_keyframes_one_at_a_time_give_the_batch_boxes(tiny_cfg, tmp_path, config):
    cfg = tiny_cfg(config)
    detector = Detector.from_config(cfg, _checkpoint(cfg, tmp_path / "model.pth"))
    expected, batch_passes = _batch_path(detector, cfg, streaming="stream" in config)
    infos = build_dataset(cfg.test_dataloader.dataset).infos
    calls = _count_backbone_calls(detector.model)
    got = [detector(info) for info in infos]
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected, strict=True):
        assert a["token"] == b["token"]
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), (a["token"], key)
    assert calls[0] == 4  # one backbone pass per keyframe
    assert batch_passes == 7  # the batch path runs it again for each valid past frame


def test_a_new_scene_starts_without_history(tiny_cfg, tiny_dataroot, tmp_path):
    cfg = tiny_cfg(T2)
    path = _checkpoint(cfg, tmp_path / "model.pth")
    detector = Detector.from_config(cfg, path)
    train = build_dataset({**cfg.train_dataloader.dataset, "test_mode": True}).infos
    val = build_dataset(cfg.test_dataloader.dataset).infos
    assert train[0]["scene_token"] != val[1]["scene_token"]
    detector(val[0])
    detector(train[0])  # another scene: the history of val[0] is dropped
    after_switch = detector(val[1])
    fresh = Detector.from_config(cfg, path)(val[1])  # val[1] as the first keyframe it sees
    assert torch.equal(after_switch["scores"], fresh["scores"])


def test_bad_keyframes_are_refused(tiny_cfg, tmp_path):
    cfg = tiny_cfg(T2)
    detector = Detector.from_config(cfg, _checkpoint(cfg, tmp_path / "model.pth"))
    infos = build_dataset(cfg.test_dataloader.dataset).infos
    with pytest.raises(KeyError, match=r"lacks \['cams'\]"):
        detector({k: v for k, v in infos[0].items() if k != "cams"})
    detector(infos[1])
    with pytest.raises(ValueError, match="is not later than the previous keyframe"):
        detector(infos[0])
    cams = {k: v for k, v in infos[2]["cams"].items() if k != "CAM_BACK"}
    other_cameras = dict(infos[2], cams=cams)
    with pytest.raises(ValueError, match="CAM_BACK"):
        detector(other_cameras)
