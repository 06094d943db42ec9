"""Render samples: six camera views with projected 3D boxes and a BEV plot, GT vs predictions.

python tools/visualize.py --infos DATAROOT/nuscenes_infos_temporal_val.json
    --dataroot DATAROOT [--results results_nusc.json] [--score-thr 0.3]
    [--out-dir work_dirs/vis] [--max-samples N] [--video mp4|gif]
    [--config CONFIG --checkpoint CKPT]   # adds the BEV feature heat map of the detector

With ``--config`` and ``--checkpoint`` the detector runs on every drawn sample (the config's
test pipeline on DATAROOT) and a third panel shows ``mean_c |bev|`` of its BEV features.
"""

from __future__ import annotations

import argparse

from bevformer.engine.launch import load_config
from bevformer.visualization import detector_bev_heatmap, render_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infos", required=True, help="info file of the split to draw")
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--results", help="nuScenes submission JSON (GT only when omitted)")
    parser.add_argument("--score-thr", type=float, default=0.3)
    parser.add_argument("--out-dir", default="work_dirs/vis")
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--video", choices=["mp4", "gif"])
    parser.add_argument("--config", help="detector config (with --checkpoint: BEV heat map)")
    parser.add_argument("--checkpoint", help="detector checkpoint (with --config)")
    args = parser.parse_args()
    if bool(args.config) != bool(args.checkpoint):
        parser.error("the BEV heat map needs both --config and --checkpoint")
    heat = None
    if args.config:
        cfg = load_config(args.config, data_root=args.dataroot)
        heat = detector_bev_heatmap(cfg, args.checkpoint, args.dataroot, args.infos)
    paths = render_results(
        args.infos,
        args.dataroot,
        args.out_dir,
        results_file=args.results,
        score_thr=args.score_thr,
        max_samples=args.max_samples,
        video=args.video,
        bev_heatmap=heat,
    )
    print(f"wrote {len(paths)} pictures to {args.out_dir}")


if __name__ == "__main__":
    main()
