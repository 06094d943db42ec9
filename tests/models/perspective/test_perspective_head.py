"""PerspectiveHead: outputs, losses (weights, NaN speeds, empty images), training, inference.

Images are 128 x 256 (levels 16x32 ... 1x2), fx = fy = 200, principal point (128, 64).
"""

import math

import pytest
import torch

from bevformer.models.perspective import PerspectiveHead, encode_boxes3d
from bevformer.models.perspective.coder import box3d_corners, canonical_box_sizes

H, W, C = 128, 256, 16
STRIDES = (8, 16, 32, 64, 128)
K = torch.tensor([[200.0, 0.0, 128.0], [0.0, 200.0, 64.0], [0.0, 0.0, 1.0]])


def _yaw_quat(yaw):
    """Rotation about the camera y (down) axis, wxyz."""
    return [math.cos(yaw / 2), 0.0, math.sin(yaw / 2), 0.0]


def _targets(speeds=(2.0, 1.0), attributes=(0, 1), boxes=True):
    """One camera image with a car and a pedestrian (or none)."""
    if not boxes:
        return {
            "boxes2d": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "center2d": torch.zeros(0, 2),
            "depth": torch.zeros(0),
            "size_wlh": torch.zeros(0, 3),
            "rotation_cam": torch.zeros(0, 4),
            "intrinsics": K.clone(),
            "attributes": torch.zeros(0, dtype=torch.long),
            "speeds": torch.zeros(0),
        }
    center = torch.tensor([[1.0, 0.5, 8.0], [-2.0, 0.6, 6.0]])
    size = torch.tensor([[1.9, 4.5, 1.7], [0.7, 0.7, 1.8]])
    quat = torch.tensor([_yaw_quat(0.3), _yaw_quat(-1.0)])
    corners = box3d_corners(quat, center, size)  # (2, 8, 3)
    pix = corners @ K.T
    pix = pix[..., :2] / pix[..., 2:]
    boxes2d = torch.cat([pix.min(1).values, pix.max(1).values], 1)
    boxes2d[:, 0::2] = boxes2d[:, 0::2].clamp(0, W)
    boxes2d[:, 1::2] = boxes2d[:, 1::2].clamp(0, H)
    proj = center @ K.T
    return {
        "boxes2d": boxes2d,
        "labels": torch.tensor([0, 8]),
        "center2d": proj[:, :2] / proj[:, 2:],
        "depth": center[:, 2].clone(),
        "size_wlh": size,
        "rotation_cam": quat,
        "intrinsics": K.clone(),
        "attributes": torch.tensor(attributes),
        "speeds": torch.tensor(speeds),
    }


