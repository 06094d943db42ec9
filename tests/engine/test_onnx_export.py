"""ONNX export (decomposed operators) runs in stock onnxruntime and gives PyTorch's boxes:
within 1e-4 m and scores within 1e-5 (fp32) on real test samples of the tiny t1 config, of the
t2 config keyframe after keyframe (the neck maps passed from call to call) and of the
streaming configs (the BEV passed back in with the ego motion, equal to the Detector API);
the export's top-k equals predict mode's boxes; the custom form has one node per operator,
passes the checker, its schemas infer the shapes, and it runs in onnx.reference with the
kernels as the operators; options the export cannot represent are refused by name; a wrong
input shape is onnxruntime's error naming the input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from bevformer.builder import build_dataset, build_model
from bevformer.data.collate import collate
from bevformer.deploy import ExportError, ExportModel, export_onnx
from bevformer.deploy.onnx_export import compare_topk, padded_test_size

REPO = Path(__file__).resolve().parents[2]
T1 = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t1_12ep.py"
HYBRID = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t1-hybrid_12ep.py"
T2 = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2_12ep.py"
T2_STREAM = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2-stream_12ep.py"


@pytest.fixture(scope="module")
def exported(tiny_cfg, tmp_path_factory):
    """(config, model, path of its ONNX file, a test batch)."""
    cfg = tiny_cfg(T1)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    path = tmp_path_factory.mktemp("onnx") / "t1.onnx"
    size = padded_test_size(cfg.test_dataloader.dataset.transforms)
    wrapped = export_onnx(model, path, size)
    # the exporter restores the wrapper's mode afterwards: the model must stay in eval mode
    assert not any(m.training for m in wrapped.modules())
    data = collate([build_dataset(cfg.test_dataloader.dataset)[1]])
    return cfg, model, path, data


def _run(path: Path, data: dict) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {"img": data["img"][:, 0].numpy(), "lidar2img": data["lidar2img"][:, 0].numpy()}
    return session.run(None, inputs)


def test_the_file_has_standard_operators_only(exported):
    _, _, path, _ = exported
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    domains = {node.domain for node in graph.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert "GridSample" in {node.op_type for node in graph.graph.node}


def test_onnxruntime_equals_pytorch(exported):
    _, model, path, data = exported
    got = [torch.from_numpy(v) for v in _run(path, data)]
    with torch.no_grad():
        expected = ExportModel(model)(data["img"][:, 0], data["lidar2img"][:, 0])
        predicted = model(**data, mode="predict")[0]
    result = compare_topk(expected, got)
    k = expected[1].shape[1]
    assert result["matched"] >= k - 2, result  # a pair may trade places at a tie at rank k
    assert result["boundary_gap"] < 1e-5, result
    assert result["scores_max_abs"] < 1e-5 and result["boxes_max_abs_m"] < 1e-4, result
    assert result["label_valid_mismatches"] == 0, result
    # the export's valid top-k is what predict mode returns
    keep = expected[3][0]
    for key, value in zip(("boxes", "scores", "labels"), expected[:3], strict=True):
        assert torch.equal(value[0][keep], predicted[key])


def _op_types(graph: onnx.GraphProto) -> set[str]:
    """Operator types of ``graph`` and of its subgraphs (``If`` branches, loops)."""
    kinds = set()
    for node in graph.node:
        kinds.add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                kinds |= _op_types(sub)
    return kinds


def test_hybrid_queries_equal_pytorch_and_predict_mode(tiny_cfg, tmp_path):
    """t1-hybrid: the perspective head's detections after its NMS become decoder queries
    inside the graph (static shapes); onnxruntime equals PyTorch's export path, whose
    proposals and boxes equal predict mode's (eager NMS and lifting)."""
    from bevformer.deploy.hybrid_export import static_proposals

    cfg = tiny_cfg(HYBRID)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    path = tmp_path / "hybrid.onnx"
    wrapped = export_onnx(model, path, (64, 160))
    assert wrapped.input_names == ["img", "lidar2img", "intrinsics", "cam2lidar"]
    assert "NonMaxSuppression" in _op_types(onnx.load(str(path)).graph)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dataset = build_dataset(cfg.test_dataloader.dataset)
    for i in range(2):
        data = collate([dataset[i]])
        inputs = [data[key][:, 0] for key in ("img", "lidar2img", "intrinsics", "cam2lidar")]
        with torch.no_grad():
            expected = wrapped(*inputs)
            predicted = model(**data, mode="tensor")
            feats = model.extract_feat(inputs[0], None, augment=False)
            static, _ = static_proposals(
                model.perspective, feats, *inputs[2:], model.grid, (64, 160)
            )
            boxes = model(**data, mode="predict")[0]
        eager = predicted["proposals"]
        assert int(eager.valid.sum()) > 10, "the random head should detect something"
        for field in ("centers", "reference", "labels", "scores", "cameras", "pixels", "valid"):
            assert torch.equal(getattr(static, field), getattr(eager, field)), (i, field)
        keep = expected[3][0]
        for key, value in zip(("boxes", "scores", "labels"), expected[:3], strict=True):
            assert torch.equal(value[0][keep], boxes[key]), (i, key)
        got = session.run(None, {n: t.numpy() for n, t in zip(wrapped.input_names, inputs)})
        result = compare_topk(expected, [torch.from_numpy(v) for v in got])
        assert result["matched"] >= 18 and result["boundary_gap"] < 1e-5, (i, result)
        assert result["scores_max_abs"] < 1e-5 and result["boxes_max_abs_m"] < 1e-4, (i, result)
        assert result["label_valid_mismatches"] == 0, (i, result)


