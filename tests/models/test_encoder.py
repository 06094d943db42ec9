"""Tests of the BEV encoder, its attention blocks, BEV augmentation and temporal fusion.

Legend: B batch, T frames, N cameras (6, the real nuScenes rig), L levels, Q = H*W BEV cells,
D z-anchors, C channels. Shapes are tiny (BEV 10 x 10, C 16, images 36 x 64) and fp64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevformer.models.attention import BEVSelfAttention, SpatialCrossAttention
from bevformer.models.bda import resample_bev
from bevformer.models.encoder import (
    BEVEncoder,
    project_reference_points,
)
from bevformer.models.grid_mask import GridMask
from bevformer.models.positional import LearnedPositionalEncoding
from bevformer.models.temporal import (
    ResNetFusion,
    TemporalState,
    align_prev_bev,
    fill_missing_frames,
)
from bevformer.structures.frames import invert
from bevformer.structures.grid import BEVGrid

PC = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def tiny_encoder(levels: int = 2, layers: int = 2, bev: int = 10) -> BEVEncoder:
    torch.manual_seed(0)
    enc = BEVEncoder(
        embed_dims=16,
        num_layers=layers,
        grid=BEVGrid(bev, bev, PC),
        num_levels=levels,
        num_cams=6,
        num_heads=2,
        ffn_dims=32,
    )
    # non-trivial attention weights so every sampling point matters
    for layer in enc.layers:
        for lin in (
            layer.self_attn.attention_weights,
            layer.cross_attn.deformable_attention.attention_weights,
        ):
            torch.nn.init.normal_(lin.weight, std=0.1)
    return enc.double().eval()


def feats_for(batch: int, hw: tuple[int, int], levels: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, W = hw
    return [
        torch.randn(batch, 6, 16, math.ceil(H / 2**i), math.ceil(W / 2**i), generator=g).double()
        for i in range(levels)
    ]


# ------------------------------------------------------------------ geometry of the queries
def test_pillar_anchors_match_official_heights():
    ref = BEVGrid(2, 4, PC).pillar_points(4, torch.float64)  # [D, Q, 3]
    assert ref.shape == (4, 8, 3)
    # official: z = -5 + 8 * linspace(0.5, 7.5, 4) / 8
    heights = torch.tensor([-4.5, -2.5 + 1 / 3, 0.5 - 1 / 3, 2.5], dtype=torch.float64)
    assert torch.allclose(ref[:, 0, 2], heights)
    # cell (row 0, col 0) centre; row-major: query 1 is (row 0, col 1), query 4 is (row 1, col 0)
    assert ref[0, 0, :2].tolist() == pytest.approx([-51.2 + 12.8, -51.2 + 25.6])
    assert ref[0, 1, :2].tolist() == pytest.approx([-51.2 + 38.4, -51.2 + 25.6])
    assert ref[0, 4, :2].tolist() == pytest.approx([-51.2 + 12.8, 51.2 - 25.6])
    ref2 = BEVGrid(2, 4, PC).reference_points_2d(torch.float64)
    assert ref2[1].tolist() == pytest.approx([0.375, 0.25])
    assert ref2[4].tolist() == pytest.approx([0.125, 0.75])


def test_positional_encoding_is_column_then_row():
    pe = LearnedPositionalEncoding(3, row_num_embed=4, col_num_embed=5)
    pos = pe(4, 5)  # [6, 4, 5]
    assert pos.shape == (6, 4, 5)
    assert torch.equal(pos[:3, 2, 1], pe.col_embed.weight[1])
    assert torch.equal(pos[3:, 2, 1], pe.row_embed.weight[2])


def test_projection_hits_the_pixel_and_masks_points_behind(rig_small):
    l2i = torch.from_numpy(rig_small.lidar2img())[None]  # [1, N, 4, 4]
    H, W = rig_small.img_hw
    # lidar y is forward: a point 20 m ahead at camera height is in CAM_FRONT, behind CAM_BACK
    ahead = torch.tensor([[[0.3, 20.0, 0.2]]], dtype=torch.float64)  # [D=1, Q=1, 3]
    uv, mask = project_reference_points(ahead, l2i, (H, W))
    assert uv.shape == (1, 6, 1, 1, 2) and mask.shape == (1, 6, 1, 1)
    cam = l2i[0, 0] @ torch.tensor([0.3, 20.0, 0.2, 1.0], dtype=torch.float64)
    expected = (cam[:2] / cam[2]) / torch.tensor([W, H], dtype=torch.float64)
    assert torch.allclose(uv[0, 0, 0, 0], expected, atol=1e-12)
    assert mask[0, :, 0, 0].tolist() == [True, False, False, False, False, False]
    behind = torch.tensor([[[0.0, -20.0, 0.2]]], dtype=torch.float64)
    _, mask = project_reference_points(behind, l2i, (H, W))
    assert mask[0, :, 0, 0].tolist() == [False, False, False, True, False, False]


# ------------------------------------------------------------------ batch independence
def test_batch_two_equals_two_batches_of_one(rig_small, pose):
    """Samples see different cameras: sample 1's cameras are rotated by one position."""
    enc = tiny_encoder()
    H, W = rig_small.img_hw
    l2i_a = torch.from_numpy(rig_small.lidar2img())
    l2i_b = torch.roll(l2i_a, shifts=1, dims=0)
    # sample b also drives 3 m forward and turns, so its masks differ per query too
    l2i_b = l2i_b @ torch.from_numpy(invert(pose(0.0, 3.0, 20.0)))
    lidar2img = torch.stack([l2i_a, l2i_b])  # [2, N, 4, 4]
    feats = feats_for(2, (H // 4, W // 4), 2, seed=1)
    with torch.no_grad():
        both = enc(feats, lidar2img, (H, W))
        one = [enc([f[b : b + 1] for f in feats], lidar2img[b : b + 1], (H, W)) for b in range(2)]
    ref3d = BEVGrid(10, 10, PC).pillar_points(4, torch.float64)
    _, mask = project_reference_points(ref3d, lidar2img, (H, W))
    seen = mask.any(-1)  # [B, N, Q]
    assert not torch.equal(seen[0], seen[1])  # the two samples really see different cameras
    assert both.shape == (2, 100, 16)
    torch.testing.assert_close(both[0:1], one[0], rtol=0, atol=1e-8)
    torch.testing.assert_close(both[1:2], one[1], rtol=0, atol=1e-8)
    assert not torch.allclose(both[0], both[1])


def test_temporal_self_attention_batch_equivalence_with_previous_bev():
    torch.manual_seed(0)
    attn = BEVSelfAttention(embed_dims=16, num_heads=2, num_points=4).double().eval()
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.1)
    B, H, W = 2, 6, 5
    q, pos, prev = (torch.randn(B, H * W, 16, dtype=torch.float64) for _ in range(3))
    ref = BEVGrid(H, W, PC).reference_points_2d(torch.float64)[None, :, None].expand(B, -1, -1, -1)
    shapes = torch.tensor([[H, W]])
    pair = torch.stack([prev, q], 1)
    with torch.no_grad():
        both = attn(q, pos, ref, shapes, pair)
        one = [
            attn(q[b : b + 1], pos[b : b + 1], ref[b : b + 1], shapes, pair[b : b + 1])
            for b in range(2)
        ]
        self_only = attn(q, pos, ref, shapes)
    torch.testing.assert_close(both, torch.cat(one), rtol=0, atol=1e-10)
    # without history, the pair is (query, query): the v2 deformable self-attention
    with torch.no_grad():
        explicit = attn(q, pos, ref, shapes, torch.stack([q, q], 1))
    torch.testing.assert_close(self_only, explicit, rtol=0, atol=0)


# ------------------------------------------------------------------ temporal alignment
def _render_pole(rig, l2i_world: np.ndarray, pole: np.ndarray, hw, sigma: float = 0.8):
    """Feature images [1, N, C=4, H, W] with a Gaussian at each projected pole point."""
    H, W = hw
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    imgs = np.zeros((6, H, W))
    for n in range(6):
        for p in pole:
            cam = l2i_world[n] @ np.append(p, 1.0)
            if cam[2] <= 0.1:
                continue
            u, v = cam[:2] / cam[2]
            imgs[n] += np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma**2))
    return torch.from_numpy(imgs)[None, :, None].expand(1, 6, 4, H, W).contiguous()


