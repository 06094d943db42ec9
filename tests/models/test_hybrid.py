"""Hybrid object queries: lifting perspective detections, feature sampling, the head's layout.

Hand-made geometry: camera 0 looks along lidar +y from (1, 2, 0) (camera x right = lidar x,
camera y down = lidar -z, camera z forward = lidar y); camera 1 looks along lidar -y from the
origin. pc_range is the nuScenes one, so a lidar point (x, y, z) normalises to
((x + 51.2) / 102.4, (y + 51.2) / 102.4, (z + 5) / 8).

Legend: B batch, N cameras, k hybrid queries, D detections, G groups, C channels.
"""

from __future__ import annotations

import pytest
import torch

from bevformer.models.coder import NMSFreeCoder
from bevformer.models.criterion import SetCriterion3D
from bevformer.models.head import BEVFormerHead
from bevformer.models.hybrid import HybridQueries, lift_detections, sample_image_features
from bevformer.structures.grid import BEVGrid

PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
GRID = BEVGrid(4, 4, PC_RANGE)  # the 16-token BEV of the small head


def cam2lidar() -> torch.Tensor:
    """[1, 2, 4, 4] for the two cameras of the module docstring."""
    front = torch.eye(4)
    front[:3, :3] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    front[:3, 3] = torch.tensor([1.0, 2.0, 0.0])
    back = torch.eye(4)
    back[:3, :3] = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
    return torch.stack([front, back])[None]


def detections(centers, scores, labels, boxes2d=None) -> dict:
    centers = torch.tensor(centers, dtype=torch.float32).reshape(-1, 3)
    D = len(centers)
    boxes3d = torch.cat([centers, torch.ones(D, 3), torch.tensor([[1.0, 0, 0, 0]]).expand(D, 4)], 1)
    if boxes2d is None:
        boxes2d = torch.tensor([[10.0, 20.0, 30.0, 60.0]]).expand(D, 4)
    return {
        "boxes3d": boxes3d,
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
        "boxes2d": torch.as_tensor(boxes2d, dtype=torch.float32).reshape(-1, 4),
    }


def two_camera_detections() -> list[dict]:
    front = detections(
        [[2.0, 1.0, 10.0], [0.0, 0.0, 60.0], [0.0, 0.0, 5.0]],  # the 2nd lands at y = 62 m
        [0.5, 0.9, 0.01],
        [0, 1, 2],
        [[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 4.0], [40.0, 40.0, 50.0, 50.0]],
    )
    back = detections([[-1.0, 0.5, 20.0]], [0.7], [8], [[100.0, 10.0, 120.0, 30.0]])
    return [front, back]


def test_lift_detections_by_hand():
    p = lift_detections(two_camera_detections(), cam2lidar(), 3, GRID, score_threshold=0.0)
    # kept, best first: back (0.7) -> lidar (1, -20, -0.5); front (0.5) -> (3, 12, -1);
    # front (0.01) -> (1, 7, 0). The 0.9 detection is outside pc_range (y = 62).
    expected = torch.tensor([[1.0, -20.0, -0.5], [3.0, 12.0, -1.0], [1.0, 7.0, 0.0]])
    torch.testing.assert_close(p.centers[0], expected)
    ref = (expected - torch.tensor(PC_RANGE[:3])) / torch.tensor([102.4, 102.4, 8.0])
    torch.testing.assert_close(p.reference[0], ref)
    assert p.reference[0, 1].tolist() == pytest.approx([0.529296875, 0.6171875, 0.5])
    assert p.labels[0].tolist() == [8, 0, 2]
    assert p.cameras[0].tolist() == [1, 0, 0]
    assert p.scores[0].tolist() == pytest.approx([0.7, 0.5, 0.01])
    assert p.pixels[0].tolist() == [[110.0, 20.0], [20.0, 40.0], [45.0, 45.0]]
    assert p.valid.all()


