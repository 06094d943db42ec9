"""Tests of the BEVFormerV2 detector class (with a stand-in detection head) and the builder.

Legend: B batch, T frames, N cameras (6, the real nuScenes rig scaled to 96 x 54 pixels,
padded to 96 x 64), Q BEV cells (8 x 8), C channels (16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from backbones import FPN, InternImage
from bevformer.builder import build_from_cfg
from bevformer.models.bda import resample_bev
from bevformer.models.bev import TemporalBEV
from bevformer.models.detector import BEVFormerV2
from bevformer.models.encoder import BEVEncoder
from bevformer.models.losses import check_finite_losses
from bevformer.models.temporal import ResNetFusion
from bevformer.registry import MODELS
from bevformer.structures.grid import BEVGrid

C = 16
BEV = 8
IMG_HW = (64, 96)


class StandInHead(nn.Module):
    """A minimal head with the detection head's interface: forward, queries_per_group,
    first_group (its "codes" are box vectors, which StandInDecoder returns as they are)."""

    queries_per_group = 5

    def __init__(self, embed_dims: int) -> None:
        super().__init__()
        self.cls = nn.Linear(embed_dims, 3)
        self.reg = nn.Linear(embed_dims, 9)

    def forward(self, bev: torch.Tensor, grid: BEVGrid) -> dict:
        return {"cls": self.cls(bev), "reg": self.reg(bev)}  # [B, Q, 3], [B, Q, 9]

    def first_group(self, outputs) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.queries_per_group
        return outputs["cls"][:, :n].detach(), outputs["reg"][:, :n].detach()


class StandInCriterion(nn.Module):
    """The criterion's interface: (outputs, gt_boxes, gt_labels, queries_per_group) -> losses;
    ``nan_term`` makes that term NaN."""

    def __init__(self, nan_term: str | None = None) -> None:
        super().__init__()
        self.nan_term = nan_term

    def forward(self, outputs, gt_boxes, gt_labels, queries_per_group) -> dict:
        losses = {
            "loss_cls": outputs["cls"].logsumexp(-1).mean(),
            "loss_bbox": sum(
                (outputs["reg"][b, : len(g)] - g).abs().mean() for b, g in enumerate(gt_boxes)
            ),
        }
        if self.nan_term is not None:
            losses[self.nan_term] = losses[self.nan_term] * float("nan")
        return losses


class StandInDecoder:
    """The post-processor's interface: decode(cls [B, Q, K], boxes [B, Q, 9]) -> per sample."""

    def decode(self, cls, boxes) -> list[dict]:
        scores, labels = cls.sigmoid().max(-1)
        return [
            {"boxes": boxes[b], "scores": scores[b], "labels": labels[b]}
            for b in range(scores.shape[0])
        ]


@dataclass
class Meta:
    token: str
    scene_token: str
    lidar2ego: np.ndarray
    ego2global: np.ndarray
    flip: bool = False


def tiny_detector(
    frames=(0,), temporal="fusion", nan_term=None, grid_mask=False, history_grad=False, frozen=()
) -> BEVFormerV2:
    torch.manual_seed(0)
    fusion = ResNetFusion(len(frames) * C, C) if len(frames) > 1 and temporal == "fusion" else None
    model = BEVFormerV2(
        img_backbone=InternImage(
            core_op="DCNv3_pytorch",
            channels=8,
            depths=(1, 1, 1, 1),
            groups=(1, 2, 4, 8),
            drop_path_rate=0.0,
            out_indices=(1, 2, 3),
        ),
        img_neck=FPN([16, 32, 64], C, num_outs=5, add_extra_convs="on_output"),
        bev=TemporalBEV(
            BEVEncoder(
                embed_dims=C, num_layers=1, grid=BEVGrid(BEV, BEV), num_heads=2, ffn_dims=32
            ),
            fusion,
            frames,
            temporal,
            history_grad,
        ),
        pts_bbox_head=StandInHead(C),
        criterion=StandInCriterion(nan_term),
        post_processor=StandInDecoder(),
        use_grid_mask=grid_mask,
        frozen=frozen,
    )
    return model


