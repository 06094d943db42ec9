"""Convert an official BEVFormer v2 checkpoint (fundamentalvision/BEVFormer) for this project.

    python tools/convert_checkpoint.py CONFIG IN.pth OUT.pth [--cfg-options key=value ...]

CONFIG is this project's config matching the checkpoint. Official bevformerv2-r50-t1-base-24ep:
projects/configs/bevformerv2/bevformerv2_r50_1600x640_t1-base_24ep.py; official t1: the same
with ``--cfg-options model.pts_bbox_head.group_detr=11``; official t2/t8 also need
``model.bev.frames`` and a ``ResNetFusion`` as ``model.bev.fusion`` (a config whose ``_base_``
is the t1-base one, setting them as the internimage-xl t2/t8 configs do over their t1).

The file is read without running code from it, renamed, class-reordered and reshaped
(:mod:`bevformer.models.official`), loaded strictly into the model built from CONFIG as a
check, and written as ``{"state_dict", "meta"}`` (the meta records the source file, its
SHA-256, the converter and both class orders). OUT is written atomically and never replaces
IN. The result loads with ``load_from`` / ``tools/test.py CONFIG OUT.pth``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import os.path as osp
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from backbones.checkpoint import read_checkpoint
from bevformer.builder import build_model
from bevformer.engine.launch import DictAction, load_config
from bevformer.models.official import convert_official_bevformerv2, is_official_bevformerv2

CONVERTER = "bevformer.models.official.convert_official_bevformerv2"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="this project's config matching the checkpoint")
    parser.add_argument("input", help="official BEVFormer v2 checkpoint (.pth)")
    parser.add_argument("output", help="where to write the converted checkpoint")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value"
    )
    return parser.parse_args(argv)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Numbers, strings and containers of them (what ``weights_only`` loading accepts)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return None if any(v is None and o is not None for v, o in zip(items, value)) else items
    return None


def source_meta(checkpoint: Any) -> dict[str, Any]:
    """The plain entries of the official checkpoint's ``meta`` (mmcv version, epoch, config
    text, CLASSES); objects the safe reader replaced are left out."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping):
        return {}
    out = {}
    for key, value in meta.items():
        plain = _plain(value)
        if plain is not None:
            out[str(key)] = plain
    return out


def convert(
    config: str, src: str, dst: str, cfg_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Converts ``src`` into ``dst`` for ``config``; returns the written checkpoint dict."""
    if osp.realpath(src) == osp.realpath(dst):
        raise ValueError(f"OUT must differ from IN ({src}); the input is never overwritten")
    if not osp.isfile(src):
        raise FileNotFoundError(f"checkpoint {src!r} does not exist")
    cfg = load_config(config, cfg_options)
    model = build_model(cfg.model)
    checkpoint = read_checkpoint(src)
    if not isinstance(checkpoint, Mapping) or not is_official_bevformerv2(checkpoint):
        raise ValueError(
            f"{src} is not an official BEVFormer v2 checkpoint (no pts_bbox_head.transformer.* "
            "or fcos3d_bbox_head.* keys); checkpoints of this project load directly with "
            "load_from"
        )
    converted, report = convert_official_bevformerv2(checkpoint, model)
    model.load_state_dict(converted, strict=True)  # the check: every tensor fits
    out = {
        "state_dict": converted,
        "meta": {
            "converted_from": osp.basename(src),
            "source_sha256": _sha256(src),
            "source_meta": source_meta(checkpoint),
            "converter": CONVERTER,
            "config": osp.basename(config),
            "classes": list(report.classes),
            "official_classes": list(report.official_classes),
            "dropped": list(report.dropped),
        },
    }
    tmp = dst + ".tmp"
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    try:
        torch.save(out, tmp)
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    print(report.format())
    print(f"wrote {dst} ({len(converted)} tensors; loads strictly into {osp.basename(config)})")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        convert(args.config, args.input, args.output, args.cfg_options)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
