"""Concatenate the info files of several dataroots into one, to train on more scenes.

    python tools/merge_infos.py --out data/nuscenes/synthetic_default/train_plus_seed2.json \\
        data/nuscenes/synthetic_default/nuscenes_infos_temporal_train.json \\
        data/nuscenes/synthetic_seed2/nuscenes_infos_temporal_train.json

Each input's dataroot is the folder it lies in (where ``tools/create_data.py`` writes it), or
``--roots`` in the same order; the output's is the folder of ``--out``, and its image paths
are written relative to that folder, so a run reads it with that folder as its data root:

    python tools/train.py CONFIG --data-root data/nuscenes/synthetic_default \\
        --cfg-options train_dataloader.dataset.info_file=train_plus_seed2.json

The files must hold the same nuScenes version, split, classes and cameras, and no sample or
scene twice (``bevformer.data.infos.merge_infos``).
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

from bevformer.data.infos import merge_infos, save_infos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("infos", nargs="+", help="info files to concatenate, in this order")
    parser.add_argument("--out", required=True, help="the merged info file to write")
    parser.add_argument(
        "--roots",
        nargs="+",
        default=None,
        help="the dataroot of each info file, in the same order (default: its folder)",
    )
    args = parser.parse_args(argv)
    roots = args.roots or [osp.dirname(osp.abspath(p)) for p in args.infos]
    if len(roots) != len(args.infos):
        parser.error(f"--roots names {len(roots)} dataroots for {len(args.infos)} info files")
    if osp.exists(args.out) and osp.abspath(args.out) in map(osp.abspath, args.infos):
        parser.error(f"--out {args.out} is one of the inputs; write the merge to a new file")
    data_root = osp.dirname(osp.abspath(args.out))
    try:
        metadata, infos = merge_infos(list(zip(args.infos, roots)), data_root)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_infos(args.out, metadata, infos)
    parts = ", ".join(f"{m['samples']} from {m['info_file']}" for m in metadata["merged_from"])
    print(
        f"wrote {args.out}: {len(infos)} keyframes ({parts}), {metadata['dataset_version']} "
        f"split {metadata['split']}; read it with data_root {data_root}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
