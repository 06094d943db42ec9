"""Tests of the detection head, its decoder and losses (bevformer/models/{head,decoder,losses}.py).

Legend: Ldec decoder layers (2), B batch, Q queries (10 per group), G groups, K classes (10),
S BEV cells (6 x 8), C channels (32).
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from bevformer.models.coder import NMSFreeCoder, codes_from_deltas, normalize_bbox
from bevformer.models.criterion import SetCriterion3D
from bevformer.models.decoder import BEVCrossAttention, DetectionTransformerDecoder
from bevformer.models.head import BEVFormerHead
from bevformer.models.losses import detection_losses
from bevformer.structures.grid import BEVGrid

C, BEV_H, BEV_W, NQ = 32, 6, 8, 10
GRID = BEVGrid(BEV_H, BEV_W)  # nuScenes pc_range

GT_BOXES = torch.tensor(
    [
        [10.0, -5.0, -1.0, 1.9, 4.5, 1.6, 0.3, 2.0, 0.5],
        [-20.0, 30.0, 0.0, 0.7, 0.8, 1.8, -1.2, 0.0, 0.0],
        [35.0, 15.0, -0.5, 2.5, 10.0, 3.4, 2.8, -4.0, 1.0],
    ]
)
GT_LABELS = torch.tensor([0, 8, 3])


def loss(head: BEVFormerHead, outputs, gt_boxes, gt_labels, **criterion) -> dict:
    """The detector's loss path: the set criterion on the head's outputs."""
    return SetCriterion3D(**criterion)(outputs, gt_boxes, gt_labels, head.queries_per_group)


def predict(head: BEVFormerHead, outputs, **coder) -> list[dict]:
    """The detector's predict path: the post-processor on the head's first group."""
    return NMSFreeCoder(head.num_classes, **coder).decode(*head.first_group(outputs))


def make_head(**kwargs) -> BEVFormerHead:
    cfg = dict(
        embed_dims=C,
        num_query=NQ,
        group_detr=2,
        num_decoder_layers=2,
        num_heads=4,
        num_points=2,
        ffn_dims=64,
    )
    cfg.update(kwargs)
    torch.manual_seed(0)
    return BEVFormerHead(**cfg)


def test_forward_shapes_train_and_eval():
    head = make_head()
    bev = torch.randn(2, BEV_H * BEV_W, C)
    out = head(bev, GRID)  # training: G * Q queries
    assert out["cls_scores"].shape == (2, 2, 2 * NQ, 10)
    assert out["bbox_preds"].shape == (2, 2, 2 * NQ, 10)
    head.eval()
    out = head(bev, GRID)  # eval: the first group only
    assert out["cls_scores"].shape == (2, 2, NQ, 10)
    assert out["bbox_preds"].shape == (2, 2, NQ, 10)
    # centres are inside pc_range (sigmoids mapped to metres)
    centres = out["bbox_preds"][..., [0, 1, 4]]
    assert bool((centres[..., :2].abs() <= 51.2).all())
    assert bool((centres[..., 2] >= -5.0).all() and (centres[..., 2] <= 3.0).all())
    with pytest.raises(ValueError, match="bev_embed must be"):
        head(torch.randn(2, BEV_H * BEV_W + 1, C), GRID)


def test_without_box_refinement_references_stay_fixed():
    head = make_head(with_box_refine=False).eval()
    bev = torch.randn(1, BEV_H * BEV_W, C)
    query_pos = head.query_embedding.weight[:NQ, :C]
    ref = head.reference_points(query_pos).sigmoid()[None]  # [1, Q, 3]
    _, refs, deltas = head.decoder(
        torch.zeros(1, NQ, C), query_pos[None], bev, ref, (BEV_H, BEV_W), reg_branches=None
    )
    assert deltas is None
    torch.testing.assert_close(refs[0], ref)
    torch.testing.assert_close(refs[1], ref)
    assert head(bev, GRID)["bbox_preds"].shape == (2, 1, NQ, 10)


def test_init_as_official():
    head = make_head()
    prior = -math.log(0.99 / 0.01)
    for branch in head.cls_branches:
        torch.testing.assert_close(branch[-1].bias, torch.full((10,), prior))
    assert bool((head.reference_points.bias == 0).all())
    attn = head.decoder.layers[0].cross_attn
    assert bool((attn.attention_weights.weight == 0).all())
    # head 0 (angle 0) samples along +x at 1, 2 cells
    assert attn.sampling_offsets.bias[:4].tolist() == [1.0, 0.0, 2.0, 0.0]
    # box refinement: one branch pair per layer; without: shared parameters
    assert head.reg_branches[0] is not head.reg_branches[1]
    shared = make_head(with_box_refine=False)
    assert shared.reg_branches[0] is shared.reg_branches[1]


def test_codes_map_references_to_metres():
    refs = torch.tensor([[0.5, 0.5, 0.5], [0.25, 0.75, 0.125]])
    deltas = torch.zeros(2, 10)
    deltas[:, 2:4] = 0.7
    codes = codes_from_deltas(deltas, refs, GRID)
    # x: -51.2 + 102.4 * r_x, y likewise, z: -5 + 8 * r_z; raw log sizes pass through
    expected_xyz = [[0.0, 0.0, -1.0], [-25.6, 25.6, -4.0]]
    assert codes[:, [0, 1, 4]].tolist() == [pytest.approx(r, abs=1e-5) for r in expected_xyz]
    assert codes[:, 2:4].tolist() == [[pytest.approx(0.7)] * 2] * 2


def test_cross_attention_reads_the_bev_row_major():
    """A reference at the centre of cell (row r = y bin, col c = x bin) reads BEV[r * W + c]."""
    torch.manual_seed(0)
    attn = BEVCrossAttention(embed_dims=4, num_heads=1, num_points=2)
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()  # every point at the reference
        for linear in (attn.value_proj, attn.output_proj):
            linear.weight.copy_(torch.eye(4))
            linear.bias.zero_()
    bev = torch.arange(BEV_H * BEV_W, dtype=torch.float32).view(1, -1, 1).expand(1, -1, 4)
    cells = [(0, 0), (2, 5), (5, 7), (4, 1)]  # (row, col)
    ref = torch.tensor([[(c + 0.5) / BEV_W, (r + 0.5) / BEV_H] for r, c in cells])[None]
    zeros = torch.zeros(1, len(cells), 4)
    shapes = torch.tensor([[BEV_H, BEV_W]])
    out = attn(zeros, zeros, bev.contiguous(), ref, shapes, torch.zeros(1, dtype=torch.long))
    expected = torch.tensor([r * BEV_W + c for r, c in cells], dtype=torch.float32)
    torch.testing.assert_close(out[0, :, 0], expected)


def test_group_detr_blocks_attention_across_groups():
    head = make_head(dropout=0.0, group_detr=2)
    head.train()  # groups are active in training
    bev = torch.randn(1, BEV_H * BEV_W, C)
    before = head(bev, GRID)
    with torch.no_grad():
        head.query_embedding.weight[NQ:] += torch.randn(NQ, 2 * C)  # perturb group 1
    after = head(bev, GRID)
    for key in ("cls_scores", "bbox_preds"):
        torch.testing.assert_close(after[key][:, :, :NQ], before[key][:, :, :NQ])
        assert (after[key][:, :, NQ:] - before[key][:, :, NQ:]).abs().max() > 1e-3

    # the decoder alone: with one group the same perturbation does reach group 0
    decoder = DetectionTransformerDecoder(2, C, 4, 2, 64, dropout=0.0).eval()
    query, pos = torch.randn(1, 2 * NQ, C), torch.randn(1, 2 * NQ, C)
    ref = torch.rand(1, 2 * NQ, 3)
    moved = query.clone()
    moved[:, NQ:] += 1.0
    for groups, same in ((2, True), (1, False)):
        a = decoder(query, pos, bev, ref, (BEV_H, BEV_W), num_groups=groups)[0]
        b = decoder(moved, pos, bev, ref, (BEV_H, BEV_W), num_groups=groups)[0]
        assert torch.allclose(a[:, :, :NQ], b[:, :, :NQ]) is same


def test_batch_of_two_equals_two_batches_of_one():
    head = make_head().double().eval()
    bev = torch.randn(2, BEV_H * BEV_W, C, dtype=torch.float64)
    both = head(bev, GRID)
    for b in range(2):
        one = head(bev[b : b + 1], GRID)
        for key in ("cls_scores", "bbox_preds"):
            torch.testing.assert_close(one[key][:, 0], both[key][:, b], atol=1e-10, rtol=0)


def _forced_outputs(boxes, labels, query_ids, num_query=NQ, num_classes=10):
    """Head outputs (1 layer, batch 1) whose queries ``query_ids`` encode the GT."""
    torch.manual_seed(1)
    cls = torch.full((1, 1, num_query, num_classes), -20.0, dtype=torch.float64)
    bbox = normalize_bbox(GT_BOXES[[0]].double()).repeat(1, 1, num_query, 1)
    for rank, (q, box, label) in enumerate(zip(query_ids, boxes, labels)):
        cls[0, 0, q, label] = 10.0 - rank
        bbox[0, 0, q] = normalize_bbox(box.double())
    return {"cls_scores": cls, "bbox_preds": bbox}


def test_predict_on_forced_outputs_returns_the_gt():
    head = make_head().eval()
    query_ids = [7, 2, 5]
    results = predict(head, _forced_outputs(GT_BOXES, GT_LABELS, query_ids), score_threshold=0.5)
    assert len(results) == 1
    res = results[0]
    assert res["labels"].tolist() == GT_LABELS.tolist()  # sorted by score = GT order here
    torch.testing.assert_close(res["boxes"], GT_BOXES.double(), atol=1e-5, rtol=0)
    # centre z is the gravity centre: nothing is subtracted
    assert res["boxes"][:, 2].tolist() == pytest.approx(GT_BOXES[:, 2].tolist())
    # without a threshold all Q*K pairs come back (max_num 300 > 100), the GT first
    res = predict(head, _forced_outputs(GT_BOXES, GT_LABELS, query_ids))[0]
    assert len(res["scores"]) == NQ * 10
    torch.testing.assert_close(res["boxes"][:3], GT_BOXES.double(), atol=1e-5, rtol=0)


def test_detection_losses_by_hand():
    # 1 sample, 2 queries, 2 classes, 1 GT of class 1 matched to query 0
    cls = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])
    bbox = torch.zeros(1, 2, 10)
    gt_code = torch.zeros(1, 10)
    gt_code[0, 0] = 0.5  # smooth-L1: 0.5 * 0.5^2 = 0.125
    gt_code[0, 8] = 3.0  # smooth-L1: 2.5, weight 0.2
    weights = torch.tensor([1.0] * 8 + [0.2, 0.2])
    matches = [(torch.tensor([0]), torch.tensor([0]))]
    loss_cls, loss_bbox = detection_losses(
        cls, bbox, matches, [gt_code], [torch.tensor([1])], weights, num_matched=1
    )
    targets = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    focal = sigmoid_focal_loss(cls, targets, alpha=0.25, gamma=2.0, reduction="sum")
    assert loss_cls.item() == pytest.approx(2.0 * focal.item())
    assert loss_bbox.item() == pytest.approx(0.75 * (0.125 + 0.2 * 2.5))
    # a non-finite target (unknown velocity) removes the whole row; L1 with beta 0
    gt_nan = gt_code.clone()
    gt_nan[0, 9] = float("nan")
    _, loss_bbox = detection_losses(
        cls, bbox, matches, [gt_nan], [torch.tensor([1])], weights, num_matched=1, beta=0.0
    )
    assert loss_bbox.item() == 0.0
    _, loss_bbox = detection_losses(
        cls, bbox, matches, [gt_code], [torch.tensor([1])], weights, num_matched=1, beta=0.0
    )
    assert loss_bbox.item() == pytest.approx(0.75 * (0.5 + 0.2 * 3.0))


def test_group_loss_is_the_mean_over_groups():
    """Two groups: the loss equals the mean of the per-group losses (official group head)."""
    head = make_head(group_detr=2)
    bev = torch.randn(1, BEV_H * BEV_W, C)
    out = head(bev, GRID)
    losses = loss(head, out, [GT_BOXES], [GT_LABELS])
    single = make_head(group_detr=1)
    per_group = []
    for g in range(2):
        part = {k: v[:, :, g * NQ : (g + 1) * NQ] for k, v in out.items()}
        per_group.append(loss(single, part, [GT_BOXES], [GT_LABELS]))
    for key, value in losses.items():
        mean = (per_group[0][key] + per_group[1][key]) / 2
        assert value.item() == pytest.approx(mean.item(), rel=1e-5)


def test_loss_keys_finite_and_decreasing():
    head = make_head(dropout=0.0)
    head.train()
    torch.manual_seed(2)
    bev = torch.randn(1, BEV_H * BEV_W, C)
    optimiser = torch.optim.AdamW(head.parameters(), lr=2e-3)
    totals = []
    for _ in range(20):
        losses = loss(head, head(bev, GRID), [GT_BOXES], [GT_LABELS])
        assert set(losses) == {"loss_cls", "loss_bbox", "d0.loss_cls", "d0.loss_bbox"}
        assert all(bool(torch.isfinite(v)) for v in losses.values())
        total = sum(losses.values())
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        totals.append(total.item())
    assert totals[-1] < 0.6 * totals[0], totals


def test_sample_without_gt_is_all_background():
    head = make_head()
    bev = torch.randn(2, BEV_H * BEV_W, C)
    out = head(bev, GRID)
    empty_boxes, empty_labels = torch.zeros(0, 9), torch.zeros(0, dtype=torch.long)
    losses = loss(head, out, [empty_boxes, empty_boxes], [empty_labels, empty_labels])
    assert losses["loss_bbox"].item() == 0.0
    # every query is background; normaliser clamped to 1, averaged over the 2 groups
    cls = out["cls_scores"][-1]
    focal = sigmoid_focal_loss(cls, torch.zeros_like(cls), reduction="sum")
    assert losses["loss_cls"].item() == pytest.approx(2.0 * focal.item() / 2, rel=1e-5)
    sum(losses.values()).backward()  # gradients exist with no GT at all
    assert head.cls_branches[-1][-1].bias.grad.abs().sum() > 0
    # one sample with GT, one without
    losses = loss(head, head(bev, GRID), [GT_BOXES, empty_boxes], [GT_LABELS, empty_labels])
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    assert losses["loss_bbox"].item() > 0


def test_loss_rejects_bad_labels():
    head = make_head()
    out = head(torch.randn(1, BEV_H * BEV_W, C), GRID)
    with pytest.raises(ValueError, match="GT labels must be in"):
        loss(head, out, [GT_BOXES], [torch.tensor([0, 10, 1])])
    with pytest.raises(ValueError, match="batch 1"):
        loss(head, out, [GT_BOXES, GT_BOXES], [GT_LABELS, GT_LABELS])


def _official_head_keys(num_layers: int) -> list[str]:
    """Key names of the official BEVFormerHead_GroupDETR decoder side (mmcv/mmdet modules)."""
    keys = ["query_embedding.weight"]
    keys += [f"transformer.reference_points.{p}" for p in ("weight", "bias")]
    for i in range(num_layers):
        layer = f"transformer.decoder.layers.{i}."
        keys += [layer + f"attentions.0.attn.{n}" for n in ("in_proj_weight", "in_proj_bias")]
        keys += [layer + f"attentions.0.attn.out_proj.{p}" for p in ("weight", "bias")]
        for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            keys += [layer + f"attentions.1.{name}.{p}" for p in ("weight", "bias")]
        for name in ("ffns.0.layers.0.0", "ffns.0.layers.1", "norms.0", "norms.1", "norms.2"):
            keys += [layer + f"{name}.{p}" for p in ("weight", "bias")]
        keys += [f"cls_branches.{i}.{j}.{p}" for j in (0, 1, 3, 4, 6) for p in ("weight", "bias")]
        keys += [f"reg_branches.{i}.{j}.{p}" for j in (0, 2, 4) for p in ("weight", "bias")]
    return keys


def test_official_checkpoint_keys_convert_and_classes_reorder():
    from bevformer.models.head import OFFICIAL_V2_CLASSES, convert_official_head_state_dict
    from bevformer.structures.boxes import CLASSES

    head = make_head()
    mine = head.state_dict()
    official = {f"pts_bbox_head.{k}": torch.zeros(10) for k in _official_head_keys(2)}
    official["pts_bbox_head.bev_embedding.weight"] = torch.zeros(())  # encoder side: dropped
    official["pts_bbox_head.code_weights"] = torch.zeros(())
    official["img_backbone.conv1.weight"] = torch.zeros(())
    converted = convert_official_head_state_dict(official)
    assert set(converted) == set(mine)

    # with real shapes: strict load works and the last cls rows follow the project order
    rows = torch.arange(10, dtype=torch.float32)
    names = {}
    for key in _official_head_keys(2):
        target = next(iter(convert_official_head_state_dict({f"pts_bbox_head.{key}": rows})))
        names[key] = target
    official = {f"pts_bbox_head.{k}": torch.randn(mine[v].shape) for k, v in names.items()}
    official["pts_bbox_head.cls_branches.1.6.bias"] = rows
    converted = convert_official_head_state_dict(official)
    head.load_state_dict(converted, strict=True)
    expected = [float(OFFICIAL_V2_CLASSES.index(name)) for name in CLASSES]
    assert head.cls_branches[1][-1].bias.tolist() == expected
    assert expected[0] == 3.0  # "car" is row 3 in the official alphabetical order
