"""Pictures: the BEV feature panel's orientation and a full render with the heat map."""

from __future__ import annotations

import cv2
import numpy as np
import rerun as rr
import torch

from bevformer.builder import build_model
from bevformer.visualization import detector_bev_heatmap, draw_bev_heatmap, render_results


def test_heatmap_orientation():
    # a hot cell at row 7 of 8 (lidar y = +44.8 m: ahead) and column 0 (x = -44.8 m: left)
    heat = np.zeros((8, 8))
    heat[7, 0] = 1.0
    pic = draw_bev_heatmap(
        heat, (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), np.zeros((0, 9)), size=220, extent=55
    )
    # 2 px per metre: x = -44.8 -> column 110 - 89.6 = 20; y = +44.8 -> row 110 - 89.6 = 20
    hot = cv2.applyColorMap(np.full((1, 1), 255, np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0]
    np.testing.assert_array_equal(pic[20, 20], hot)
    np.testing.assert_array_equal(pic[150, 190], pic[120, 160])  # a cold cell elsewhere
    assert not np.array_equal(pic[150, 190], hot)


def test_render_with_bev_heatmap(tiny_cfg, tiny_dataroot, tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pth"
    torch.save({"state_dict": build_model(cfg.model).state_dict()}, ckpt)
    info_file = str(tiny_dataroot / "nuscenes_infos_temporal_val.json")
    heat = detector_bev_heatmap(cfg, str(ckpt), str(tiny_dataroot), info_file)
    rrd = tmp_path / "heat.rrd"
    paths = render_results(
        info_file, str(tiny_dataroot), str(tmp_path / "vis"), max_samples=2, bev_heatmap=heat,
        rerun_file=str(rrd), log=None,
    )  # fmt: skip
    assert len(paths) == 2
    pic = cv2.imread(paths[0])
    # 2 rows of 533 x 300 camera tiles (160x90 images), two 600 x 600 BEV panels, the legend
    assert pic.shape[1:] == (3 * 533 + 2 * 600, 3) and pic.shape[0] > 600
    panel = pic[:600, 3 * 533 + 600 :]
    assert panel[300 - 100 : 300 + 100, 300 - 100 : 300 + 100].std() > 1  # features vary
    # the recording carries the heat map as an image at both samples
    table = rr.dataframe.load_recording(str(rrd)).view(index="frame", contents="/**")
    blobs = table.select().read_all().column("/bev/heatmap:Blob").to_pylist()
    assert len(blobs) == 2 and all(b is not None for b in blobs)