def test_compare_topk_catches_a_wrong_score():
    torch.manual_seed(0)
    scores, order = torch.rand(1, 5).sort(descending=True)
    outputs = [torch.rand(1, 5, 9), scores, order % 2, torch.ones(1, 5, dtype=torch.bool), order]
    same = compare_topk(outputs, outputs)
    assert same == {**same, "matched": 5, "scores_max_abs": 0.0, "boundary_gap": 0.0}
    off = [t.clone() for t in outputs]
    off[1][0, 2] += 1e-3
    assert compare_topk(outputs, off)["scores_max_abs"] > 9e-4
    tie = [t.clone() for t in outputs]
    tie[4][0, 4] = 99  # another pair at rank k with the same score: a tie at the boundary
    assert compare_topk(outputs, tie)["matched"] == 4
    assert compare_topk(outputs, tie)["boundary_gap"] == 0.0
    swap = [t.clone() for t in tie]
    swap[1][0, 4] -= 0.5  # ... with a score far below: not a tie
    assert compare_topk(outputs, swap)["boundary_gap"] == pytest.approx(0.5)


def test_fusion_keyframes_in_a_row_equal_pytorch(tiny_cfg, tmp_path):
    """t2 (ResNetFusion of the previous and the current keyframe): each keyframe's neck maps
    come out of one call and go into the next as the past slot's; onnxruntime equals PyTorch
    frame after frame, and PyTorch's export path equals predict mode on the dataset's items
    (which run the backbone on the past images again)."""
    cfg = tiny_cfg(T2)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    path = tmp_path / "t2.onnx"
    wrapped = export_onnx(model, path, padded_test_size(cfg.test_dataloader.dataset.transforms))
    names = wrapped.input_names
    assert names[:3] == ["img", "lidar2img", "frame_valid"] and len(wrapped.output_names) > 5
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dataset = build_dataset(cfg.test_dataloader.dataset)
    current = model.current_slot
    with torch.no_grad():
        maps = model.extract_feat(torch.zeros(1, 6, 3, 64, 160), None, augment=False)
    torch_past = ort_past = [torch.zeros_like(m) for m in maps[: wrapped.num_levels]]
    for i in range(len(dataset)):
        data = collate([dataset[i]])
        head = (data["img"][:, current], data["lidar2img"], data["frame_valid"])
        with torch.no_grad():
            expected = wrapped(*head, *torch_past)
            predicted = model(**data, mode="predict")[0]
        feed = {n: t.numpy() for n, t in zip(names, (*head, *ort_past), strict=True)}
        got = [torch.from_numpy(v) for v in session.run(None, feed)]
        result = compare_topk(expected[:5], got[:5])
        assert result["matched"] >= 18 and result["boundary_gap"] < 1e-5, (i, result)
        assert result["scores_max_abs"] < 1e-5 and result["boxes_max_abs_m"] < 1e-4, (i, result)
        assert result["label_valid_mismatches"] == 0, (i, result)
        keep = expected[3][0]
        for key, value in zip(("boxes", "scores", "labels"), expected[:3], strict=True):
            assert torch.equal(value[0][keep], predicted[key]), (i, key)
        torch_past, ort_past = list(expected[5:]), got[5:]
        assert bool(data["frame_valid"][0, 0]) == (i > 0)


