"""``bevformer/evaluation/temporal.py``: the train/eval gap of the current BEV is the encoder's
dropout and nothing else; the gradient share of the past BEV is 0 for a fusion that ignores it;
boxes are picked by speed at their own cells; the velocity probe finds motion that is in the
BEVs and only with the past frame; the best-matching past cell is found where a shifted copy
put it, and compared with the cell a box really came from. Model: the tiny t2 config with a
10 x 10 grid on the nuScenes rig at 64 x 160 pixels (random weights)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from torch import nn

from bevformer.builder import build_model
from bevformer.evaluation.temporal import (
    ProbeSample,
    best_past_offsets,
    bev_mode_gap,
    eval_bevs,
    past_cell_match,
    past_gradient_share,
    probe_samples,
    velocity_probe,
)

T1 = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t1_12ep.py"
T2 = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2_12ep.py"
BEV = 10  # 10.24 m cells over +-51.2 m


def _model(dropout: float, config: str = T2) -> nn.Module:
    cfg = Config.fromfile(config)
    cfg.model.bev.encoder.grid.update(bev_h=BEV, bev_w=BEV)
    cfg.model.bev.encoder.dropout = dropout
    cfg.model.pts_bbox_head.num_query = 20
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


def _batch(rig) -> dict:
    l2i = torch.as_tensor(rig.lidar2img(), dtype=torch.float32)  # [N, 4, 4]
    gen = torch.Generator().manual_seed(1)
    # x, y, z, w, l, h, yaw, vx, vy: two moving (5 and 3 m/s), one static, one moving outside
    boxes = torch.tensor(
        [
            [10.0, 3.0, -1.0, 2.0, 4.5, 1.6, 0.0, 5.0, 0.0],
            [-20.0, -8.0, -1.0, 2.0, 4.5, 1.6, 0.0, 0.0, -3.0],
            [15.0, -15.0, -1.0, 2.0, 4.5, 1.6, 0.0, 0.0, 0.1],
            [80.0, 0.0, -1.0, 2.0, 4.5, 1.6, 0.0, 9.0, 0.0],
        ]
    )
    return {
        "img": torch.randn(2, 2, 6, 3, 96, 160, generator=gen),
        "lidar2img": l2i.expand(2, 2, -1, -1, -1).clone(),
        "frame_valid": torch.ones(2, 2, dtype=torch.bool),
        "gt_boxes": [boxes, boxes[:2]],
    }


def test_the_mode_gap_is_the_encoder_dropout(rig_tenth):
    batch = _batch(rig_tenth)
    without = bev_mode_gap(_model(0.0), batch)
    assert float(without["mode_all"].abs().max()) == 0.0  # no dropout: train mode = eval mode
    assert float(without["time_all"].mean()) > 0.01  # the two frames' images differ
    model = _model(0.3)
    with_dropout = bev_mode_gap(model, batch)
    assert float(with_dropout["mode_all"].mean()) > 0.05
    assert not model.training  # the training flag is restored
    # the cells of moving boxes inside the grid: 2 in the first sample, 2 in the second
    assert with_dropout["mode_moving"].numel() == 4
    assert with_dropout["time_static"].numel() == 1
    assert torch.equal(with_dropout["time_all"], without["time_all"])  # eval mode both times


class CurrentOnly(nn.Module):
    """A fusion that returns the current BEV and ignores the past one."""

    def forward(self, bevs):
        return bevs[-1].flatten(2).transpose(1, 2)


def test_gradient_share_of_a_fusion_that_ignores_the_past_is_zero(rig_tenth):
    model, batch = _model(0.0), _batch(rig_tenth)
    shares = past_gradient_share(model, batch, top_k=5)
    assert set(shares) == {"velocity", "class"}
    assert all(0.05 < share < 0.95 for share in shares.values()), shares
    model.bev.fusion = CurrentOnly()
    assert past_gradient_share(model, batch, top_k=5) == {"velocity": 0.0, "class": 0.0}


def test_bevs_computed_once_give_what_each_function_computes_itself(rig_tenth):
    model, batch = _model(0.3), _batch(rig_tenth)
    past, current = eval_bevs(model, batch)
    assert past.shape == current.shape == (2, BEV * BEV, 64)  # [B, bev_h * bev_w, C]
    assert not past.requires_grad and not model.training
    shares = past_gradient_share(model, batch, top_k=5)
    assert past_gradient_share(model, batch, top_k=5, bevs=(past, current)) == shares
    torch.manual_seed(3)  # the same dropout draw for the train-mode pass of both calls
    gap = bev_mode_gap(model, batch)
    torch.manual_seed(3)
    given = bev_mode_gap(model, batch, bevs=(past, current))
    assert set(given) == set(gap)
    assert all(torch.equal(given[k], gap[k]) for k in gap)
    assert float(gap["mode_all"].mean()) > 0.05  # dropout drawn: the check sees it


def test_single_frame_models_and_missing_past_frames_are_refused(rig_tenth):
    batch = _batch(rig_tenth)
    with pytest.raises(ValueError, match="needs a two-frame fusion config"):
        bev_mode_gap(_model(0.0, T1), batch)
    batch["frame_valid"][1, 0] = False
    with pytest.raises(ValueError, match="needs its past frame"):
        past_gradient_share(_model(0.0), batch)


def test_probe_samples_hold_the_eval_mode_bevs_and_the_boxes_in_range(rig_tenth):
    model, batch = _model(0.3), _batch(rig_tenth)
    batch["frame_valid"][1, 0] = False  # the second sample starts its scene: left out
    samples = probe_samples(model, [batch])
    assert len(samples) == 1 and not model.training
    (sample,) = samples
    grid = model.grid
    assert sample.past.shape == sample.current.shape == (64, BEV, BEV)
    current = grid.tokens_to_map(model.frame_bev(batch["img"][:1], batch["lidar2img"][:1], 1))
    assert torch.equal(sample.current, current[0])  # eval mode: no dropout
    # 3 of 4 boxes in range; (10, 3) lies in row floor((3 + 51.2) / 10.24) = 5, column
    # floor((10 + 51.2) / 10.24) = 5
    assert sample.tokens.tolist()[0] == 5 * BEV + 5 and len(sample.tokens) == 3
    assert torch.equal(sample.velocity, batch["gt_boxes"][0][:3, 7:9])


def _moving_blobs(n: int, seed: int) -> list[ProbeSample]:
    """Maps of 8 x 8 cells, 4 channels: one box marked in channel 0 at its cell of each frame,
    moved by (dx, dy) in {-1, 0, 1} cells between them, 4 m/s per cell: the current map alone
    does not tell its velocity."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        past, current = torch.zeros(4, 8, 8), torch.zeros(4, 8, 8)
        row, col = (int(v) for v in torch.randint(1, 7, (2,), generator=gen))
        dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
        current[0, row, col] = 1.0
        past[0, row - dy, col - dx] = 1.0
        token = torch.tensor([row * 8 + col])
        samples.append(ProbeSample(past, current, token, torch.tensor([[4.0 * dx, 4.0 * dy]])))
    return samples


