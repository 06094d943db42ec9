"""Write the temporal info files of a nuScenes-format dataroot.

    python tools/create_data.py --dataroot data/nuscenes/synthetic --version v1.0-mini

writes ``{prefix}_infos_temporal_train.json`` and ``..._val.json`` (``..._test.json`` for
v1.0-test) into ``--out-dir`` (default: the dataroot). Each records the nuScenes version and
split it was made from, which a run checks against its config. Image paths in them are relative
to the dataroot: configs name info files relative to their ``data_root``. Format:
``docs/CONVENTIONS.md``.

    python tools/create_data.py --dataroot data/nuscenes --from-pkl nuscenes_infos_temporal_val.pkl

converts an official BEVFormer (or mmdetection3d 0.17) ``.pkl`` info file instead: it is read
without running code from it, checked against the dataroot's tables and written as the JSON
info file of its split (``bevformer/data/official_infos.py``).
"""

from __future__ import annotations

import argparse
import sys
import time

from bevformer.data.infos import CAMERA_NAMES, SPLITS, create_infos

DEFAULT_VERSION = "v1.0-mini"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataroot", required=True, help="folder holding <version>/ and samples/")
    parser.add_argument(
        "--version",
        default=None,
        choices=sorted(SPLITS),
        help=f"nuScenes version (default: {DEFAULT_VERSION}; with --from-pkl: the file's own)",
    )
    parser.add_argument("--out-dir", default=None, help="where the info files go (dataroot)")
    parser.add_argument("--prefix", default="nuscenes", help="info file name prefix")
    parser.add_argument(
        "--cameras",
        nargs="+",
        default=None,
        help="camera channels to include, in this order (default: the six nuScenes cameras; "
        "with --from-pkl: the file's cameras)",
    )
    parser.add_argument(
        "--from-pkl",
        action="append",
        default=[],
        metavar="FILE",
        help="convert this official BEVFormer nuscenes_infos_temporal_{train,val,test}.pkl "
        "(repeatable) instead of building the infos from the tables",
    )
    args = parser.parse_args(argv)
    if args.from_pkl and args.cameras is not None:
        parser.error("--cameras cannot be combined with --from-pkl (the .pkl fixes the cameras)")
    return args


def convert_pkls(args: argparse.Namespace) -> None:
    from bevformer.data.official_infos import convert_official_file

    for pkl in args.from_pkl:
        path, metadata, infos = convert_official_file(
            pkl, args.dataroot, args.version, out_dir=args.out_dir, prefix=args.prefix
        )
        boxes = sum(len(info["gt_boxes"]) for info in infos)
        cameras = len(metadata["camera_names"])
        print(
            f"{metadata['split']}: {len(infos)} samples, {boxes} boxes, {cameras} cameras "
            f"({metadata['dataset_version']}, from {pkl}) -> {path}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.from_pkl:
        convert_pkls(args)
    else:
        written = create_infos(
            args.dataroot,
            args.version or DEFAULT_VERSION,
            out_dir=args.out_dir,
            prefix=args.prefix,
            cameras=args.cameras or list(CAMERA_NAMES),
        )
        for split, path in written.items():
            print(f"{split}: {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
