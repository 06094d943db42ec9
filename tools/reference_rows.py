"""Score the ground-truth references (``bevformer/evaluation/references.py``) with DetectionEval.

    python tools/reference_rows.py DATAROOT [--version v1.0-mini] [--split val]
        [--references gt zero-velocity previous-frame] [--position-noise SIGMA ...]
        [--work-dir DIR]

For each reference the split's ground truth (DATAROOT/nuscenes_infos_temporal_<split>.json) is
written as a submission and scored by the official devkit on the devkit split of those
keyframes (``mini_val`` for v1.0-mini val, ``mini_train`` for its train split). Prints one
results-table row per reference: NDS, mAP, mATE, mAOE, mAVE, mAAE -- ``zero-velocity`` is the
mAVE floor of a detector that places every box and has learned nothing about motion.
``--position-noise`` adds one ``previous-frame`` row per sigma (m): the velocity differenced
from centres placed with that error per axis in every keyframe (the placement precision a
two-frame velocity needs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

from bevformer.data.infos import SPLITS, load_infos
from bevformer.evaluation import evaluate_nds, write_submission
from bevformer.evaluation.references import REFERENCES, reference_results

COLUMNS = ("NDS", "mAP", "mATE", "mAOE", "mAVE", "mAAE")
# (version, info split) -> the devkit's evaluation split of those keyframes, for the splits
# with ground truth to score (``SPLITS`` without v1.0-test)
EVAL_SETS = {
    (version, split): devkit
    for version, splits in SPLITS.items()
    for split, devkit in splits.items()
    if devkit != "test"
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataroot", help="nuScenes-format dataroot with its info files")
    parser.add_argument("--version", default="v1.0-mini", help="dataset version (v1.0-mini)")
    parser.add_argument("--split", default="val", help="info split to score (val)")
    parser.add_argument("--references", nargs="+", default=list(REFERENCES), choices=REFERENCES)
    parser.add_argument(
        "--position-noise",
        nargs="+",
        type=float,
        default=[],
        metavar="SIGMA",
        help="extra previous-frame rows, centres displaced by N(0, SIGMA^2) m per axis",
    )
    parser.add_argument("--work-dir", help="where submissions and metric files go (temporary)")
    args = parser.parse_args(argv)
    bad = [sigma for sigma in args.position_noise if not sigma >= 0]
    if bad:
        parser.error(f"--position-noise takes sigmas >= 0 (metres), got {bad}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    eval_set = EVAL_SETS.get((args.version, args.split))
    if eval_set is None:
        known = ", ".join(f"{v} {s}" for v, s in EVAL_SETS)
        raise SystemExit(f"no devkit split for {args.version} {args.split}; known: {known}")
    info_file = os.path.join(args.dataroot, f"nuscenes_infos_temporal_{args.split}.json")
    _, infos = load_infos(info_file)
    work = args.work_dir or tempfile.mkdtemp(prefix="bevformer-references-")
    # (row label, reference, sigma of the centres in m, metric directory)
    runs = [(kind, kind, 0.0, kind) for kind in args.references]
    runs += [
        (f"previous-frame, centres off by N(0, {s:g}^2) m", "previous-frame", s, f"noise_{s:g}m")
        for s in args.position_noise
    ]
    rows = []
    for label, kind, sigma, name in runs:
        out = os.path.join(work, name)
        os.makedirs(out, exist_ok=True)
        path = write_submission(
            reference_results(infos, kind, position_noise=sigma),
            os.path.join(out, "results_nusc.json"),
            expected_tokens=[info["token"] for info in infos],
        )
        metrics = evaluate_nds(path, args.dataroot, args.version, output_dir=out, eval_set=eval_set)
        rows.append((label, metrics))
    print(f"\n{args.dataroot} ({args.version}, {args.split}: {len(infos)} keyframes)\n")
    print("| reference | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for label, metrics in rows:
        print(f"| {label} | " + " | ".join(f"{metrics[c]:.3f}" for c in COLUMNS) + " |")
    print(f"\nmetric files under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