def test_lift_detections_pads_thresholds_and_applies_bda():
    dets = two_camera_detections()
    bda = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))[None]  # BEV flip x -> -x
    p = lift_detections(dets, cam2lidar(), 4, GRID, bda=bda, score_threshold=0.1)
    assert p.valid[0].tolist() == [True, True, False, False]
    assert p.labels[0].tolist() == [8, 0, -1, -1]
    torch.testing.assert_close(p.centers[0, :2], torch.tensor([[-1.0, -20, -0.5], [-3, 12, -1]]))
    assert p.scores[0, 2:].tolist() == [0.0, 0.0]
    # images with no detections at all
    empty = [detections([], [], []) for _ in range(2)]
    p = lift_detections(empty, cam2lidar(), 2, GRID)
    assert not p.valid.any() and p.reference.shape == (1, 2, 3)
    with pytest.raises(ValueError, match="one detection dict per image"):
        lift_detections(empty[:1], cam2lidar(), 2, GRID)


def test_proposals_are_detached():
    dets = two_camera_detections()
    dets[0]["boxes3d"].requires_grad_(True)
    p = lift_detections(dets, cam2lidar(), 3, GRID)
    assert not p.centers.requires_grad and not p.reference.requires_grad


def test_sample_image_features_reads_the_pixel_position():
    """Maps whose value is the x (channel 0) / y (channel 1) pixel position of each cell centre:
    a stride-1 map holds x, a stride-2 map holds 2 * col + 0.5; bilinear sampling returns the
    queried pixel. Camera 1's maps are offset by 100 to check the camera pick."""
    H, W = 8, 16
    maps = []
    for stride in (1, 2):
        h, w = H // stride, W // stride
        xs = torch.arange(w, dtype=torch.float32) * stride + (stride - 1) / 2
        ys = torch.arange(h, dtype=torch.float32) * stride + (stride - 1) / 2
        grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)])  # [2, h, w]
        maps.append(torch.stack([grid, grid + 100])[None])  # [B=1, N=2, C=2, h, w]
    pixels = torch.tensor([[[5.0, 3.0], [9.5, 4.25]]])
    cameras = torch.tensor([[0, 1]])
    out = sample_image_features(maps, cameras, pixels, (H, W))
    torch.testing.assert_close(out, torch.tensor([[[5.0, 3.0], [109.5, 104.25]]]))


def test_hybrid_queries_module():
    torch.manual_seed(0)
    module = HybridQueries(num_queries=4, embed_dims=8, num_classes=10)
    p = lift_detections(two_camera_detections(), cam2lidar(), 4, GRID)
    assert p.valid[0].tolist() == [True, True, True, False]
    feats = [torch.randn(1, 2, 8, 16, 32, requires_grad=True)]  # [B, N, C, h, w]
    out = module(p, feats, (128, 256))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "query": (1, 4, 8),
        "query_pos": (1, 4, 8),
        "reference": (1, 4, 3),
    }
    torch.testing.assert_close(out["reference"][0, :3], p.reference[0, :3])
    fb_pos, fb_query = module.fallback_embedding.weight.split(8, dim=1)
    torch.testing.assert_close(out["query"][0, 3], fb_query[3])
    torch.testing.assert_close(out["query_pos"][0, 3], fb_pos[3])
    torch.testing.assert_close(out["reference"][0, 3], module.fallback_reference[3].sigmoid())
    # the sampled features keep their gradient (the proposals' positions do not)
    # (a plain sum would see no gradient: it is constant under the LayerNorm)
    (out["query"][:, :3] * torch.arange(8.0)).sum().backward()
    assert float(feats[0].grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="expected 4 proposals"):
        module(lift_detections(two_camera_detections(), cam2lidar(), 3, GRID), feats, (8, 8))


# ----------------------------------------------------------------------------- the head
def small_head(**kw) -> BEVFormerHead:
    torch.manual_seed(0)
    args = dict(
        embed_dims=16,
        num_query=2,
        group_detr=2,
        num_decoder_layers=1,
        num_heads=2,
        ffn_dims=32,
        dropout=0.0,
        num_hybrid_queries=3,
    )
    args.update(kw)
    return BEVFormerHead(**args)


