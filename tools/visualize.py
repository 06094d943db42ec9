"""Render samples: six camera views with projected 3D boxes and a BEV plot, GT vs predictions.

python tools/visualize.py --infos DATAROOT/nuscenes_infos_temporal_val.json
    --dataroot DATAROOT [--results results_nusc.json] [--score-thr 0.3|auto]
    [--scene NAME ...] [--sample TOKEN ...] [--max-samples N]
    [--out-dir work_dirs/vis] [--video mp4|gif] [--rerun out.rrd]
    [--config CONFIG --checkpoint CKPT]   # adds the BEV feature heat map of the detector

Boxes are drawn in their class colours, ground truth thin and predictions thick with
"class score" labels; the legend lists what is drawn, the threshold and how many predictions
pass it. ``--score-thr auto`` draws, per sample, the predictions scoring at least
min(0.3, the sample's best score), so a weak model still shows its best boxes. ``--video mp4``
writes one H.264 clip per scene; ``--rerun out.rrd`` a Rerun recording (open it with
``rerun out.rrd``). With ``--config`` and ``--checkpoint`` the detector runs on every drawn
sample (the config's test pipeline on DATAROOT) and a third panel shows ``mean_c |bev|`` of
its BEV features (also in the recording).
"""

from __future__ import annotations

import argparse

from bevformer.engine.launch import load_config
from bevformer.visualization import (
    detector_bev_heatmap,
    parse_score_threshold,
    render_results,
)


def add_selection_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--score-thr``, ``--scene``, ``--sample``, ``--max-samples``."""
    parser.add_argument(
        "--score-thr",
        type=parse_score_threshold,
        default=0.3,
        help=f"{prefix}draw predictions scoring at least this (a number, or 'auto': "
        "min(0.3, best score of each sample))",
    )
    parser.add_argument("--scene", nargs="+", metavar="NAME", help=f"{prefix}only these scenes")
    parser.add_argument(
        "--sample", nargs="+", metavar="TOKEN", help=f"{prefix}only these sample tokens"
    )
    parser.add_argument("--max-samples", type=int, help=f"{prefix}draw at most this many samples")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infos", required=True, help="info file of the split to draw")
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--results", help="nuScenes submission JSON (GT only when omitted)")
    add_selection_args(parser)
    parser.add_argument(
        "--out-dir", default="work_dirs/vis", help="folder of the PNGs and clips (%(default)s)"
    )
    parser.add_argument("--video", choices=["mp4", "gif"], help="one clip per scene")
    parser.add_argument("--fps", type=float, default=2.0, help="clip frame rate (keyframes: 2 Hz)")
    parser.add_argument("--rerun", metavar="OUT.rrd", help="also write a Rerun recording")
    parser.add_argument(
        "--no-camera-labels", action="store_true", help="label boxes on the BEV only"
    )
    parser.add_argument("--config", help="detector config (with --checkpoint: BEV heat map)")
    parser.add_argument("--checkpoint", help="detector checkpoint (with --config)")
    args = parser.parse_args()
    if bool(args.config) != bool(args.checkpoint):
        parser.error("the BEV heat map needs both --config and --checkpoint")
    try:
        heat = None
        if args.config:
            cfg = load_config(args.config, data_root=args.dataroot)
            heat = detector_bev_heatmap(cfg, args.checkpoint, args.dataroot, args.infos)
        render_results(
            args.infos,
            args.dataroot,
            args.out_dir,
            results_file=args.results,
            score_thr=args.score_thr,
            max_samples=args.max_samples,
            video=args.video,
            fps=args.fps,
            bev_heatmap=heat,
            scenes=args.scene,
            samples=args.sample,
            rerun_file=args.rerun,
            camera_labels=not args.no_camera_labels,
        )
    except (FileNotFoundError, KeyError, ValueError) as err:
        # unknown scene/sample, missing files, bad results: the message says what to do
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise SystemExit(f"error: {message}") from None


if __name__ == "__main__":
    main()
