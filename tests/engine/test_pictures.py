"""Pictures users look at: class colours and labels, the threshold line, the sample selection,
lidar points and ego path, the H.264 clip and the Rerun recording read back."""

from __future__ import annotations

import json
import math

import imageio_ffmpeg
import numpy as np
import pyarrow as pa
import pytest
import rerun as rr

from bevformer.data.infos import load_infos
from bevformer.structures.boxes import boxes_to_global
from bevformer.structures.frames import invert
from bevformer.visualization import (
    SampleView,
    class_color,
    ego_trajectory,
    load_lidar_points,
    mp4_video_codec,
    render_results,
    render_sample,
    sample_view,
    select_infos,
)
from bevformer.visualization.recording import ENTITIES

TILE = 200  # camera tile width: small pictures keep the tests fast


def _val(tiny_dataroot):
    return load_infos(str(tiny_dataroot / "nuscenes_infos_temporal_val.json"))[1]


def _box(x, y, w, l, h, yaw_nus=math.pi / 2):
    """A lidar-frame box vector (z: standing on the road about 1.8 m below the lidar)."""
    return [x, y, -1.8 + h / 2, w, l, h, -yaw_nus - math.pi / 2, 0.0, 0.0]


def _entries(info, boxes, names, scores):
    """Submission entries (global frame) of lidar-frame boxes of ``info``."""
    nusc = boxes_to_global(
        np.asarray(boxes, np.float64), np.asarray(info["lidar2ego"]), np.asarray(info["ego2global"])
    )
    return [
        dict(sample_token=info["token"], translation=list(b.center), size=list(b.wlh),
             rotation=list(b.orientation.elements), velocity=[0.0, 0.0], detection_name=n,
             detection_score=s, attribute_name="")
        for b, n, s in zip(nusc, names, scores)
    ]  # fmt: skip


def test_class_colours_and_labels(tiny_dataroot):
    info = _val(tiny_dataroot)[0]
    # GT: a car 14 m ahead, a pedestrian 9 m to the left; predictions: a truck 12 m behind,
    # a bus 20 m to the right (both thick, labelled "class score")
    gt = np.array([_box(0.0, 14.0, 1.9, 4.5, 1.6), _box(-9.0, 2.0, 0.7, 0.7, 1.8)])
    pred = np.array([_box(2.0, -12.0, 2.5, 7.0, 3.0), _box(20.0, 0.0, 2.9, 11.0, 3.5, 0.0)])
    view = SampleView(
        info, gt, ["car", "pedestrian"], pred, ["truck", "bus"], np.array([0.61, 0.45]),
        score_thr=0.3, num_total=5, max_score=0.61,
    )  # fmt: skip
    prims = []
    # 400 px tiles: a 450 px BEV panel (4 px per metre), where the labels stay apart
    pic = render_sample(view, str(tiny_dataroot), tile_width=400, primitives=prims)
    assert pic.shape[1] == 3 * 400 + 450 and pic.shape[0] > 450  # legend strip below

    texts = [p for p in prims if p.rect is not None]

    def covered(p):
        return any(t.rect[0] <= p.xy[0] < t.rect[2] and t.rect[1] <= p.xy[1] < t.rect[3]
                   for t in texts)  # fmt: skip

    checked = {}
    for p in prims:
        if p.kind in ("gt", "pred") and not covered(p):
            # boxes are drawn without anti-aliasing: the outline pixel is the class colour
            assert tuple(pic[p.xy[1], p.xy[0]]) == class_color(p.text), p
            checked.setdefault(p.panel, set()).add((p.kind, p.text))
    assert checked["bev"] == {("gt", "car"), ("gt", "pedestrian"), ("pred", "truck"),
                              ("pred", "bus")}  # fmt: skip
    assert ("gt", "car") in checked["CAM_FRONT"]
    assert ("pred", "truck") in checked["CAM_BACK"]
    assert ("gt", "pedestrian") in checked["CAM_FRONT_LEFT"] | checked["CAM_BACK_LEFT"]
    labels = {(p.panel, p.text): p for p in prims if p.kind == "label"}
    assert {"truck 0.61", "bus 0.45"} <= {t for panel, t in labels if panel == "bev"}
    assert ("CAM_BACK", "truck 0.61") in labels
    for p in labels.values():  # the label's background is the class colour
        x0, y0, x1, y1 = p.rect
        assert tuple(pic[y0 + 1, x0 + 1]) == p.color
        assert np.any(pic[y0:y1, x0:x1] != p.color)  # and the text is written on it
    legend = {p.text for p in prims if p.kind == "legend"}
    assert "thin: ground truth" in legend and "car" in legend and "traffic_cone" in legend
    assert any("score >= 0.30" in t for t in legend)
    notes = [p.text for p in prims if p.kind == "note"]
    assert notes == ["2 of 5 predictions above threshold 0.30 (max score 0.61)"]