def hybrid_inputs(B: int = 1, k: int = 3, C: int = 16) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "query": torch.randn(B, k, C, generator=g),
        "query_pos": torch.randn(B, k, C, generator=g),
        "reference": torch.rand(B, k, 3, generator=g),
    }


def test_head_appends_hybrid_queries_to_every_group():
    head = small_head().train()
    bev = torch.randn(1, 16, 16)
    out = head(bev, GRID, hybrid_inputs())
    assert out["cls_scores"].shape == (1, 1, 2 * (2 + 3), 10)  # [Ldec, B, G*(nq+k), K]
    head.eval()
    with torch.no_grad():
        out = head(bev, GRID, hybrid_inputs())
    assert out["cls_scores"].shape == (1, 1, 2 + 3, 10)
    # predict reads the hybrid queries too: make the last hybrid query (index 4) class 7
    out["cls_scores"][-1, 0, 4, 7] = 20.0
    top = NMSFreeCoder(10).decode(*head.first_group(out))[0]
    assert int(top["labels"][0]) == 7 and float(top["scores"][0]) > 0.99
    with pytest.raises(ValueError, match="num_hybrid_queries=3"):
        head(bev, GRID)
    with pytest.raises(ValueError, match=r"hybrid\['reference'\]"):
        head(bev, GRID, {**hybrid_inputs(), "reference": torch.rand(1, 2, 3)})
    with pytest.raises(ValueError, match="num_hybrid_queries=0"):
        small_head(num_hybrid_queries=0)(bev, GRID, hybrid_inputs())


def test_every_group_gets_its_learned_queries_then_the_hybrid_ones():
    """The decoder's input, group by group: the group's own learned queries, then the same k
    hybrid queries (content, positional embedding and reference as given)."""
    head = small_head().train()
    seen = {}
    original = head.decoder.forward

    def spy(query, query_pos, bev, reference, *args, **kwargs):
        seen.update(query=query, query_pos=query_pos, reference=reference)
        return original(query, query_pos, bev, reference, *args, **kwargs)

    head.decoder.forward = spy
    extra = hybrid_inputs()
    head(torch.randn(1, 16, 16), GRID, extra)
    per_group = 2 + 3
    for g in range(2):
        block = slice(g * per_group + 2, (g + 1) * per_group)  # the hybrid block of group g
        torch.testing.assert_close(seen["reference"][0, block], extra["reference"][0])
        torch.testing.assert_close(seen["query"][0, block], extra["query"][0])
        torch.testing.assert_close(seen["query_pos"][0, block], extra["query_pos"][0])
    # the learned blocks are the two groups' own embeddings
    learned = head.query_embedding.weight[2:4, 16:]  # group 1's content
    torch.testing.assert_close(seen["query"][0, per_group : per_group + 2], learned)


def test_matching_covers_hybrid_queries_of_every_group():
    """2 learned + 3 hybrid queries per group and 5 GT boxes: every query of both groups is
    matched, so the matched indices are exactly 0..9 and 3 per group are >= num_query."""
    head = small_head().train()
    out = head(torch.randn(1, 16, 16), GRID, hybrid_inputs())
    gt = torch.tensor([[float(i), 2.0 * i, 0.0, 1.0, 2.0, 1.5, 0.1, 0.0, 0.0] for i in range(5)])
    labels = torch.tensor([0, 1, 2, 3, 4])
    criterion = SetCriterion3D()
    cls, bbox = out["cls_scores"][-1, 0], out["bbox_preds"][-1, 0]
    query_idx, gt_idx = criterion.match(cls, bbox, gt, labels, head.queries_per_group)
    assert sorted(query_idx.tolist()) == list(range(10))
    assert sorted(gt_idx.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert int(((query_idx % 5) >= 2).sum()) == 6
    losses = criterion(out, [gt], [labels], head.queries_per_group)
    assert all(torch.isfinite(v) for v in losses.values())