def _feats(n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, C, H // s, W // s, generator=gen) for s in STRIDES]


def _head(**kwargs):
    torch.manual_seed(0)
    return PerspectiveHead(in_channels=C, **kwargs)


MONO_KEYS = {
    "loss_cls_mono",
    "loss_box2d_mono",
    "loss_centerness_mono",
    "loss_quat_mono",
    "loss_proj_ctr_mono",
    "loss_depth_mono",
    "loss_size_mono",
    "loss_conf3d_mono",
    "loss_attr_mono",
    "loss_speed_mono",
}


def test_forward_shapes_and_depth_prior():
    head = _head()
    out = head(_feats())
    assert out["cls_logits"][0].shape == (2, 10, 16, 32)
    assert out["quat"][4].shape == (2, 40, 1, 2)
    assert out["proj_ctr"][1].shape == (2, 20, 8, 16)
    assert out["size"][2].shape == (2, 30, 4, 8)
    assert out["locations"][1].shape == (8 * 16, 2)
    assert out["locations"][1][17].tolist() == [16.0, 16.0]  # row 1, col 1, stride 16
    assert (out["box2d"][0] >= 0).all() and (out["speed"][0] >= 0).all()
    # depth = mean_l + (0.3 * std_l) * conv, conv without bias
    assert head.box3d["depth"].bias is None
    assert head.offsets_depth[0].bias.item() == pytest.approx(44.921)
    assert head.scales_depth[3].scale.item() == pytest.approx(0.3 * 4.611)
    assert head.scales_box2d[2].scale.item() == 32.0


def test_losses_are_finite_and_backpropagate():
    head = _head()
    losses = head.loss(head(_feats()), [_targets(), _targets(speeds=(0.5, 0.0))])
    assert set(losses) == MONO_KEYS
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
        assert value > 0, name
    sum(losses.values()).backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_loss_weights():
    feats, targets = _feats(), [_targets(), _targets()]
    base = _head()
    other = _head(
        train_cfg=dict(box3d_weight=1.0, conf3d_weight=3.0, attr_weight=0.4, speed_weight=0.1)
    )
    other.load_state_dict(base.state_dict())
    a = base.loss(base(feats), targets)
    b = other.loss(other(feats), targets)
    for part in ("quat", "proj_ctr", "depth", "size"):
        assert b[f"loss_{part}_mono"].item() == pytest.approx(a[f"loss_{part}_mono"].item() / 2)
    assert b["loss_conf3d_mono"].item() == pytest.approx(3 * a["loss_conf3d_mono"].item())
    assert b["loss_attr_mono"].item() == pytest.approx(2 * a["loss_attr_mono"].item())
    assert b["loss_speed_mono"].item() == pytest.approx(a["loss_speed_mono"].item() / 2)
    assert b["loss_cls_mono"].item() == pytest.approx(a["loss_cls_mono"].item())


def test_nan_speeds_and_missing_attributes_are_masked():
    head = _head()
    out = head(_feats())
    none = [_targets(speeds=(math.nan, math.nan), attributes=(3, 3))] * 2
    losses = head.loss(out, none)
    assert losses["loss_speed_mono"].item() == 0.0 and losses["loss_attr_mono"].item() == 0.0
    some = head.loss(out, [_targets(speeds=(math.nan, 1.0))] * 2)
    assert torch.isfinite(some["loss_speed_mono"]) and some["loss_speed_mono"] > 0
    some["loss_speed_mono"].backward()
    assert torch.isfinite(head.speed.weight.grad).all()
    # the car with unknown speed adds nothing: same loss as with the pedestrian alone (whose
    # positive locations do not change when the car is removed)
    ped = {k: v if k == "intrinsics" else v[1:] for k, v in _targets(speeds=(0.0, 1.0)).items()}
    alone = head.loss(out, [ped] * 2)
    assert some["loss_speed_mono"].item() == pytest.approx(alone["loss_speed_mono"].item())
    known = head.loss(out, [_targets(speeds=(50.0, 1.0))] * 2)
    assert known["loss_speed_mono"] > some["loss_speed_mono"]


def test_images_without_boxes():
    head = _head()
    out = head(_feats())
    empty = head.loss(out, [_targets(boxes=False), _targets(boxes=False)])
    assert set(empty) == MONO_KEYS
    assert empty["loss_cls_mono"] > 0
    assert all(v.item() == 0.0 for k, v in empty.items() if k != "loss_cls_mono")
    sum(empty.values()).backward()
    mixed = _head().loss(out, [_targets(boxes=False), _targets()])
    assert all(torch.isfinite(v) for v in mixed.values())


def test_ignored_labels_and_boxes_behind_the_camera_are_dropped():
    head = _head()
    out = head(_feats(n=1))
    full = head.loss(out, [_targets()])
    bad = _targets()
    bad["labels"] = torch.tensor([0, -1])
    bad["depth"] = torch.tensor([8.0, 6.0])
    only_car = head.loss(out, [bad])
    car = _targets()
    car["depth"] = torch.tensor([8.0, -1.0])
    assert only_car["loss_cls_mono"].item() == pytest.approx(
        head.loss(out, [car])["loss_cls_mono"].item()
    )
    assert only_car["loss_cls_mono"].item() != pytest.approx(full["loss_cls_mono"].item())


def test_losses_decrease_on_a_fixed_feature_map():
    head = _head()
    feats, targets = _feats(n=1, seed=3), [_targets()]
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    history = []
    for _ in range(15):
        losses = head.loss(head(feats), targets)
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    first, last = history[0], history[-1]
    assert sum(last.values()) < 0.6 * sum(first.values())
    # measured: total 60.0 -> 16.7; the 3D confidence target moves with the boxes
    for part in ("cls", "box2d", "quat", "proj_ctr", "depth", "size", "attr", "speed"):
        assert last[f"loss_{part}_mono"] < first[f"loss_{part}_mono"], part


def test_predict_decodes_a_planted_detection():
    head = _head()
    out = head(_feats(n=1))
    out = {k: [torch.zeros_like(m) for m in v] if k != "locations" else v for k, v in out.items()}
    for lvl in range(5):
        out["cls_logits"][lvl].fill_(-20.0)
    tgt = _targets()
    # plant the car (label 0) at level-0 cell (row 6, col 18): location (144, 48)
    loc = torch.tensor([[144.0, 48.0]])
    inv_k = torch.linalg.inv(K)[None]
    canon = canonical_box_sizes()[:1]
    raw = encode_boxes3d(
        tgt["rotation_cam"][:1],
        tgt["center2d"][:1],
        tgt["depth"][:1],
        tgt["size_wlh"][:1],
        loc,
        inv_k,
        canon,
    )
    out["cls_logits"][0][0, 0, 6, 18] = 5.0
    out["centerness"][0][0, 0, 6, 18] = 5.0
    out["box2d"][0][0, :, 6, 18] = torch.tensor([10.0, 8.0, 12.0, 6.0])
    out["quat"][0][0, 0::10, 6, 18] = raw["quat"][0]  # channel c*K + 0 for c = 0..3
    out["proj_ctr"][0][0, 0::10, 6, 18] = raw["proj_ctr"][0]
    out["depth"][0][0, 0, 6, 18] = raw["depth"][0]
    out["size"][0][0, 0::10, 6, 18] = raw["size"][0]
    out["conf3d"][0][0, 0, 6, 18] = 20.0
    (det,) = head.predict(out, K[None], (H, W))
    assert det["labels"].tolist() == [0]
    assert det["boxes2d"][0].tolist() == pytest.approx([134.0, 40.0, 156.0, 54.0])
    s = torch.sigmoid(torch.tensor(5.0)).item()
    assert det["scores_2d"].item() == pytest.approx(s)  # sqrt(sigmoid(5) * sigmoid(5))
    box = det["boxes3d"][0]
    assert box[:3].tolist() == pytest.approx([1.0, 0.5, 8.0], abs=1e-4)
    assert box[3:6].tolist() == pytest.approx([1.9, 4.5, 1.7], abs=1e-4)
    assert abs(torch.dot(box[6:], tgt["rotation_cam"][0]).item()) == pytest.approx(1.0, abs=1e-5)


def test_predict_applies_class_wise_nms():
    head = _head()
    head.eval()
    with torch.no_grad():
        out = head(_feats(n=2))
    dets = head.predict(out, K.expand(2, 3, 3), (H, W))
    assert len(dets) == 2
    for det in dets:
        assert det["boxes3d"].shape[1] == 10 and len(det["scores"]) <= 100
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert (det["boxes2d"][:, 2] <= W).all() and (det["boxes2d"][:, 3] <= H).all()


def test_predict_without_candidates_returns_empty_results():
    head = _head()
    with torch.no_grad():
        out = head(_feats())
    out["cls_logits"] = [torch.full_like(m, -30.0) for m in out["cls_logits"]]
    dets = head.predict(out, K.expand(2, 3, 3), (H, W))
    assert [tuple(d["boxes3d"].shape) for d in dets] == [(0, 10), (0, 10)]
    assert dets[0]["boxes2d"].shape == (0, 4)


def _per_image_reference(head, outputs, intrinsics, image_size, cfg):
    """DD3D's inference order, one image and one level at a time: threshold, then at most
    ``pre_nms_topk``, decode, then per image the class-wise NMS and ``post_nms_topk``."""
    from torchvision.ops import batched_nms

    from bevformer.models.perspective.coder import BOX3D_CHANNELS, decode_boxes3d

    num_images, num_classes = outputs["cls_logits"][0].shape[:2]
    results = []
    for img in range(num_images):
        parts = []
        for lvl, locations in enumerate(outputs["locations"]):

            def maps(key, lvl=lvl, img=img):
                return outputs[key][lvl][img].flatten(1).T  # (HW, C)

            scores = maps("cls_logits").sigmoid() * maps("centerness").sigmoid()
            loc_idx, cls_idx = (scores > cfg["pre_nms_thresh"]).nonzero(as_tuple=True)
            cand = scores[loc_idx, cls_idx]
            if len(cand) > cfg["pre_nms_topk"]:
                cand, top = cand.topk(cfg["pre_nms_topk"])
                loc_idx, cls_idx = loc_idx[top], cls_idx[top]
            loc, ltrb = locations[loc_idx], maps("box2d")[loc_idx]
            raw = {
                key: maps(key)[loc_idx].reshape(-1, ch, num_classes)[
                    torch.arange(len(loc_idx)), :, cls_idx
                ]
                for key, ch in BOX3D_CHANNELS.items()
            }
            box = decode_boxes3d(
                raw["quat"],
                raw["proj_ctr"],
                raw["depth"][:, 0],
                raw["size"],
                loc,
                torch.linalg.inv(intrinsics[img]).expand(len(loc), 3, 3),
                head.canonical_sizes[cls_idx],
            )
            boxes2d = torch.cat([loc - ltrb[:, :2], loc + ltrb[:, 2:]], 1)
            boxes2d[:, 0::2] = boxes2d[:, 0::2].clamp(0, image_size[1])
            boxes2d[:, 1::2] = boxes2d[:, 1::2].clamp(0, image_size[0])
            parts.append(
                {
                    "boxes3d": torch.cat([box["center"], box["size"], box["quat"]], 1),
                    "scores": cand.sqrt() * raw["conf3d"][:, 0].sigmoid(),
                    "scores_2d": cand.sqrt(),
                    "labels": cls_idx,
                    "boxes2d": boxes2d,
                    "attributes": maps("attr_logits")[loc_idx].argmax(1),
                    "speeds": maps("speed")[loc_idx, 0],
                }
            )
        det = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        keep = batched_nms(det["boxes2d"], det["scores"], det["labels"], cfg["nms_thresh"])
        results.append({k: v[keep[: cfg["post_nms_topk"]]] for k, v in det.items()})
    return results


@pytest.mark.parametrize(
    "cfg",
    [
        # the defaults: fewer candidates per level than the cap, fewer detections than 100
        dict(pre_nms_thresh=0.05, pre_nms_topk=1000, post_nms_topk=100, nms_thresh=0.6),
        # both caps bind: far more than 60 of level 0's 32 x 16 x 10 pairs pass the threshold
        dict(pre_nms_thresh=0.01, pre_nms_topk=60, post_nms_topk=7, nms_thresh=0.3),
    ],
)
def test_predict_equals_the_per_image_loop(cfg):
    head = _head(test_cfg=cfg)
    head.eval()
    with torch.no_grad():
        out = head(_feats(n=3, seed=4))
    # scores spread over (0, 1): many pairs pass the threshold on every level
    gen = torch.Generator().manual_seed(1)
    out["cls_logits"] = [torch.randn(m.shape, generator=gen) * 3 for m in out["cls_logits"]]
    out["centerness"] = [torch.randn(m.shape, generator=gen) for m in out["centerness"]]
    intrinsics = torch.stack([K, K * torch.tensor([[1.2], [1.2], [1.0]]), K])
    fast = head.predict(out, intrinsics, (H, W))
    slow = _per_image_reference(head, out, intrinsics, (H, W), cfg)
    counts = [len(d["scores"]) for d in slow]
    assert [len(d["scores"]) for d in fast] == counts
    assert min(counts) > 0 and (cfg["post_nms_topk"] > 50 or max(counts) == cfg["post_nms_topk"])
    for f, s in zip(fast, slow):
        for key in s:
            torch.testing.assert_close(f[key], s[key], rtol=1e-6, atol=1e-5, msg=key)


def test_predict_builds_no_autograd_graph():
    head = _head()
    out = head(_feats())  # train mode: the outputs require gradients
    dets = head.predict(out, K.expand(2, 3, 3), (H, W))
    assert out["cls_logits"][0].requires_grad
    assert all(not v.requires_grad for d in dets for v in d.values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    head = _head()
    feats, targets = _feats(), [_targets(), _targets(boxes=False)]
    cpu = head.loss(head(feats), targets)
    gpu_head = _head().cuda()
    gpu_head.load_state_dict(head.state_dict())
    gpu = gpu_head.loss(gpu_head([f.cuda() for f in feats]), targets)  # targets stay on CPU
    for key, value in cpu.items():
        assert gpu[key].item() == pytest.approx(value.item(), rel=1e-3, abs=1e-5), key
    gpu_head.eval()
    with torch.no_grad():
        dets = gpu_head.predict(gpu_head([f.cuda() for f in feats]), K.expand(2, 3, 3), (H, W))
    assert dets[0]["boxes3d"].is_cuda


def _two_rank_worker(rank: int, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        head = _head()
        # rank 0 has boxes, rank 1 none: both must reach the same collectives
        targets = [_targets()] if rank == 0 else [_targets(boxes=False)]
        losses = head.loss(head(_feats(n=1)), targets)
        torch.save({k: v.item() for k, v in losses.items()}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes, ~25 s on 2 loaded cores
def test_distributed_normalisers_with_a_rank_without_boxes(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    assert dist.is_available(), "this torch build has no torch.distributed"
    result = str(tmp_path / "losses")
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), result), nprocs=2, join=True)
    rank0, rank1 = torch.load(f"{result}.0"), torch.load(f"{result}.1")
    head = _head()
    single = head.loss(head(_feats(n=1)), [_targets()])
    # positives and centerness sums are averaged over the 2 ranks: rank 0 divides by half
    assert rank0["loss_box2d_mono"] == pytest.approx(2 * single["loss_box2d_mono"].item(), rel=1e-4)
    assert rank0["loss_cls_mono"] == pytest.approx(2 * single["loss_cls_mono"].item(), rel=1e-4)
    assert rank1["loss_box2d_mono"] == 0.0 and rank1["loss_cls_mono"] > 0