def rig_batch(rig, batch: int, frames: int = 1, seed: int = 0) -> dict:
    """Images, lidar2img (sample b's cameras rotated by b positions) and GT."""
    g = torch.Generator().manual_seed(seed)
    l2i = torch.from_numpy(rig.lidar2img()).float()  # [N, 4, 4]
    lidar2img = torch.stack(
        [torch.roll(l2i, shifts=b, dims=0)[None].expand(frames, -1, -1, -1) for b in range(batch)]
    )  # [B, T, N, 4, 4]
    return {
        "img": torch.randn(batch, frames, 6, 3, *IMG_HW, generator=g),
        "lidar2img": lidar2img,
        "frame_valid": torch.ones(batch, frames, dtype=torch.bool),
        "bda": torch.eye(4).repeat(batch, 1, 1),
        "gt_boxes": [torch.randn(2, 9, generator=g) for _ in range(batch)],
        "gt_labels": [torch.zeros(2, dtype=torch.long) for _ in range(batch)],
        "img_shape": IMG_HW,
    }


@pytest.fixture(scope="module")
def rig(make_rig):
    return make_rig(0.06)  # 96 x 54 images


def test_loss_step_backpropagates_to_backbone_and_encoder(rig):
    model = tiny_detector(grid_mask=True).train()
    losses = model(**rig_batch(rig, 2), mode="loss")
    assert set(losses) == {"loss_cls", "loss_bbox"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name in ("img_backbone.patch_embed.conv1.weight", "bev.encoder.bev_embedding.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_nan_loss_raises_naming_the_term(rig):
    model = tiny_detector(nan_term="loss_bbox").train()
    with pytest.raises(FloatingPointError, match="'loss_bbox'"):
        model(**rig_batch(rig, 1), mode="loss")
    with pytest.raises(FloatingPointError, match="'loss_x'"):
        check_finite_losses({"loss_ok": torch.tensor(1.0), "loss_x": torch.tensor(float("inf"))})


def test_unknown_or_inconsistent_batch_keys_are_refused(rig):
    model = tiny_detector().eval()
    batch = rig_batch(rig, 1)
    with pytest.raises(TypeError, match="gt_boxs"):
        model(**{**batch, "gt_boxs": batch["gt_boxes"]}, mode="predict")
    with pytest.raises(ValueError, match="padded image size"):
        model(**{**batch, "img_shape": (IMG_HW[0] + 32, IMG_HW[1])}, mode="predict")


def test_batch_of_two_equals_two_batches_of_one(rig):
    """Eval, fp64: sample 1's cameras are rotated, so its visibility masks differ."""
    model = tiny_detector().double().eval()
    batch = rig_batch(rig, 2)
    batch["img"] = batch["img"].double()
    with torch.no_grad():
        both = model(**batch, mode="tensor")["bev_embed"]
        ones = [
            model(
                img=batch["img"][b : b + 1],
                lidar2img=batch["lidar2img"][b : b + 1],
                mode="tensor",
            )["bev_embed"]
            for b in range(2)
        ]
    torch.testing.assert_close(both, torch.cat(ones), rtol=0, atol=1e-8)
    assert not torch.allclose(both[0], both[1])


def test_bev_augmentation_resamples_the_encoder_output(rig):
    model = tiny_detector().double().eval()
    batch = rig_batch(rig, 2)
    batch["img"] = batch["img"].double()
    c, s = np.cos(0.4), np.sin(0.4)
    rot = torch.tensor([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]).double()
    flip = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0])).double()
    bda = torch.stack([rot, flip @ rot]).double()
    with torch.no_grad():
        plain = model(**{**batch, "bda": None}, mode="tensor")["bev_embed"]
        augmented = model(**{**batch, "bda": bda}, mode="tensor")["bev_embed"]
    # [B, Q, C] -> [B, C, H, W], resampled, back
    bev_map = plain.transpose(1, 2).reshape(2, C, BEV, BEV)
    expected = resample_bev(bev_map, bda, model.grid).flatten(2).transpose(1, 2)
    torch.testing.assert_close(augmented, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(augmented, plain)


def test_predict_returns_boxes_per_sample_with_token(rig):
    model = tiny_detector().eval()
    batch = rig_batch(rig, 2)
    meta = [Meta(f"tok{b}", "scene", np.eye(4), np.eye(4)) for b in range(2)]
    with torch.no_grad():
        out = model(**batch, meta=meta, mode="predict")
    assert [r["token"] for r in out] == ["tok0", "tok1"]
    assert out[0]["boxes"].shape == (5, 9) and out[0]["scores"].shape == (5,)


def test_flipped_images_give_the_unflipped_features():
    """With a flip-equivariant backbone, mirrored images + the flag equal the original."""
    model = tiny_detector()

    class Pool(nn.Module):
        def forward(self, x):  # [M, 3, H, W] -> strides 8, 16, 32 with 16, 32, 64 channels
            return [
                nn.functional.avg_pool2d(x, s).repeat(1, c // 3 + 1, 1, 1)[:, :c]
                for s, c in ((8, 16), (16, 32), (32, 64))
            ]

    model.img_backbone = Pool()
    model.img_neck = nn.Identity()
    img = torch.randn(2, 6, 3, *IMG_HW)
    plain = model.extract_feat(img, None, augment=False)
    flipped = model.extract_feat(img.flip(-1), torch.tensor([True, True]), augment=False)
    mixed = model.extract_feat(
        torch.stack([img[0], img[1].flip(-1)]), torch.tensor([False, True]), augment=False
    )
    for a, b, m in zip(plain, flipped, mixed):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, m)


def test_history_has_no_gradient_and_missing_frames_ignore_their_images(rig):
    model = tiny_detector(frames=(-1, 0)).train()
    batch = rig_batch(rig, 2, frames=2)
    batch["img"].requires_grad_(True)
    losses = model(**batch, mode="loss")
    assert model.training and model.bev.encoder.training  # restored after the history pass
    sum(losses.values()).backward()
    grad = batch["img"].grad
    assert float(grad[:, 0].abs().sum()) == 0.0  # past frame: no gradient
    assert float(grad[:, 1].abs().sum()) > 0.0

    # sample 0 misses its past frame: its output must not depend on that slot's images
    model.eval()
    batch = rig_batch(rig, 2, frames=2)
    batch["frame_valid"][0, 0] = False
    with torch.no_grad():
        a = model(**batch, mode="tensor")["bev_embed"]
        batch["img"][:, 0] = torch.randn_like(batch["img"][:, 0])
        b = model(**batch, mode="tensor")["bev_embed"]
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert not torch.allclose(a[1], b[1])

    # no sample of the batch has a past frame (e.g. two scene starts): the slot is never
    # encoded and both samples fuse their current BEV twice, in training and eval
    batch["frame_valid"][:, 0] = False
    with torch.no_grad():
        c = model(**batch, mode="tensor")["bev_embed"]
    model.train()
    losses = model(
        **(rig_batch(rig, 2, frames=2) | {"frame_valid": batch["frame_valid"]}), mode="loss"
    )
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert torch.isfinite(c).all()


def test_history_grad_trains_through_the_past_frame_and_leaves_inference_alone(rig):
    model = tiny_detector(frames=(-1, 0), history_grad=True).train()
    modes = []
    model.bev.encoder.register_forward_hook(lambda m, i, o: modes.append(m.training))
    batch = rig_batch(rig, 2, frames=2)
    batch["img"].requires_grad_(True)
    sum(model(**batch, mode="loss").values()).backward()
    assert modes == [True, True]  # past and current slots, both in training mode
    grad = batch["img"].grad
    assert float(grad[:, 0].abs().sum()) > 0.0 and float(grad[:, 1].abs().sum()) > 0.0

    # at test time the flag changes nothing: the same weights give the same BEV
    official = tiny_detector(frames=(-1, 0)).eval()
    official.load_state_dict(model.state_dict())
    model.eval()
    batch = rig_batch(rig, 2, frames=2, seed=1)
    with torch.no_grad():
        a = model(**batch, mode="tensor")["bev_embed"]
        b = official(**batch, mode="tensor")["bev_embed"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"history_grad=True .* frames=\(0,\) has none"):
        tiny_detector(frames=(0,), history_grad=True)


def test_frozen_parts_stay_fixed_in_eval_mode_while_the_rest_trains(rig):
    frozen = ("img_backbone", "img_neck", "bev.encoder")
    model = tiny_detector(frames=(-1, 0), frozen=frozen).train()
    assert model.training and model.bev.fusion.training
    assert not any(model.get_submodule(n).training for n in frozen)
    # the encoder runs in eval mode for both slots: the past frame's eval pass restores the
    # training flags through train(), which keeps the frozen parts in eval mode
    modes = []
    model.bev.encoder.register_forward_hook(lambda m, i, o: modes.append(m.training))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(model(**rig_batch(rig, 2, frames=2), mode="loss").values()).backward()
    opt.step()
    assert modes == [False, False]
    after = model.state_dict()
    unchanged = {k for k in before if torch.equal(before[k], after[k])}
    assert {k for k in before if k.startswith(tuple(f"{n}." for n in frozen))} <= unchanged
    for trained in (
        "bev.fusion.proj.weight",
        "bev.fusion.layers.0.bn1.running_mean",
        "pts_bbox_head.cls.weight",
    ):
        assert trained not in unchanged, trained
    assert all(p.grad is None for n in frozen for p in model.get_submodule(n).parameters())

    with pytest.raises(ValueError, match=r"'bev\.encodr' is not a submodule"):
        tiny_detector(frozen=("bev.encodr",))
    with pytest.raises(ValueError, match="list of submodule names"):
        tiny_detector(frozen="img_backbone")
    everything = ("img_backbone", "img_neck", "bev", "pts_bbox_head")
    with pytest.raises(ValueError, match="leaves no parameter to train"):
        tiny_detector(frozen=everything)


def test_streaming_state_is_returned_and_used(rig, pose):
    model = tiny_detector(temporal="streaming").eval()
    batch = rig_batch(rig, 1)
    lidar2ego = rig.lidar2ego

    def meta(x, scene):
        return [Meta("t", scene, lidar2ego, pose(x, 0.0, 0.0))]

    with torch.no_grad():
        first, state = model(**batch, meta=meta(0.0, "s"), mode="tensor", return_state=True)
        again, _ = model(
            **batch, meta=meta(2.0, "s"), mode="tensor", prev_state=state, return_state=True
        )
        new_scene, _ = model(
            **batch, meta=meta(2.0, "other"), mode="tensor", prev_state=state, return_state=True
        )
    assert state.bev.shape == (1, BEV * BEV, C) and state.scene_tokens == ("s",)
    assert not torch.allclose(first["bev_embed"], again["bev_embed"])  # history was used
    torch.testing.assert_close(first["bev_embed"], new_scene["bev_embed"])  # scene reset
    # the state's pose is lidar2global of the frame
    np.testing.assert_allclose(
        state.lidar2global[0].numpy(), pose(0.0, 0.0, 0.0) @ lidar2ego, atol=1e-12
    )


def test_builder_builds_nested_modules_and_names_unknown_keys():
    grid_cfg = dict(type="BEVGrid", bev_h=4, bev_w=4)
    enc_cfg = dict(type="BEVEncoder", embed_dims=C, num_layers=1, grid=grid_cfg)
    enc = build_from_cfg(enc_cfg, MODELS)
    assert isinstance(enc, BEVEncoder) and len(enc.layers) == 1
    fusion = build_from_cfg(dict(type="ResNetFusion", in_channels=2 * C, out_channels=C), MODELS)
    assert isinstance(fusion, ResNetFusion)
    with pytest.raises(TypeError, match=r"BEVEncoder.*\['num_qeries'\]"):
        build_from_cfg({**enc_cfg, "num_qeries": 3}, MODELS)
    with pytest.raises(KeyError, match="NoSuchModule"):
        build_from_cfg(dict(type="NoSuchModule"), MODELS)


def test_temporal_bev_refuses_a_fusion_it_would_not_use_or_would_miss():
    def encoder():
        return BEVEncoder(embed_dims=C, num_layers=1, grid=BEVGrid(BEV, BEV), num_heads=2)

    fusion = ResNetFusion(2 * C, C)
    with pytest.raises(ValueError, match="temporal='streaming' .* fusion module \\(ResNetFusion"):
        TemporalBEV(encoder(), fusion, (-1, 0), "streaming")
    with pytest.raises(ValueError, match="need a fusion module"):
        TemporalBEV(encoder(), None, (-1, 0), "fusion")
    with pytest.raises(ValueError, match="temporal must be one of"):
        TemporalBEV(encoder(), None, (0,), "stream")
    assert TemporalBEV(encoder(), None, (-1, 0), "streaming").fusion is None
    assert TemporalBEV(encoder(), fusion, (-1, 0), "fusion").fusion is fusion