def test_none_above_threshold_and_auto(tiny_dataroot):
    info = _val(tiny_dataroot)[1]
    boxes = [_box(0.0, 10.0, 1.9, 4.5, 1.6), _box(5.0, -8.0, 0.6, 0.6, 1.0)]
    entries = _entries(info, boxes, ["car", "traffic_cone"], [0.12, 0.21])
    view = sample_view(info, entries, 0.3)
    assert len(view.pred) == 0
    prims = []
    render_sample(view, str(tiny_dataroot), tile_width=TILE, primitives=prims)
    notes = [p.text for p in prims if p.kind == "note"]
    assert notes == ["none above threshold 0.30 (0 of 2 predictions; max score 0.21)"]
    # auto: min(0.3, best score) shows the best box and says so
    auto = sample_view(info, entries, "auto")
    assert auto.score_thr == pytest.approx(0.21) and auto.pred_names == ["traffic_cone"]
    np.testing.assert_allclose(auto.pred[0, :2], [5.0, -8.0], atol=1e-6)  # back in lidar
    prims = []
    render_sample(auto, str(tiny_dataroot), tile_width=TILE, primitives=prims)
    assert any("auto" in p.text for p in prims if p.kind == "legend")
    assert [p.text for p in prims if p.kind == "note"] == [
        "1 of 2 predictions above threshold 0.21 (max score 0.21)"
    ]


def test_selection_points_and_trajectory(tiny_dataroot):
    infos = _val(tiny_dataroot)
    scene = infos[0]["scene_name"]
    assert [i["token"] for i in select_infos(infos, scenes=[scene], max_samples=2)] == [
        i["token"] for i in infos[:2]
    ]
    assert select_infos(infos, samples=[infos[2]["token"]]) == [infos[2]]
    with pytest.raises(KeyError, match="are not in the info file; it has"):
        select_infos(infos, scenes=["scene-9999"])
    with pytest.raises(KeyError, match="sample token"):
        select_infos(infos, samples=["nope"])
    points = load_lidar_points(infos[0], str(tiny_dataroot))
    assert points.dtype == np.float32 and points.shape[1] == 5 and len(points) > 100
    assert load_lidar_points({**infos[0], "lidar_path": "samples/none.bin"}, "x") is None
    path = ego_trajectory(infos, 1)
    assert path.shape == (len(infos), 2)
    # the current ego origin in the lidar frame: inv(lidar2ego) applied to 0
    np.testing.assert_allclose(path[1], invert(np.asarray(infos[1]["lidar2ego"]))[:2, 3])
    # the ego drives forward: lidar y (forward) grows along the scene
    assert path[2, 1] > path[1, 1] > path[0, 1]


def _results(tmp_path, infos):
    res = {}
    for k, info in enumerate(infos):
        res[info["token"]] = _entries(info, [_box(1.0, 10.0 + k, 1.9, 4.5, 1.6)], ["car"], [0.5])
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": {}, "results": res}))
    return str(path)


def test_rerun_recording_two_samples(tiny_dataroot, tmp_path):
    infos = _val(tiny_dataroot)
    rrd = tmp_path / "not_yet_made" / "out.rrd"  # the folder is created
    paths = render_results(
        str(tiny_dataroot / "nuscenes_infos_temporal_val.json"), str(tiny_dataroot),
        str(tmp_path / "vis"), _results(tmp_path, infos), samples=[i["token"] for i in infos[:2]],
        rerun_file=str(rrd), tile_width=TILE, log=None,
    )  # fmt: skip
    assert len(paths) == 2
    rec = rr.dataframe.load_recording(str(rrd))
    table = rec.view(index="timestamp", contents="/**").select().read_all()
    # the timestamp timeline holds nanoseconds since the epoch
    got = table.column("timestamp").cast(pa.int64()).to_pylist()
    assert got == [infos[0]["timestamp"] * 1000, infos[1]["timestamp"] * 1000]
    expected = {
        f"/{ENTITIES['gt']}:HalfSize3D",
        f"/{ENTITIES['pred']}:HalfSize3D",
        f"/{ENTITIES['pred']}:Text",
        f"/{ENTITIES['points']}:Position3D",
        f"/{ENTITIES['ego']}:Translation3D",
        f"/{ENTITIES['lidar']}:Translation3D",
        *(f"/cameras/{c}:Blob" for c in infos[0]["cams"]),
    }
    assert expected <= set(table.column_names), sorted(table.column_names)
    for column in expected:  # every entity is logged at both timestamps
        assert all(v is not None for v in table.column(column).to_pylist()), column
    assert table.column(f"/{ENTITIES['pred']}:Text").to_pylist() == [["car 0.50"]] * 2
    assert table.column(f"/{ENTITIES['gt']}:HalfSize3D").to_pylist()[0] is not None


def test_mp4_is_h264(tiny_dataroot, tmp_path):
    info_file = str(tiny_dataroot / "nuscenes_infos_temporal_val.json")
    render_results(
        info_file, str(tiny_dataroot), str(tmp_path), max_samples=3, video="mp4",
        tile_width=TILE, log=None,
    )  # fmt: skip
    clip = next(tmp_path.glob("*.mp4"))
    assert mp4_video_codec(str(clip)) == ["avc1"]  # H.264 sample entry
    reader = imageio_ffmpeg.read_frames(str(clip))
    meta = next(reader)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert sum(1 for _ in reader) == 3
    with open(clip, "rb") as f:  # +faststart: the index (moov) before the media (mdat)
        data = f.read()
    assert data.index(b"moov") < data.index(b"mdat")


def test_visualize_cli_names_an_unknown_scene_without_traceback(tiny_dataroot, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[2] / "tools" / "visualize.py"
    info_file = tiny_dataroot / "nuscenes_infos_temporal_val.json"
    args = ["--infos", str(info_file), "--dataroot", str(tiny_dataroot), "--out-dir", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, str(tool), *args, "--scene", "scene-9999"], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "error: scene(s) ['scene-9999'] are not in the info file; it has" in run.stderr
    assert "Traceback" not in run.stderr