STREAM_ONE_FRAME = {
    f"{node}.frames": (0,)
    for node in ("model.bev", *(f"{s}_dataloader.dataset" for s in ("train", "val", "test")))
}


@pytest.mark.parametrize(
    ("options", "num_inputs"),
    [(STREAM_ONE_FRAME, 5), ({}, 6 + 4)],
    ids=["t1-stream", "t2-stream"],
)
def test_streaming_keyframes_in_a_row_equal_the_detector(tiny_cfg, tmp_path, options, num_inputs):
    """Streaming (v1 temporal self-attention): the previous call's ``bev`` output goes back in
    as ``prev_bev`` with the ego motion ``prev2cur`` (and, with a past slot, the neck maps as
    for fusion); keyframe after keyframe onnxruntime equals PyTorch's export path, which
    equals :class:`bevformer.apis.Detector` carrying its TemporalState -- across a scene change
    too (the first keyframe of the other scene has prev_valid False)."""
    from bevformer.apis import Detector
    from bevformer.models.batch import lidar2global_of

    cfg = tiny_cfg(T2_STREAM, **options)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    path = tmp_path / "stream.onnx"
    wrapped = export_onnx(model, path, padded_test_size(cfg.test_dataloader.dataset.transforms))
    names = wrapped.input_names
    assert len(names) == num_inputs and names[-3:] == ["prev_bev", "prev2cur", "prev_valid"]
    assert wrapped.output_names[5] == "bev"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    detector = Detector(model, cfg.test_dataloader.dataset, cfg.data_root)
    test = cfg.test_dataloader.dataset
    other = {**test, "info_file": cfg.train_dataloader.dataset.info_file, "expected_split": "train"}
    keyframes = [(d, i) for d in map(build_dataset, (test, other)) for i in range(3)]
    cur = model.current_slot
    grid = model.grid
    torch_bev = ort_bev = wrapped.scene_start()[0]
    assert torch_bev.shape == (1, grid.bev_h * grid.bev_w, model.bev.encoder.embed_dims)
    with torch.no_grad():
        maps = model.extract_feat(torch.zeros(1, 6, 3, 64, 160), None, augment=False)
    torch_past = ort_past = [torch.zeros_like(m) for m in maps[: wrapped.num_levels]]
    pose, scene = None, None
    for step, (dataset, i) in enumerate(keyframes):
        data = collate([dataset[i]])
        lidar2global = lidar2global_of(data["meta"], "cpu")
        same_scene = scene == data["meta"][0].scene_token
        prev2cur = torch.linalg.inv(lidar2global) @ pose if same_scene else torch.eye(4)[None]
        motion = [prev2cur.float(), torch.tensor([same_scene])]
        if num_inputs == 5:
            head = [data["img"][:, cur], data["lidar2img"][:, cur]]
            torch_past = ort_past = []
        else:
            head = [data["img"][:, cur], data["lidar2img"], data["frame_valid"]]
        with torch.no_grad():
            expected = wrapped(*head, *torch_past, torch_bev, *motion)
        reference = detector(dataset.infos[i])
        keep = expected[3][0]
        for key, value in zip(("boxes", "scores", "labels"), expected[:3], strict=True):
            assert torch.equal(value[0][keep], reference[key]), (step, key)
        feed = [t.numpy() for t in (*head, *ort_past, ort_bev, *motion)]
        got = [torch.from_numpy(v) for v in session.run(None, dict(zip(names, feed, strict=True)))]
        result = compare_topk(expected[:5], got[:5])
        assert result["matched"] >= 18 and result["boundary_gap"] < 1e-5, (step, result)
        assert result["scores_max_abs"] < 1e-5 and result["boxes_max_abs_m"] < 1e-4, (step, result)
        assert result["label_valid_mismatches"] == 0, (step, result)
        assert float((expected[5] - got[5]).abs().max()) < 1e-4, step
        torch_bev, ort_bev = expected[5], got[5]
        if num_inputs > 5:
            torch_past, ort_past = list(expected[6:]), got[6:]
        pose, scene = lidar2global, data["meta"][0].scene_token


