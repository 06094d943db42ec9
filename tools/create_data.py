"""Write the temporal info files of a nuScenes-format dataroot.

    python tools/create_data.py --dataroot data/nuscenes/synthetic --version v1.0-mini

writes ``{prefix}_infos_temporal_train.json`` and ``..._val.json`` (``..._test.json`` for
v1.0-test) into ``--out-dir`` (default: the dataroot). Format: ``docs/CONVENTIONS.md``.
"""

from __future__ import annotations

import argparse
import sys
import time

from bevformer.data.infos import CAMERA_NAMES, SPLITS, create_infos


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataroot", required=True, help="folder holding <version>/ and samples/")
    parser.add_argument("--version", default="v1.0-mini", choices=sorted(SPLITS))
    parser.add_argument("--out-dir", default=None, help="where the info files go (dataroot)")
    parser.add_argument("--prefix", default="nuscenes", help="info file name prefix")
    parser.add_argument(
        "--cameras",
        nargs="+",
        default=list(CAMERA_NAMES),
        help="camera channels to include, in this order (default: the six nuScenes cameras)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    written = create_infos(
        args.dataroot, args.version, out_dir=args.out_dir, prefix=args.prefix, cameras=args.cameras
    )
    for split, path in written.items():
        print(f"{split}: {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
