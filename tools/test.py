"""Evaluate a checkpoint on the config's test split with the official nuScenes metric.

    python tools/test.py CONFIG CKPT [--out results.json] [--eval [bbox] | --format-only]
                         [--show-dir DIR [--score-thr T|auto] [--scene NAME ...]
                                         [--sample TOKEN ...] [--max-samples N]]
                         [--drop-past-frames]
    bash tools/dist_test.sh CONFIG CKPT NGPUS [same options]

CKPT is loaded strictly (every key and shape must match): a checkpoint of this project or an
official BEVFormer v2 one. Writes a nuScenes detection submission JSON; with ``--eval`` also
NDS, mAP, mATE, mASE, mAOE, mAVE, mAAE and per-class AP (printed and saved as JSON next to the
submission).
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import shutil
import tempfile

from mmengine.dist import is_main_process

from bevformer.engine.launch import DictAction, build_runner, finish_distributed, load_config
from bevformer.visualization import parse_score_threshold


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", help="path of the submission JSON to write")
    parser.add_argument(
        "--eval",
        nargs="*",
        default=None,
        metavar="METRIC",
        help="score with DetectionEval (mmdetection3d's '--eval bbox' is accepted: the nuScenes "
        "detection metric is the only one)",
    )
    parser.add_argument(
        "--format-only",
        action="store_true",
        help="write the submission only (e.g. for the test split), no metric",
    )
    parser.add_argument("--show-dir", help="also render BEV + camera pictures here")
    show = parser.add_argument_group("pictures (with --show-dir)")
    show.add_argument(
        "--score-thr",
        type=parse_score_threshold,
        default=0.3,
        help="draw predictions scoring at least this (a number, or 'auto': min(0.3, best "
        "score of each sample))",
    )
    show.add_argument("--scene", nargs="+", metavar="NAME", help="draw only these scenes")
    show.add_argument("--sample", nargs="+", metavar="TOKEN", help="draw only these samples")
    show.add_argument("--max-samples", type=int, help="draw at most this many samples")
    parser.add_argument(
        "--drop-past-frames",
        action="store_true",
        help="mark every past frame of every sample missing (fusion configs): the model then "
        "fills them with the current BEV, as at a scene start -- what time adds, measured",
    )
    parser.add_argument("--work-dir")
    parser.add_argument(
        "--data-root",
        help="use this dataroot instead of the config's data_root (every info file, image and "
        "metric path follows; the same as --cfg-options data_root=DIR)",
    )
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)
    return parser.parse_args()


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Normalise mmdetection3d habits (``--eval bbox``) and refuse contradictions."""
    if args.eval is not None:
        unknown = [m for m in args.eval if m != "bbox"]
        if unknown:
            raise SystemExit(
                f"--eval {' '.join(args.eval)}: the nuScenes detection metric ('bbox') is the "
                f"only one; unknown: {unknown}"
            )
    args.eval = args.eval is not None
    if args.eval and args.format_only:
        raise SystemExit("--eval and --format-only exclude each other (--format-only: no metric)")
    return args


def drop_past_frames(model) -> None:
    """Every batch reaches the model with its past slots' ``frame_valid`` False (the current
    slot kept). Refused where it would not mean "the current frame alone": single-frame and
    streaming configs (the latter carry their state past the batch)."""
    detector = getattr(model, "module", model)
    frames = detector.frames
    if len(frames) == 1 or detector.bev.temporal != "fusion":
        raise SystemExit(
            f"--drop-past-frames: the model has frames={frames}, temporal="
            f"{detector.bev.temporal!r}; it applies to fusion configs with past frames (t2, t8)"
        )
    past = [t for t, offset in enumerate(frames) if offset < 0]

    def hook(_module, args, kwargs):
        valid = kwargs.get("frame_valid")
        if valid is not None:
            valid = valid.clone()
            valid[:, past] = False
            kwargs["frame_valid"] = valid
        return args, kwargs

    detector.register_forward_pre_hook(hook, with_kwargs=True)
    print(f"--drop-past-frames: past slots {past} of frames {frames} marked missing")


def check_writable(out_dir: str) -> None:
    """Fail before inference when the results cannot be written (not after the whole loop)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write_test_"):
            pass
    except OSError as err:
        raise SystemExit(
            f"cannot write the results to {out_dir} ({err.strerror}); choose a writable --out "
            "or --work-dir"
        ) from err


def main() -> None:
    args = check_args(parse_args())
    cfg = load_config(args.config, args.cfg_options, data_root=args.data_root)
    work_dir = args.work_dir or osp.join(osp.dirname(osp.abspath(args.checkpoint)), "test")
    # the submission, metrics_summary.json, metrics_summary_flat.json and metrics_table.txt
    # go next to --out, else to WORK_DIR/eval
    out_dir = osp.dirname(osp.abspath(args.out)) if args.out else osp.join(work_dir, "eval")
    check_writable(out_dir)
    try:
        runner = build_runner(
            cfg,
            work_dir=work_dir,
            launcher=args.launcher,
            load_from=args.checkpoint,
            for_training=False,
            metric_overrides=dict(out_dir=out_dir, run_eval=args.eval),
        )
    except (FileNotFoundError, ValueError) as err:
        # checkpoint, dataroot and config problems: the message says what to do
        raise SystemExit(f"error: {err}") from None
    if args.drop_past_frames:
        drop_past_frames(runner.model)
    metrics = runner.test()
    if is_main_process():
        report(args, cfg, out_dir, metrics)
    finish_distributed()


def report(args: argparse.Namespace, cfg, out_dir: str, metrics: dict) -> None:
    """Move the submission to ``--out``, print where everything is, render pictures."""
    submission = osp.join(out_dir, "results_nusc.json")
    if args.out and osp.abspath(submission) != osp.abspath(args.out):
        shutil.move(submission, args.out)
        submission = args.out
    print(f"submission: {submission}")
    if args.eval:
        print(f"metrics:    {osp.join(out_dir, 'metrics_summary_flat.json')} (devkit summary: "
              f"{osp.join(out_dir, 'metrics_summary.json')})")  # fmt: skip
    print({k: round(v, 4) for k, v in metrics.items()})
    if args.show_dir:
        from bevformer.data.infos import resolve_path
        from bevformer.visualization import render_results

        ev = cfg.test_evaluator
        ann_file = resolve_path(ev.data_root, ev.ann_file)
        render_results(
            ann_file,
            ev.data_root,
            args.show_dir,
            results_file=submission,
            score_thr=args.score_thr,
            max_samples=args.max_samples,
            scenes=args.scene,
            samples=args.sample,
        )


if __name__ == "__main__":
    main()
