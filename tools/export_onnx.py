"""Export a trained BEVFormer v2 to ONNX (standard operators; runs in stock onnxruntime).

    python tools/export_onnx.py CONFIG CKPT --out model.onnx [--opset 17] [--dynamic-batch]
        [--image-size H W] [--check DATAROOT] [--cfg-options key=value ...]

The model of CONFIG gets CKPT's weights (strict: this project's or an official BEVFormer v2
file) and its inference path is written with the deformable operators decomposed into
``GridSample`` (``bevformer/deploy/onnx_export.py``: inputs ``img [B, N, 3, H, W]`` from the
test pipeline and ``lidar2img [B, N, 4, 4]``; outputs the coder's top-k ``boxes``,
``scores``, ``labels``, a ``valid`` mask and the ``indices`` of the (query, class) pairs;
fusion configs also take the past keyframes' neck maps and return the current one's). H, W
default to the padded size of the config's test pipeline. With ``--check`` the first
test sample of DATAROOT runs through onnxruntime and through PyTorch and the largest
differences per (query, class) pair are printed. Options the export cannot represent
(streaming, hybrid queries, a coder score threshold) stop it with a message naming them.
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
        choices=("decomposed",),
        default="decomposed",
        help="form of the deformable operators: decomposed into standard ONNX operators",
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


def compare(path: str, wrapped: ExportModel, data: dict) -> dict[str, float | int]:
    """onnxruntime vs PyTorch on one batch, per (query, class) pair (``compare_topk``); past
    slots (fusion configs) get the neck maps of the batch's past images."""
    import onnxruntime

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
        expected = wrapped(*inputs)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {name: t.numpy() for name, t in zip(wrapped.input_names, inputs, strict=True)}
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
            model, args.out, size, opset=args.opset, dynamic_batch=args.dynamic_batch
        )
    except ExportError as err:
        print(f"export_onnx: {err}", file=sys.stderr)
        return 2
    H, W = size
    names = ", ".join(wrapped.input_names[:3]) + ("" if len(wrapped.input_names) <= 3 else ", ...")
    print(f"wrote {args.out}: inputs {names} (img [B, N, 3, {H}, {W}]); opset {args.opset}")
    if args.check:
        data = collate([build_dataset(cfg.test_dataloader.dataset)[0]])
        print(f"onnxruntime vs PyTorch: {compare(args.out, wrapped, data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