def _readout_sca(feats: torch.Tensor, lidar2img: torch.Tensor, hw, bev: int) -> torch.Tensor:
    """Spatial cross-attention with zero offsets and identity projections -> [Q] response."""
    sca = SpatialCrossAttention(embed_dims=4, num_heads=1, num_levels=1, num_points=4)
    da = sca.deformable_attention
    with torch.no_grad():
        for lin in (da.sampling_offsets, da.attention_weights):
            lin.weight.zero_()
            lin.bias.zero_()
        for lin in (da.value_proj, sca.output_proj):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    sca = sca.double().eval()
    ref3d = BEVGrid(bev, bev, PC).pillar_points(4, torch.float64)
    ref_cam, mask = project_reference_points(ref3d, lidar2img, hw)
    H, W = hw
    value = feats.flatten(3).transpose(2, 3)  # [1, N, H*W, C]
    q = torch.zeros(1, bev * bev, 4, dtype=torch.float64)
    with torch.no_grad():
        out = sca(q, value, ref_cam, mask, torch.tensor([[H, W]]), torch.tensor([0]))
    return out[0, :, 0]


def test_past_frame_bev_puts_a_static_object_in_the_current_cell(make_rig, pose):
    rig = make_rig(0.1)  # 160 x 90 images
    hw = rig.img_hw
    bev = 50  # 2.048 m cells
    g_cur = pose(100.0, 50.0, 30.0)
    g_past = pose(
        100.0 - 6.0 * math.cos(math.radians(20)), 50.0 - 6.0 * math.sin(math.radians(20)), 20.0
    )  # 6 m behind, heading 10 degrees different
    lidar2global_cur = g_cur @ rig.lidar2ego
    # a static pole on the pillar of cell (row 33, col 27) of the current frame (front-left)
    ref3d = BEVGrid(bev, bev, PC).pillar_points(4, torch.float64).numpy()
    cell = 33 * bev + 27
    pole_cur = ref3d[:, cell]  # [D, 3] current lidar frame
    pole_world = pole_cur @ lidar2global_cur[:3, :3].T + lidar2global_cur[:3, 3]

    def world_l2i(g_ego):
        return rig.lidar2img(g_ego, g_ego) @ invert(g_ego @ rig.lidar2ego)

    responses = {}
    for name, g_ego in (("current", g_cur), ("past", g_past)):
        feats = _render_pole(rig, world_l2i(g_ego), pole_world, hw)
        # the dataset's re-expression: past cameras, current lidar frame
        l2i = torch.from_numpy(rig.lidar2img(g_ego, g_cur))[None]
        responses[name] = _readout_sca(feats, l2i, hw, bev)
        # sanity: the re-expressed matrix maps the pole (current lidar) to its past pixel
        np.testing.assert_allclose(
            l2i[0].numpy() @ np.append(pole_cur[2], 1.0),
            world_l2i(g_ego) @ np.append(pole_world[2], 1.0),
            atol=1e-6,
        )
    for name, resp in responses.items():
        top2 = resp.topk(2).values
        assert int(resp.argmax()) == cell, name
        assert float(top2[0]) > 0.5 and float(top2[1]) < 0.8 * float(top2[0]), name
    # negative control: the past cameras left in the past lidar frame put the pole elsewhere
    feats = _render_pole(rig, world_l2i(g_past), pole_world, hw)
    wrong = _readout_sca(feats, torch.from_numpy(rig.lidar2img(g_past, g_past))[None], hw, bev)
    assert int(wrong.argmax()) != cell