@pytest.fixture(scope="module")
def exported_custom(exported, tmp_path_factory):
    """The t1 model of ``exported`` in the custom form, run in onnx.reference with this
    project's kernels as the two operators (what a runtime with the plugins does): (path, the
    outputs, the shapes of the custom nodes' outputs in that run)."""
    from onnx.reference import ReferenceEvaluator

    from bevformer.deploy.custom_ops import REFERENCE_OPS

    _, model, _, data = exported
    path = tmp_path_factory.mktemp("onnx") / "t1-custom.onnx"
    export_onnx(model, path, (64, 160), ops_form="custom")
    graph = onnx.load(str(path))
    custom = [n.output[0] for n in graph.graph.node if n.domain == "bevformer"]
    evaluator = ReferenceEvaluator(str(path), new_ops=list(REFERENCE_OPS))
    feed = {"img": data["img"][:, 0].numpy(), "lidar2img": data["lidar2img"][:, 0].numpy()}
    names = [o.name for o in graph.graph.output]
    results = evaluator.run([*names, *custom], feed)
    shapes = {name: list(v.shape) for name, v in zip(custom, results[len(names) :])}
    return path, [torch.from_numpy(np.asarray(v)) for v in results[: len(names)]], shapes


def test_the_custom_form_has_one_node_per_operator(exported_custom):
    from bevformer.deploy.custom_ops import register_schemas

    path, _, shapes = exported_custom
    graph = onnx.load(str(path))
    kinds = [(n.domain, n.op_type) for n in graph.graph.node]
    # tiny backbone: 4 stages x 1 block; encoder self- and cross-attention, decoder cross
    assert kinds.count(("bevformer", "DCNv3")) == 4
    assert kinds.count(("bevformer", "MultiScaleDeformableAttention")) == 3
    assert not any(op == "GridSample" for _, op in kinds)
    assert {o.domain: o.version for o in graph.opset_import}["bevformer"] == 1
    register_schemas()
    onnx.checker.check_model(graph, full_check=True)
    # from the inputs alone (the exporter's shapes removed), the schemas' shape inference
    # gives the shapes of the run: all of them for DCNv3; for the attention the dims that the
    # standard operators before it let ONNX know
    del graph.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(graph, strict_mode=True, data_prop=True)
    got = {
        v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.value_info
        if v.name in shapes
    }
    assert len(shapes) == 7 and got.keys() == shapes.keys()
    for name, dims in got.items():
        if "DCNv3" in name:
            assert dims == shapes[name], name
        assert len(dims) == len(shapes[name]), name
        assert all(d in (None, e) for d, e in zip(dims, shapes[name], strict=True)), name
    assert sum(d is not None for dims in got.values() for d in dims) >= 4 * 4 + 2
    dcn = next(shape for name, shape in shapes.items() if "levels.0" in name)
    assert dcn == [6, 16, 40, 32]  # 6 cameras, 64x160 / 4, 32 channels (NHWC)


