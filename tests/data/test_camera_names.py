"""Cameras are matched by name: the dataset stacks the info file's images in the order of the
model's ``camera_names``, refuses infos without one of them, and the detector refuses a batch
whose cameras are not its own."""

from __future__ import annotations

import os
import re

import pytest
import torch
from torch import nn

from bevformer.data.collate import collate
from bevformer.data.dataset import NuScenesTemporalDataset
from bevformer.data.infos import CAMERA_NAMES, create_infos, load_infos, save_infos
from bevformer.data.transforms import CropResizeFlipImage, LoadMultiViewImages, PadMultiViewImage
from bevformer.models.batch import check_cameras
from bevformer.models.bev import TemporalBEV
from bevformer.models.detector import BEVFormerV2
from bevformer.models.encoder import BEVEncoder
from bevformer.structures.grid import BEVGrid

GEOMETRY = ("img", "lidar2img", "intrinsics", "cam2lidar")


@pytest.fixture(scope="module")
def canonical(synthetic_dataroot, tmp_path_factory) -> tuple[str, str]:
    """(dataroot, info file) of the synthetic dataroot's larger split, official camera order."""
    out = tmp_path_factory.mktemp("camera_infos")
    written = create_infos(str(synthetic_dataroot), "v1.0-mini", out_dir=str(out), progress=False)
    return str(synthetic_dataroot), max(written.values(), key=lambda p: len(load_infos(p)[1]))


def _rewrite(info_file: str, out: str, cameras: list[str], drop_from: int = 0) -> str:
    """A copy of ``info_file`` listing only ``cameras``, in this order, in its metadata and in
    the samples from ``drop_from`` on (earlier samples keep every camera, in the new order
    first)."""
    metadata, infos = load_infos(info_file)
    for k, info in enumerate(infos):
        cams = info["cams"]
        keep = cameras if k >= drop_from else cameras + [c for c in cams if c not in cameras]
        info["cams"] = {c: cams[c] for c in keep}
    metadata = {**metadata, "camera_names": list(cameras)}
    save_infos(out, metadata, infos)
    return out


def _dataset(dataroot: str, info_file: str, **kwargs) -> NuScenesTemporalDataset:
    return NuScenesTemporalDataset(
        info_file,
        dataroot,
        frames=(-1, 0),
        test_mode=True,
        transforms=[
            LoadMultiViewImages(),
            CropResizeFlipImage(final_size=(64, 160), test_scale=0.4),
            PadMultiViewImage(size_divisor=32),
        ],
        **kwargs,
    )


def _batch(ds: NuScenesTemporalDataset) -> dict:
    return collate([ds[0], ds[len(ds) - 1]])


def test_infos_in_another_camera_order_give_the_same_batch(canonical, tmp_path):
    dataroot, info_file = canonical
    shuffled = [CAMERA_NAMES[i] for i in (3, 5, 0, 2, 4, 1)]
    other = _rewrite(info_file, str(tmp_path / "shuffled.json"), shuffled)
    assert list(load_infos(other)[1][0]["cams"]) == shuffled

    want = _batch(_dataset(dataroot, info_file, camera_names=CAMERA_NAMES))
    got = _batch(_dataset(dataroot, other, camera_names=CAMERA_NAMES))
    for key in GEOMETRY:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    assert [m.camera_names for m in got["meta"]] == [CAMERA_NAMES] * 2
    # the cameras really differ from one another, so a wrong order could not pass unnoticed
    assert not torch.equal(want["img"][:, :, 0], want["img"][:, :, 1])
    assert not torch.equal(want["lidar2img"][:, :, 0], want["lidar2img"][:, :, 1])

    # without camera_names the dataset keeps the file's order (and says so in the meta)
    plain = _batch(_dataset(dataroot, other))
    assert [m.camera_names for m in plain["meta"]] == [tuple(shuffled)] * 2
    order = [shuffled.index(c) for c in CAMERA_NAMES]
    for key in GEOMETRY:
        torch.testing.assert_close(plain[key][:, :, order], want[key], rtol=0, atol=0)


def test_a_subset_of_cameras_is_selected_by_name(canonical):
    dataroot, info_file = canonical
    five = [c for c in CAMERA_NAMES if c != "CAM_FRONT_LEFT"]
    full = _batch(_dataset(dataroot, info_file, camera_names=CAMERA_NAMES))
    sub = _batch(_dataset(dataroot, info_file, camera_names=five))
    assert sub["img"].shape[2] == 5 and len(sub["mono"][0]) > 0
    index = [CAMERA_NAMES.index(c) for c in five]
    for key in GEOMETRY:
        torch.testing.assert_close(sub[key], full[key][:, :, index], rtol=0, atol=0)
    assert sub["meta"][0].camera_names == tuple(five)
    assert all(os.sep + "CAM_FRONT_LEFT" + os.sep not in p for p in sub["meta"][0].image_paths[1])


