"""Streaming evaluation: whole scenes per rank, in order, with the temporal state carried."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from mmengine.hooks import Hook

from bevformer.data.collate import collate
from bevformer.engine.launch import build_runner
from bevformer.engine.loops import SceneSequentialSampler, StreamingTestLoop, scene_blocks

STREAM_CONFIG = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2-stream_12ep.py"


def _fake_dataset(scenes: list[str]) -> SimpleNamespace:
    return SimpleNamespace(infos=[{"scene_token": s} for s in scenes], indices=range(len(scenes)))


def test_scene_blocks_and_sampler_split():
    scenes = ["a", "a", "a", "b", "c", "c"]
    assert scene_blocks(scenes) == [[0, 1, 2], [3], [4, 5]]
    ds = _fake_dataset(scenes)
    # largest scene first to the emptiest rank: a -> 0, c -> 1, b -> 1
    r0 = SceneSequentialSampler(ds, rank=0, world_size=2)
    r1 = SceneSequentialSampler(ds, rank=1, world_size=2)
    assert list(r0) == [0, 1, 2] and list(r1) == [3, 4, 5]
    assert len(r0) == len(r1) == 3
    # unequal shares are padded with the rank's last sample
    ds = _fake_dataset(["a", "a", "a", "b"])
    assert list(SceneSequentialSampler(ds, rank=1, world_size=2)) == [3, 3, 3]
    # one process: every sample once, in dataset order
    assert list(SceneSequentialSampler(_fake_dataset(scenes), rank=0, world_size=1)) == [
        0, 1, 2, 3, 4, 5
    ]  # fmt: skip


class _Outputs(Hook):
    def __init__(self) -> None:
        self.preds: list[dict] = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.preds.extend(outputs)


def test_streaming_test_loop_carries_the_state(tiny_cfg, tmp_path):
    # frames=(0,): the carried state is the only source of the previous BEV
    cfg = tiny_cfg(
        STREAM_CONFIG,
        **{
            "model.bev.frames": (0,),
            "test_dataloader.dataset.frames": (0,),
            "test_dataloader.batch_size": 2,  # the loop forces 1
        },
    )
    runner = build_runner(
        cfg, work_dir=str(tmp_path), for_training=False, metric_overrides=dict(run_eval=False)
    )
    recorder = _Outputs()
    runner.register_hook(recorder)
    runner.test()
    assert isinstance(runner.test_loop, StreamingTestLoop)
    assert runner.test_dataloader.batch_size == 1
    assert (tmp_path / "nuscenes_eval" / "results_nusc.json").is_file()

    dataset = runner.test_dataloader.dataset
    model = runner.model.eval()
    tokens = [dataset.infos[i]["token"] for i in dataset.indices]
    assert [p["token"] for p in recorder.preds] == tokens  # one scene, in time order
    state = None
    with torch.no_grad():
        for i, pred in enumerate(recorder.preds):
            batch = collate([dataset[i]])
            carried, state = model(**batch, mode="predict", prev_state=state, return_state=True)
            alone = model(**batch, mode="predict")
            torch.testing.assert_close(pred["scores"], carried[0]["scores"], rtol=0, atol=0)
            torch.testing.assert_close(pred["boxes"], carried[0]["boxes"], rtol=0, atol=0)
            same_as_alone = torch.equal(pred["scores"], alone[0]["scores"])
            # the first frame has no history; later ones see the previous frame's BEV
            assert same_as_alone == (i == 0), f"sample {i}"