def test_the_custom_form_with_the_kernels_as_plugins_equals_pytorch(exported, exported_custom):
    _, model, _, data = exported
    _, got, _ = exported_custom
    with torch.no_grad():
        expected = ExportModel(model)(data["img"][:, 0], data["lidar2img"][:, 0])
    result = compare_topk(expected, got)
    assert result["matched"] >= 18 and result["boundary_gap"] < 1e-5, result
    assert result["scores_max_abs"] < 1e-5 and result["boxes_max_abs_m"] < 1e-4, result
    assert result["label_valid_mismatches"] == 0, result


def test_custom_shape_inference_keeps_a_dynamic_batch():
    from onnx import TensorProto, helper

    from bevformer.deploy.custom_ops import register_schemas

    register_schemas()
    attrs = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1,
                 dilation_h=1, dilation_w=1, group=2, group_channels=8, offset_scale=1.0,
                 remove_center=0)  # fmt: skip
    node = helper.make_node("DCNv3", ["x", "offset", "mask"], ["y"], domain="bevformer", **attrs)
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 8, 16]),
        helper.make_tensor_value_info("offset", TensorProto.FLOAT, ["batch", 8, 8, 36]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 8, 8, 18]),
    ]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph([node], "dcnv3", inputs, [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("bevformer", 1)],
    )
    out = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output[0]
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims == ["batch", 8, 8, 16]


def test_the_custom_form_needs_the_compiled_operators(exported, tmp_path, monkeypatch):
    import bevformer.deploy.onnx_export as onnx_export

    _, model, _, _ = exported
    monkeypatch.setattr(onnx_export, "load_extension", lambda: None)
    with pytest.raises(ExportError, match="--ops decomposed"):
        export_onnx(model, tmp_path / "x.onnx", (64, 160), ops_form="custom")
    assert not (tmp_path / "x.onnx").exists()


def test_a_wrong_input_shape_names_the_input(exported):
    _, _, path, data = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    img = data["img"][:, 0].numpy()
    with pytest.raises(Exception, match="img"):
        session.run(None, {"img": img[..., :-32], "lidar2img": data["lidar2img"][:, 0].numpy()})


@pytest.mark.parametrize(
    ("config", "options", "named"),
    [
        (T2, {"model.bev.frames": (0, 1)}, "model.bev.frames=(0, 1)"),
        (T1, {"+model.post_processor.score_threshold": 0.2}, "post_processor.score_threshold"),
    ],
    ids=["future-frames", "score-threshold"],
)
def test_what_the_export_cannot_represent_is_refused(tiny_cfg, tmp_path, config, options, named):
    cfg = tiny_cfg(config, **options)
    with pytest.raises(ExportError, match=re.escape(named)):
        export_onnx(build_model(cfg.model), tmp_path / "x.onnx", (64, 160))
    assert not (tmp_path / "x.onnx").exists()


# the tiny config's own 100 queries and 300 boxes (the shrunk test config has 20 and 20)
CONFIG_QUERIES = {"model.pts_bbox_head.num_query": 100, "model.post_processor.max_num": 300}