def test_the_velocity_probe_reads_motion_only_with_the_past_frame():
    train, held_out = _moving_blobs(160, seed=0), _moving_blobs(40, seed=1)
    torch.set_num_threads(1)
    with_past = velocity_probe(train, held_out, use_past=True, epochs=40, lr=3e-3)
    without = velocity_probe(train, held_out, use_past=False, epochs=40, lr=3e-3)
    speed = torch.cat([s.velocity for s in held_out]).norm(dim=-1)
    assert with_past["zero"] == pytest.approx(float(speed.mean()))
    assert with_past["zero_moving"] == pytest.approx(float(speed[speed > 1].mean()))
    # The current map alone does not tell the motion: the probe is near velocity 0.
    assert without["held_out"] > 0.8 * without["zero"]
    assert with_past["held_out"] < 0.3 * with_past["zero"], (with_past, without)
    with pytest.raises(ValueError, match="needs training and held-out samples"):
        velocity_probe(train, [], use_past=True)


def test_the_best_past_cell_is_where_a_shifted_copy_put_the_feature():
    gen = torch.Generator().manual_seed(0)
    current = torch.randn(4, 9, 9, generator=gen)
    past = torch.roll(current, shifts=(1, -2), dims=(1, 2))  # current[:, r, c] -> past[r+1, c-2]
    rows, cols = torch.tensor([4, 2, 8]), torch.tensor([4, 6, 4])
    best = best_past_offsets(past, current, rows, cols, radius=3)
    assert best[:2].tolist() == [[1, -2], [1, -2]]
    # (8, 4) + (1, -2) leaves the map (the roll wrapped it to row 0): not a candidate
    assert best[2].tolist() != [1, -2]
    assert best_past_offsets(current, current, rows, cols).tolist() == [[0, 0]] * 3
    assert best_past_offsets(past, current, rows[:0], cols[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match="maps of one shape"):
        best_past_offsets(past[:, :8], current, rows, cols)
    with pytest.raises(ValueError, match="radius must be at least 1"):
        best_past_offsets(past, current, rows, cols, radius=0)


def test_past_cell_match_sets_the_best_past_cell_beside_the_true_one(rig_tenth):
    model, batch = _model(0.0), _batch(rig_tenth)
    grid = model.grid
    # 2.048 s between the keyframes: the 5 m/s box at (10, 3) came from (-0.24, 3), one
    # 10.24 m cell to the left (column 5 -> 4, row 5); the 3 m/s box stays in its row-4 cell
    # (not counted); the static box at (15, -15) is in row 3, column 6.
    batch["meta"] = [SimpleNamespace(frame_timestamps=(0, 2_048_000))] * 2
    gen = torch.Generator().manual_seed(2)
    current = torch.randn(2, 64, BEV, BEV, generator=gen)
    past = torch.roll(current, shifts=-1, dims=3)  # current[..., c] -> past[..., c - 1]
    bevs = (grid.map_to_tokens(past), grid.map_to_tokens(current))
    found = past_cell_match(model, batch, radius=3, bevs=bevs)
    assert found["moving"]["true"].tolist() == [[0, -1], [0, -1]]  # box 0 of both samples
    assert found["moving"]["best"].tolist() == [[0, -1], [0, -1]]
    assert found["static"]["true"].tolist() == [[0, 0]]
    assert found["static"]["best"].tolist() == [[0, -1]]  # the whole map moved
    del batch["meta"]
    with pytest.raises(ValueError, match="needs its 'meta'"):
        past_cell_match(model, batch, bevs=bevs)
