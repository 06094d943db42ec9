"""Export a trained BEVFormer v2 to ONNX (decomposed: runs in stock onnxruntime; or custom).

    python tools/export_onnx.py CONFIG CKPT --out model.onnx [--opset 17] [--dynamic-batch]
        [--ops {decomposed,custom}] [--image-size H W] [--check DATAROOT]
        [--cfg-options key=value ...]

The model of CONFIG gets CKPT's weights (strict: this project's or an official BEVFormer v2
file) and its inference path is written (``bevformer/deploy/onnx_export.py``: inputs ``img
[B, N, 3, H, W]`` from the test pipeline and ``lidar2img [B, N, 4, 4]``; outputs the coder's
top-k ``boxes``, ``scores``, ``labels``, a ``valid`` mask and the ``indices`` of the (query,
class) pairs; configs with past frames also take the past keyframes' neck maps and return
the current one's; hybrid queries take the cameras' ``intrinsics`` and ``cam2lidar``;
streaming configs take the previous BEV and the ego motion and return the new BEV).
``--ops decomposed`` (default) writes the deformable operators as ``GridSample``; ``--ops
custom`` as one ``bevformer::DCNv3`` / ``bevformer::MultiScaleDeformableAttention``
node each (``bevformer/deploy/custom_ops.py``; the TensorRT plugins of ``ops/tensorrt`` run
them). H, W default to the padded size of the config's test pipeline. With ``--check`` the
first test sample of DATAROOT runs through the file (onnxruntime; the custom form in
``onnx.reference`` with this project's kernels as the two operators) and through PyTorch, and
the largest differences per (query, class) pair are printed. Options the export cannot
represent (future frames, a coder score threshold) stop it with a message naming them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from bevformer.builder import build_dataset, build_model
from bevformer.checkpoint import load_model_weights
from bevformer.data.collate import collate
from bevformer.deploy.onnx_export import (
    OPS_FORMS,
    ExportError,
    ExportModel,
    compare_topk,
    export_onnx,
    padded_test_size,
)
from bevformer.engine.launch import DictAction, load_config


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the config the checkpoint was trained with")
    parser.add_argument("checkpoint", help="weights (.pth): this project's or official")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 16, default 17)")
    parser.add_argument("--dynamic-batch", action="store_true", help="batch size as a dynamic axis")
    parser.add_argument(
        "--ops",
        choices=OPS_FORMS,
        default="decomposed",
        help="deformable operators: decomposed into standard ONNX operators (default) or "
        "custom bevformer-domain nodes (TensorRT plugins)",
    )
    parser.add_argument(
        "--image-size", nargs=2, type=int, metavar=("H", "W"), help="padded input image size"
    )
    parser.add_argument(
        "--check", metavar="DATAROOT", help="compare onnxruntime with PyTorch on a test sample"
    )
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value"
    )
    return parser.parse_args(argv)


def compare(path: str, wrapped: ExportModel, data: dict, ops_form: str) -> dict[str, float | int]:
    """The file vs PyTorch on one batch, per (query, class) pair (``compare_topk``); past
    slots get the neck maps of the batch's past images, a streaming model no previous BEV.
    The decomposed form runs in onnxruntime, the custom form in ``onnx.reference``."""
    model = wrapped.model
    current = model.current_slot
    inputs = [data["img"][:, current]]
    with torch.no_grad():
        if wrapped.past_slots:
            inputs += [data["lidar2img"], data["frame_valid"]]
            for t in wrapped.past_slots:
                maps = model.extract_feat(data["img"][:, t], None, augment=False)
                inputs += maps[: wrapped.num_levels]
        else:
            inputs.append(data["lidar2img"][:, 0])
        if wrapped.hybrid:
            inputs += [data["intrinsics"][:, current], data["cam2lidar"][:, current]]
        if wrapped.streaming:
            inputs += wrapped.scene_start()
        expected = wrapped(*inputs)
    feed = {name: t.numpy() for name, t in zip(wrapped.input_names, inputs, strict=True)}
    if ops_form == "custom":
        from onnx.reference import ReferenceEvaluator

        from bevformer.deploy.custom_ops import REFERENCE_OPS

        got = ReferenceEvaluator(path, new_ops=list(REFERENCE_OPS)).run(None, feed)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(None, feed)
    return compare_topk(expected[:5], [torch.from_numpy(v) for v in got[:5]])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, data_root=args.check)
    model = build_model(cfg.model)
    load_model_weights(model, args.checkpoint)
    try:
        size = args.image_size or padded_test_size(cfg.test_dataloader.dataset.transforms)
        wrapped = export_onnx(
            model,
            args.out,
            size,
            opset=args.opset,
            dynamic_batch=args.dynamic_batch,
            ops_form=args.ops,
        )
    except ExportError as err:
        print(f"export_onnx: {err}", file=sys.stderr)
        return 2
    H, W = size
    names = ", ".join(wrapped.input_names[:3]) + ("" if len(wrapped.input_names) <= 3 else ", ...")
    print(
        f"wrote {args.out}: inputs {names} (img [B, N, 3, {H}, {W}]); opset {args.opset}; "
        f"deformable operators {args.ops}"
    )
    if args.check:
        data = collate([build_dataset(cfg.test_dataloader.dataset)[0]])
        runtime = "onnx.reference" if args.ops == "custom" else "onnxruntime"
        print(f"{runtime} vs PyTorch: {compare(args.out, wrapped, data, args.ops)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