def test_infos_without_a_model_camera_are_refused_naming_both_lists(canonical, tmp_path):
    dataroot, info_file = canonical
    five = [c for c in CAMERA_NAMES if c != "CAM_BACK_LEFT"]
    missing = _rewrite(info_file, str(tmp_path / "five.json"), five)
    with pytest.raises(ValueError) as err:
        _dataset(dataroot, missing, camera_names=CAMERA_NAMES)
    text = str(err.value)
    assert f"the model was built for cameras {list(CAMERA_NAMES)}; the info file has {five}" in text
    assert "without ['CAM_BACK_LEFT']" in text and "rebuild the infos" in text
    assert "set model camera_names" in text
    # the metadata lists every camera but a later sample lacks one: refused naming the sample
    metadata, infos = load_infos(_rewrite(info_file, str(tmp_path / "late.json"), five, 2))
    save_infos(str(tmp_path / "late.json"), {**metadata, "camera_names": list(CAMERA_NAMES)}, infos)
    with pytest.raises(ValueError, match=re.escape(f"the info file has {five} (sample ")):
        _dataset(dataroot, str(tmp_path / "late.json"), camera_names=CAMERA_NAMES)
    with pytest.raises(ValueError, match="once each"):
        _dataset(dataroot, info_file, camera_names=["CAM_FRONT", "CAM_FRONT"])


def _stand_in_detector(camera_names=CAMERA_NAMES) -> BEVFormerV2:
    encoder = BEVEncoder(
        embed_dims=8,
        num_layers=1,
        grid=BEVGrid(2, 2),
        num_heads=2,
        ffn_dims=8,
        camera_names=camera_names,
    )
    return BEVFormerV2(
        img_backbone=nn.Identity(),
        img_neck=nn.Identity(),
        bev=TemporalBEV(encoder),
        pts_bbox_head=nn.Identity(),
        criterion=nn.Identity(),
        post_processor=nn.Identity(),
        use_grid_mask=False,
    )


def test_detector_refuses_a_batch_of_other_cameras(canonical, tmp_path):
    dataroot, info_file = canonical
    model = _stand_in_detector()
    assert model.camera_names == CAMERA_NAMES
    assert model.bev.encoder.num_cams == 6 and model.bev.encoder.cams_embeds.shape == (6, 8)
    good = _batch(_dataset(dataroot, info_file, camera_names=CAMERA_NAMES))
    check_cameras(good["meta"], model.camera_names)  # the model's own cameras: accepted

    shuffled = [CAMERA_NAMES[i] for i in (1, 0, 2, 3, 4, 5)]
    other = _rewrite(info_file, str(tmp_path / "swapped.json"), shuffled)
    bad = _batch(_dataset(dataroot, other))  # file order: front-right first
    with pytest.raises(ValueError) as err:
        model(**bad, mode="tensor")
    text = str(err.value)
    assert f"camera order {shuffled}" in text
    assert f"model was built for the cameras {list(CAMERA_NAMES)}" in text
    # a 5-camera model refuses the 6-camera batch the same way
    five = _stand_in_detector(CAMERA_NAMES[:5])
    assert five.bev.encoder.cams_embeds.shape == (5, 8)
    with pytest.raises(ValueError, match=r"built for the cameras \['CAM_FRONT'"):
        five(**good, mode="loss")


def test_encoder_camera_count_follows_camera_names():
    with pytest.raises(ValueError, match="num_cams=6 but camera_names lists 2 cameras"):
        BEVEncoder(grid=BEVGrid(), camera_names=["CAM_FRONT", "CAM_BACK"], num_cams=6)
    with pytest.raises(ValueError, match="once each"):
        BEVEncoder(grid=BEVGrid(), camera_names=[])
    enc = BEVEncoder(
        embed_dims=8, num_layers=1, grid=BEVGrid(2, 2), num_heads=2, ffn_dims=8, num_levels=1
    )
    feats = [torch.zeros(1, 5, 8, 4, 4)]  # five cameras for a six-camera encoder
    with pytest.raises(ValueError, match=r"embeddings for 6 cameras \['CAM_FRONT'.*got features"):
        enc.flatten_features(feats)