@pytest.mark.parametrize(
    ("config", "form", "options"),
    [
        (T1, "decomposed", {}),
        (T2, "decomposed", {}),
        (T2_STREAM, "custom", CONFIG_QUERIES),
        (HYBRID, "decomposed", {}),
    ],
    ids=["t1", "t2", "t2-stream-custom", "t1-hybrid"],
)
def test_the_command_exports_and_checks(tiny_cfg, tiny_dataroot, tmp_path, config, form, options):
    cfg = tiny_cfg(config, **options)
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pth"
    torch.save({"state_dict": build_model(cfg.model).state_dict()}, ckpt)
    config = tmp_path / "config.py"
    cfg.dump(str(config))
    out = tmp_path / "model.onnx"
    command = [sys.executable, "tools/export_onnx.py", str(config), str(ckpt), "--out", str(out)]
    done = subprocess.run(
        [*command, "--ops", form, "--check", str(tiny_dataroot)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runtime = "onnx.reference" if form == "custom" else "onnxruntime"
    assert out.is_file() and f"{runtime} vs PyTorch" in done.stdout
    assert "'label_valid_mismatches': 0" in done.stdout


def test_the_latency_benchmark_times_each_runtime_against_eager(tiny_dataroot):
    from bevformer.deploy.latency import bench_latency, format_latency_table

    rows = bench_latency(
        "tiny", (64, 160), threads=1, repeats=1, dataroot=tiny_dataroot,
        backends=("eager", "onnxruntime"),
    )  # fmt: skip
    assert [r["backend"] for r in rows] == ["eager", "onnxruntime"]
    assert all("error" not in r and r["seconds"] > 0 for r in rows), rows
    assert rows[0]["ratio_to_eager"] == 1.0
    table = format_latency_table(rows)
    assert "onnxruntime" in table and "x eager" in table


XL_T1 = "projects/configs/bevformerv2/bevformerv2_internimage-xl_1600x640_t1_24ep.py"


@pytest.mark.slow  # about a minute: InternImage-XL (335M parameters) exported and run
def test_the_xl_model_at_a_small_input_equals_pytorch(tiny_cfg, tiny_dataroot, tmp_path):
    """The published architecture (InternImage-XL, 6 encoder layers, 900 queries), random
    weights, 6 cameras at 128x320 instead of 640x1600 and a 50x50 BEV instead of 200x200 (the
    decomposed spatial cross-attention samples for every camera and cell: about 8 GB per layer
    at 200x200): onnxruntime equals PyTorch."""
    from bevformer.engine.launch import load_config

    options = {
        "model.img_backbone.init_cfg": None,
        "model.bev.encoder.grid.bev_h": 50,
        "model.bev.encoder.grid.bev_w": 50,
    }
    cfg = load_config(str(REPO / XL_T1), options, data_root=str(tiny_dataroot))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    assert sum(p.numel() for p in model.img_backbone.parameters()) > 300e6
    path = tmp_path / "xl.onnx"
    export_onnx(model, path, (128, 320))
    torch.manual_seed(1)
    img = torch.randn(1, 6, 3, 128, 320)
    dataset = build_dataset(tiny_cfg(T1).test_dataloader.dataset)
    lidar2img = collate([dataset[0]])["lidar2img"][:, 0]
    # a real sample's cameras for 64x160 images, scaled to 128x320 (pixels x 2)
    lidar2img = torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])) @ lidar2img
    with torch.no_grad():
        expected = ExportModel(model)(img, lidar2img)
    del model
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"img": img.numpy(), "lidar2img": lidar2img.numpy()})
    result = compare_topk(expected, [torch.from_numpy(v) for v in got])
    k = expected[1].shape[1]
    assert k == 300 and result["matched"] >= k - 2, result
    assert result["boundary_gap"] < 1e-5, result
    assert result["scores_max_abs"] < 1e-5 and result["boxes_max_abs_m"] < 1e-4, result
    assert result["label_valid_mismatches"] == 0, result


def test_the_latency_benchmark_refuses_an_unknown_config_key():
    from bevformer.deploy.latency import bench_latency

    with pytest.raises(KeyError, match="bev_hh"):
        bench_latency("tiny", (64, 160), cfg_options={"model.bev.encoder.grid.bev_hh": 50})