# ------------------------------------------------------------------ BEV data augmentation
def _blob(bev_hw, centre_xy, sigma=4.0):
    grid = BEVGrid(*bev_hw, PC).cell_centres(torch.float64)  # [H, W, 2]
    d2 = ((grid - torch.tensor(centre_xy, dtype=torch.float64)) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * sigma**2))


def _bda(rot_deg: float, scale: float, flip_x: bool, flip_y: bool) -> torch.Tensor:
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    rot = torch.tensor([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    flip = torch.diag(torch.tensor([-1.0 if flip_y else 1.0, -1.0 if flip_x else 1.0, 1, 1]))
    return (flip @ torch.diag(torch.tensor([scale, scale, scale, 1.0])) @ rot).double()


@pytest.mark.parametrize(
    "rot,scale,fx,fy",
    [(30.0, 1.0, False, False), (-22.5, 1.05, True, False), (10.0, 0.95, False, True)],
)
def test_bda_moves_a_feature_blob_where_the_gt_box_goes(rot, scale, fx, fy):
    bev_hw = (64, 64)
    box_xy = (20.0, 8.0)
    bda = _bda(rot, scale, fx, fy)
    moved_xy = (bda[:2, :2] @ torch.tensor(box_xy, dtype=torch.float64)).tolist()
    bev = _blob(bev_hw, box_xy)[None, None].repeat(1, 3, 1, 1)  # [1, C, H, W]
    out = resample_bev(bev, bda[None], BEVGrid(*bev_hw, PC))
    peak = int(out[0, 0].argmax())
    row, col = divmod(peak, bev_hw[1])
    cell = 102.4 / 64
    assert abs(-51.2 + (col + 0.5) * cell - moved_xy[0]) <= cell
    assert abs(-51.2 + (row + 0.5) * cell - moved_xy[1]) <= cell
    # the moved blob equals the blob rendered at the moved centre (scaled width)
    expected = _blob(bev_hw, moved_xy, sigma=4.0 * scale)
    assert float((out[0, 0] - expected).abs().max()) < 0.05


def test_bda_identity_is_exact():
    bev = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    identity = torch.eye(4).repeat(2, 1, 1).double()
    assert torch.equal(resample_bev(bev, identity, BEVGrid(8, 8, PC)), bev)


def test_align_prev_bev_moves_static_feature_into_current_cell(pose):
    bev_hw = (64, 64)
    prev2cur = torch.from_numpy(invert(pose(4.0, -2.0, 12.0)))  # ego moved
    p_prev = torch.tensor([10.0, 15.0], dtype=torch.float64)
    p_cur = prev2cur[:2, :2] @ p_prev + prev2cur[:2, 3]
    prev = _blob(bev_hw, p_prev.tolist()).flatten()[None, :, None]  # [1, Q, 1]
    out = align_prev_bev(prev, prev2cur[None], BEVGrid(*bev_hw, PC))
    expected = _blob(bev_hw, p_cur.tolist()).flatten()
    assert float((out[0, :, 0] - expected).abs().max()) < 0.05  # bilinear error
    # the state carries the same alignment given the two poses
    state = TemporalState(prev, torch.eye(4, dtype=torch.float64)[None], ("s",))
    cur_pose = invert(prev2cur.numpy())[None]
    aligned, valid = state.aligned_to(torch.from_numpy(cur_pose), ["s"], BEVGrid(*bev_hw, PC))
    assert valid.tolist() == [True]
    torch.testing.assert_close(aligned, out)
    _, valid = state.aligned_to(torch.from_numpy(cur_pose), ["other"], BEVGrid(*bev_hw, PC))
    assert valid.tolist() == [False]


# ------------------------------------------------------------------ fusion and GridMask
def test_fill_missing_frames_takes_next_newer_detached():
    bevs = [torch.full((2, 3), float(t), requires_grad=True) for t in range(3)]  # slots t=-2,-1,0
    valid = torch.tensor([[True, True, True], [False, False, True]])
    out = fill_missing_frames(bevs, valid, current=2)
    assert out[0][:, 0].tolist() == [0.0, 2.0] and out[1][:, 0].tolist() == [1.0, 2.0]
    out[0].sum().backward()
    assert bevs[2].grad is None  # the copied BEV is detached
    # a slot that no sample of the batch has was never encoded (None): it takes its neighbour's
    none_first = torch.tensor([[False, True, True], [False, False, True]])
    out = fill_missing_frames([None, bevs[1], bevs[2]], none_first, current=2)
    assert out[0][:, 0].tolist() == [1.0, 2.0] and not out[0].requires_grad
    out = fill_missing_frames([None, None, bevs[2]], torch.tensor([[False, False, True]]), 2)
    assert [o[0, 0].item() for o in out] == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="current"):
        fill_missing_frames([bevs[0], bevs[1], None], valid, current=2)


def test_resnet_fusion_shapes_and_downsample_branch():
    t2 = ResNetFusion(2 * 8, 8)  # inter = T*C: no shortcut conv
    t8 = ResNetFusion(8 * 8, 8, inter_channels=16)
    assert t2.layers[0].downsample is None and t8.layers[0].downsample is not None
    assert len(t8.layers) == 3
    out = t8([torch.randn(2, 8, 5, 4) for _ in range(8)])
    assert out.shape == (2, 20, 8)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 20), atol=1e-5)  # LayerNorm output
    with pytest.raises(ValueError, match="in_channels"):
        t2([torch.randn(1, 8, 5, 4)])


def test_grid_mask_mode1_keeps_only_stripes():
    gm = GridMask(prob=1.0)
    torch.manual_seed(3)
    mask = gm.make_mask(40, 60)
    assert mask.shape == (40, 60) and set(mask.unique().tolist()) <= {0.0, 1.0}
    # ratio 0.5: stripes cover about half of each axis, their union about 3/4
    assert 0.3 < float(mask.mean()) < 0.95
    x = torch.ones(2, 3, 40, 60)
    gm.train()
    assert float(gm(x).mean()) < 1.0
    gm.eval()
    assert torch.equal(gm(x), x)
